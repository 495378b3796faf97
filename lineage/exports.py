"""Exports of a walked subgraph: OpenLineage NDJSON, PROV-JSON (the `prov` package) and CSV.

Each export is a generator of bytes, for a StreamingHttpResponse. The subgraph itself is bounded
(lineage.graph's row budget); facets are fetched in one batch per export. NDJSON and CSV are
produced line by line; PROV-JSON is built as one `prov` document (the package has no streaming
writer) and then sent in chunks.
"""

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from urllib.parse import quote

from django.core.serializers.json import DjangoJSONEncoder

from core import csv_safe
from lineage import graph as graphs
from lineage import nodes as node_ids
from lineage import selectors
from lineage.choices import EdgeKind, FacetRole
from lineage.models import Dataset, DatasetVersion, Job, Run
from lineage.openlineage import EXPORT_PRODUCER as PRODUCER
from lineage.openlineage import SCHEMA_URL, as_exported

PROV_NAMESPACE = "urn:model-governance-registry:lineage:"
CHUNK = 64 * 1024
T_DSV, T_RUN, T_MODEL, T_DS, T_JOB = graphs.T_DSV, graphs.T_RUN, graphs.T_MODEL, graphs.T_DS, graphs.T_JOB
FORMATS = {
    "openlineage": ("application/x-ndjson", "ndjson"),
    "prov-json": ("application/json", "prov.json"),
    "csv": ("text/csv; charset=utf-8", "csv"),
}


def _json_line(value) -> bytes:
    return json.dumps(value, cls=DjangoJSONEncoder, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _time(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


class _Subgraph:
    """The walk plus what exports need about its nodes: facets, run details, who recorded what."""

    def __init__(self, result: graphs.Walk, as_of):
        result = result.without_isolated_groups()
        self.result = result
        self.as_of = as_of
        self.keys = {key: selectors.version_node_id(key, row) for key, row in result.nodes.items()}
        self.inputs = defaultdict(list)  # run key -> [source keys]
        self.outputs = defaultdict(list)  # run/job key -> [target keys]
        self.job_inputs = defaultdict(list)
        for s_t, s_id, d_t, d_id, kind in sorted(result.edges):
            src, dst = (s_t, s_id), (d_t, d_id)
            if src not in self.keys or dst not in self.keys:
                continue
            if d_t == T_RUN and kind == EdgeKind.INPUT:
                self.inputs[dst].append(src)
            elif s_t == T_RUN and kind == EdgeKind.OUTPUT:
                self.outputs[src].append(dst)
            elif d_t == T_JOB:
                self.job_inputs[dst].append(src)
            elif s_t == T_JOB:
                self.outputs[src].append(dst)
        ids = defaultdict(list)
        for t, pk in result.nodes:
            ids[t].append(pk)
        self.runs = {r.pk: r for r in Run.objects.select_related("job").filter(pk__in=ids[T_RUN])}
        versions = list(DatasetVersion.objects.select_related("dataset").filter(pk__in=ids[T_DSV]))
        self.versions = {v.pk: v for v in versions}
        subjects = (
            [(T_DSV, pk) for pk in ids[T_DSV]]
            + [(T_DS, v.dataset_id) for v in versions]
            + [(T_DS, pk) for pk in ids[T_DS]]
            + [(T_RUN, pk) for pk in ids[T_RUN]]
            + [(T_JOB, r.job_id) for r in self.runs.values()]
            + [(T_JOB, pk) for pk in ids[T_JOB]]
        )
        self.facets = selectors.facets_as_of(subjects, as_of, runs=self.runs)  # one query for every node's facets
        self.run_details = selectors.run_details(list(self.runs.values()), as_of, self.facets)
        self.version_details = selectors.dataset_version_details(versions, as_of, self.facets)
        from registry.models import ModelVersion

        self.models = {
            m.pk: m for m in ModelVersion.objects.select_related("model", "created_by").filter(pk__in=ids[T_MODEL])
        }
        self.jobs = {r.job_id: r.job for r in self.runs.values()}  # read with the runs already
        self.jobs |= {j.pk: j for j in Job.objects.filter(pk__in=[pk for pk in ids[T_JOB] if pk not in self.jobs])}
        self.datasets = {d.pk: d for d in Dataset.objects.filter(pk__in=ids[T_DS])}
        self.stated = selectors.statement_times(jobs=list(self.jobs), datasets=ids[T_DS], as_of=as_of)

    def stated_at(self, key):
        """The eventTime of a run-less event about a job or dataset: when its latest JobEvent or DatasetEvent was
        sent, else when the registry first heard of it (never the time of the export: two exports are the same)."""
        row = self.jobs[key[1]] if key[0] == T_JOB else self.datasets[key[1]]
        return self.stated.get(key, row.recorded_at)

    def facet_set(self, subject, role=FacetRole.FACETS, run_id=None) -> dict:
        """Latest facets of a subject in a role. For a run's event (run_id): those the run sent, over those
        sent without a run, never another run's (a run's event then says what it said, and a later run's
        code location does not rewrite it). Without run_id: the latest any run sent."""
        found = {}
        exact = {}
        for (r, name, rid), value in self.facets.get(subject, {}).items():
            if r != role:
                continue
            if run_id is None or rid is None:
                found[name] = value
            if run_id is not None and rid == run_id:
                exact[name] = value
        return _live({**found, **exact})

    def facets_sent_with(self, subject, run_id) -> dict:
        """A subject's latest facets sent with run_id, or (None) without a run. A job's facets sent without a run
        are anyone's JobEvent: they describe the job, not what one of its runs executed."""
        facets = self.facets.get(subject, {})
        return _live({name: v for (r, name, rid), v in facets.items() if r == FacetRole.FACETS and rid == run_id})


def _live(facets: dict) -> dict:
    """Facets without those a later event deleted (`{"_deleted": true}`)."""
    return {k: v for k, v in facets.items() if not (isinstance(v, dict) and v.get("_deleted") is True)}


# --- OpenLineage -------------------------------------------------------------------------------


def _based(facets: dict, kind: str) -> dict:
    """Facets as the 2-0-2 schema requires them (lineage.openlineage.as_exported)."""
    return {name: as_exported(facet, kind) if isinstance(facet, dict) else facet for name, facet in facets.items()}


def _ol_dataset(g: _Subgraph, key, role: FacetRole | None, run_id=None) -> dict:
    t, pk = key
    if t == T_MODEL:
        mv = g.models[pk]
        return {
            "namespace": node_ids.MODEL_DATASET_NAMESPACE,
            "name": f"{mv.model.namespace}/{mv.model.name}:{mv.number}",
            "facets": {
                "version": {
                    "_producer": PRODUCER,
                    "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json"
                    "#/$defs/DatasetVersionDatasetFacet",
                    "datasetVersion": mv.digest,
                }
            },
        }
    row = g.result.nodes[key]
    facets = g.facet_set(key, FacetRole.FACETS, run_id)
    if t == T_DSV:
        facets = {**g.facet_set((T_DS, g.versions[pk].dataset_id)), **facets}
        if row["version"] and "version" not in facets:
            facets["version"] = {
                "_producer": PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json"
                "#/$defs/DatasetVersionDatasetFacet",
                "datasetVersion": row["version"],
            }
    body = {"namespace": row["ns"], "name": row["name"], "facets": _based(facets, "DatasetFacet")}
    if role is not None and t == T_DSV:
        inputs = role == FacetRole.INPUT_FACETS
        body["inputFacets" if inputs else "outputFacets"] = _based(
            g.facet_set(key, role, run_id), "InputDatasetFacet" if inputs else "OutputDatasetFacet"
        )
    return body


def openlineage_lines(result: graphs.Walk, *, as_of=None) -> Iterator[bytes]:
    """One OpenLineage event per line: a RunEvent per run, a JobEvent per declared job, a
    DatasetEvent for every dataset version or model version no exported run reads or writes."""
    g = _Subgraph(result, as_of)
    covered = set()
    for key in sorted(k for k in g.keys if k[0] == T_RUN):
        run = g.runs[key[1]]
        details = g.run_details[run.pk]
        events = details["events"]
        covered.update(g.inputs[key])
        covered.update(g.outputs[key])
        yield _json_line(
            {
                "eventType": details["state"] or "OTHER",
                "eventTime": _time(events[-1]["eventTime"]) if events else _time(run.recorded_at),
                "producer": PRODUCER,
                "schemaURL": SCHEMA_URL + "RunEvent",
                "run": {
                    "runId": str(run.run_uuid),
                    "facets": _based(g.facet_set(key, FacetRole.FACETS, run.pk), "RunFacet"),
                },
                "job": {
                    "namespace": run.job.namespace,
                    "name": run.job.name,
                    "facets": _based(g.facets_sent_with((T_JOB, run.job_id), run.pk), "JobFacet"),
                },
                "inputs": [_ol_dataset(g, k, FacetRole.INPUT_FACETS, run.pk) for k in g.inputs[key]],
                "outputs": [_ol_dataset(g, k, FacetRole.OUTPUT_FACETS, run.pk) for k in g.outputs[key]],
            }
        )
    # A job's facets sent without a run (JobEvents) go in a JobEvent of their own, not into its runs' events.
    described = {k for k in g.keys if k[0] == T_JOB}
    jobs_of_runs = {g.runs[k[1]].job for k in g.keys if k[0] == T_RUN}
    for job in sorted(jobs_of_runs, key=lambda j: j.pk):
        key = (T_JOB, job.pk)
        if key in described or not (facets := g.facets_sent_with(key, None)):
            continue
        yield _json_line(
            {
                "eventTime": _time(g.stated_at(key)),
                "producer": PRODUCER,
                "schemaURL": SCHEMA_URL + "JobEvent",
                "job": {"namespace": job.namespace, "name": job.name, "facets": _based(facets, "JobFacet")},
                "inputs": [],
                "outputs": [],
            }
        )
    for key in sorted(described):
        row = g.result.nodes[key]
        covered.update(g.job_inputs[key])
        covered.update(g.outputs[key])
        yield _json_line(
            {
                "eventTime": _time(g.stated_at(key)),
                "producer": PRODUCER,
                "schemaURL": SCHEMA_URL + "JobEvent",
                # the job's own facets, never a run's (its code location is what that run executed)
                "job": {
                    "namespace": row["ns"],
                    "name": row["name"],
                    "facets": _based(g.facets_sent_with(key, None), "JobFacet"),
                },
                "inputs": [_ol_dataset(g, k, None) for k in g.job_inputs[key]],
                "outputs": [_ol_dataset(g, k, None) for k in g.outputs[key]],
            }
        )
    for key in sorted(k for k in g.keys if k[0] in (T_DSV, T_DS, T_MODEL) and k not in covered):
        if key[0] == T_MODEL:
            when = g.models[key[1]].created_at
        elif key[0] == T_DSV:
            when = g.versions[key[1]].created_at
        else:
            when = g.stated_at(key)
        yield _json_line(
            {
                "eventTime": _time(when),
                "producer": PRODUCER,
                "schemaURL": SCHEMA_URL + "DatasetEvent",
                "dataset": _ol_dataset(g, key, None),
            }
        )


# --- W3C PROV ------------------------------------------------------------------------------------


def prov_document(result: graphs.Walk, *, as_of=None):
    """A prov.model.ProvDocument: entities (dataset versions, model versions, jobs as plans),
    activities (runs, releases), agents (users, the software that reported each run) and the relations
    used (a release uses the model version it deployed), wasGeneratedBy, wasAssociatedWith, wasAttributedTo."""
    from prov.constants import PROV_TYPE
    from prov.model import PROV, ProvDocument

    g = _Subgraph(result, as_of)
    doc = ProvDocument()
    lin = doc.add_namespace("lin", PROV_NAMESPACE)

    def qn(node_id: str):
        return lin[quote(node_id, safe="")]

    records = {}
    agents = {}

    def agent(kind: str, name: str, prov_type):
        agent_id = f"{kind}:{name}"
        if agent_id not in agents:
            agents[agent_id] = doc.agent(qn(agent_id), {PROV_TYPE: prov_type, lin["name"]: name})
        return agents[agent_id]

    for key, node_id in sorted(g.keys.items(), key=lambda kv: kv[1]):
        t, pk = key
        attrs = {lin["nodeId"]: node_id}
        if t == T_DSV:
            d = g.version_details[pk]
            attrs |= {PROV_TYPE: lin["DatasetVersion"], lin["namespace"]: d["namespace"], lin["name"]: d["name"]}
            attrs |= {lin[k]: d[k] for k in ("version", "digest", "uri") if d[k]}
            if d["rowCount"] is not None:
                attrs[lin["rowCount"]] = d["rowCount"]
            records[key] = doc.entity(qn(node_id), attrs)
        elif t == T_DS:
            row = g.result.nodes[key]
            attrs |= {PROV_TYPE: lin["Dataset"], lin["namespace"]: row["ns"], lin["name"]: row["name"]}
            records[key] = doc.entity(qn(node_id), attrs)
        elif t == T_MODEL:
            mv = g.models[pk]
            attrs |= {
                PROV_TYPE: lin["ModelVersion"],
                lin["model"]: f"{mv.model.namespace}/{mv.model.name}",
                lin["number"]: mv.number,
                lin["digest"]: mv.digest,
                lin["status"]: g.result.nodes[key]["state"],  # as of: replayed by the walk
            }
            records[key] = doc.entity(qn(node_id), attrs)
            if mv.created_by is not None:
                doc.wasAttributedTo(records[key], agent("user", mv.created_by.get_username(), PROV["Person"]))
        elif t == T_RUN:
            d = g.run_details[pk]
            attrs |= {PROV_TYPE: lin["Run"], lin["job"]: d["job"], lin["kind"]: d["kind"]}
            if d["state"]:
                attrs[lin["state"]] = d["state"]
            for k in ("commit", "repoUrl", "path", "url", "branch"):
                if d["code"] and d["code"].get(k):
                    attrs[lin[f"code_{k}"]] = d["code"][k]
            records[key] = doc.activity(qn(node_id), d["startedAt"], d["endedAt"], attrs)
        elif t == T_JOB:
            row = g.result.nodes[key]
            attrs |= {PROV_TYPE: PROV["Plan"], lin["namespace"]: row["ns"], lin["name"]: row["name"]}
            records[key] = doc.entity(qn(node_id), attrs)
        elif "described" in g.result.nodes[key]:  # another app's node: governance's release is an activity
            described = g.result.nodes[key]["described"]
            attrs[PROV_TYPE] = lin[described["type"].capitalize()]
            attrs |= {lin[k]: v for k, v in described.items() if k not in ("id", "type") and v is not None}
            records[key] = doc.activity(qn(node_id), other_attributes=attrs)

    plans = {}
    for key in [k for k in g.keys if k[0] == T_RUN]:
        run = g.runs[key[1]]
        d = g.run_details[run.pk]
        job_id = node_ids.job_id(run.job.namespace, run.job.name)
        if job_id not in plans:
            plans[job_id] = records.get((T_JOB, run.job_id)) or doc.entity(
                qn(job_id),
                {
                    PROV_TYPE: PROV["Plan"],
                    lin["nodeId"]: job_id,
                    lin["namespace"]: run.job.namespace,
                    lin["name"]: run.job.name,
                },
            )
        producers = sorted({e["producer"] for e in d["events"]}) or [None]
        for producer in producers:
            software = agent("software", producer, PROV["SoftwareAgent"]) if producer else None
            doc.wasAssociatedWith(records[key], software, plans[job_id])
        for user in sorted({e["recordedBy"] for e in d["events"] if e["recordedBy"]}):
            doc.wasAssociatedWith(records[key], agent("user", user, PROV["Person"]))

    for s_t, s_id, d_t, d_id, kind in sorted(result.edges):
        src, dst = records.get((s_t, s_id)), records.get((d_t, d_id))
        if src is None or dst is None:
            continue
        if d_t == T_RUN and kind == EdgeKind.INPUT:
            doc.used(dst, src)
        elif s_t == T_RUN and kind == EdgeKind.OUTPUT:
            doc.wasGeneratedBy(dst, src)
        elif kind == EdgeKind.DEPLOYED:  # the release serves (uses) the model version
            doc.used(dst, src, other_attributes={PROV_TYPE: lin["deployed"]})
        elif d_t == T_JOB or s_t == T_JOB:
            doc.wasDerivedFrom(dst, src, other_attributes={PROV_TYPE: lin[f"declared_{EdgeKind(kind).label}"]})
    return doc


def prov_json_chunks(result: graphs.Walk, *, as_of=None) -> Iterator[bytes]:
    text = prov_document(result, as_of=as_of).serialize(format="json").encode()
    for i in range(0, len(text), CHUNK):
        yield text[i : i + CHUNK]


# --- CSV -----------------------------------------------------------------------------------------

CSV_COLUMNS = [
    "record",
    "id",
    "type",
    "namespace",
    "name",
    "version",
    "digest",
    "state",
    "depth",
    "source",
    "target",
    "kind",
]


def csv_lines(result: graphs.Walk, *, as_of=None) -> Iterator[bytes]:
    """One row per node, then one per edge (record = node | edge), at dataset-version granularity."""
    body = selectors.present(result, granularity="version")
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> bytes:
        data = buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        return data

    writer.writerow(CSV_COLUMNS)
    yield flush()
    for node in body["nodes"]:
        version = node.get("version") if node["type"] != "model" else node.get("number")
        # Names, versions and ids come from clients (OpenLineage events): no cell may run as a formula.
        writer.writerow(
            csv_safe.row(
                [
                    "node",
                    node["id"],
                    node["type"],
                    node.get("namespace", ""),
                    node.get("name", ""),
                    "" if version is None else version,
                    node.get("digest") or "",
                    node.get("state") or node.get("status") or "",
                    node["depth"],
                    "",
                    "",
                    "",
                ]
            )
        )
        yield flush()
    for edge in body["edges"]:
        writer.writerow(
            csv_safe.row(["edge", "", "", "", "", "", "", "", "", edge["source"], edge["target"], edge["kind"]])
        )
        yield flush()
    if body["truncated"]:
        writer.writerow(["truncated", "", "", "", "", "", "", "", "", "", "", ""])
        yield flush()


def export(result: graphs.Walk, fmt: str, *, as_of=None) -> Iterator[bytes]:
    return {"openlineage": openlineage_lines, "prov-json": prov_json_chunks, "csv": csv_lines}[fmt](result, as_of=as_of)
