"""Reads for lineage, always for a given user.

Visibility (docs/lineage.md): datasets, dataset versions, jobs and runs are not governed objects:
any authenticated user whose token has the `read` scope sees them. Model version nodes follow the
model's view permission (accounts.access): a model version the user may not view is never
returned, not even as an edge end, and walks do not pass through it. Starting at a hidden model
version is a 404, as everywhere else.
"""

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber

from lineage import graph as graphs
from lineage import nodes as node_ids
from lineage.choices import TERMINAL_STATES, FacetRole, NodeType, RunState
from lineage.models import DatasetVersion, Facet, LineageEvent, Run

T_DSV, T_RUN, T_MODEL, T_DS, T_JOB = graphs.T_DSV, graphs.T_RUN, graphs.T_MODEL, graphs.T_DS, graphs.T_JOB
DIRECTIONS = ("upstream", "downstream", "both")
GRANULARITIES = ("dataset", "version")


@dataclass(frozen=True)
class GraphQuery:
    node_id: str
    direction: str = "both"
    depth: int = graphs.DEFAULT_DEPTH
    as_of: datetime | None = None
    granularity: str = "dataset"


def walk(*, user, query: GraphQuery) -> graphs.Walk:
    start = node_ids.resolve(query.node_id, user, query.as_of)
    return graphs.walk(user=user, start=start, direction=query.direction, depth=query.depth, as_of=query.as_of)


def version_node_id(key: tuple[int, int], row: dict) -> str:
    """The id of a walked node at version granularity."""
    t = key[0]
    if t == T_DSV:
        return node_ids.dataset_id(row["ns"], row["name"], row["version"])
    if t == T_DS:
        return node_ids.dataset_id(row["ns"], row["name"])
    if t == T_RUN:
        return node_ids.run_id(_uuid_text(row["ref"]))
    if t == T_JOB:
        return node_ids.job_id(row["ns"], row["name"])
    if t == T_MODEL:
        return node_ids.model_id(row["ns"], row["name"], row["number"])
    if "described" in row:  # another app's node (governance: releases), as that app names it
        return row["described"]["id"]
    return f"{NodeType(t).label if t in NodeType.values else t}:{key[1]}"


def group_node_id(key: tuple[int, int], row: dict) -> str:
    """The id at dataset granularity: a dataset version shows as its dataset, a run as its job."""
    t = key[0]
    if t in (T_DSV, T_DS):
        return node_ids.dataset_id(row["ns"], row["name"])
    if t in (T_RUN, T_JOB):
        return node_ids.job_id(row["ns"], row["name"])
    return version_node_id(key, row)


def _uuid_text(value: str) -> str:
    return str(uuid.UUID(value))  # PostgreSQL gives the hyphenated form, SQLite 32 hex digits


def describe_extension_nodes(result: graphs.Walk, user, as_of) -> None:
    """Ask other apps (governance) to describe their nodes; drop the ones they don't describe."""
    by_type = defaultdict(list)
    for t, pk in result.nodes:
        if t not in (T_DSV, T_RUN, T_MODEL, T_DS, T_JOB):
            by_type[t].append(pk)
    for t, ids in by_type.items():
        handler = node_ids.handler_for(t)
        described = handler.describe(ids, user, as_of) if handler and handler.describe else {}
        for pk in ids:
            if pk in described:
                result.nodes[(t, pk)]["described"] = described[pk]
            else:
                del result.nodes[(t, pk)]


def _version_node(key, row) -> dict:
    t = key[0]
    node = {"id": version_node_id(key, row), "depth": row["depth"]}
    if t == T_DSV:
        node |= {
            "type": "datasetVersion",
            "namespace": row["ns"],
            "name": row["name"],
            "version": row["version"],
            "digest": row["digest"] or None,
            "dataset": node_ids.dataset_id(row["ns"], row["name"]),
        }
    elif t == T_RUN:
        node |= {
            "type": "run",
            "runId": _uuid_text(row["ref"]),
            "state": row["state"],
            "job": node_ids.job_id(row["ns"], row["name"]),
        }
    elif t in (T_DS, T_JOB):
        node |= {"type": "dataset" if t == T_DS else "job", "namespace": row["ns"], "name": row["name"]}
    elif t == T_MODEL:
        node |= _model_fields(row)
    else:
        node = {**row["described"], "depth": row["depth"]}
    return node


def _model_fields(row) -> dict:
    return {
        "type": "model",
        "namespace": row["ns"],
        "name": row["name"],
        "number": row["number"],
        "digest": row["digest"],
        "status": row["state"],
    }


def present(result: graphs.Walk, *, granularity: str = "dataset") -> dict:
    """The contract shape: {"nodes": [{"id", "type", ...}], "edges": [{"source", "target", "kind"}], "truncated"}."""
    from lineage.choices import EdgeKind

    if granularity == "version":
        result = result.without_isolated_groups()
    ids = {
        key: (version_node_id if granularity == "version" else group_node_id)(key, row)
        for key, row in result.nodes.items()
        if "described" in row or key[0] in (T_DSV, T_RUN, T_MODEL, T_DS, T_JOB)
    }
    nodes: dict[str, dict] = {}
    for key, row in result.nodes.items():
        if key not in ids:
            continue
        if granularity == "version":
            nodes[ids[key]] = _version_node(key, row)
            continue
        node_id, t = ids[key], key[0]
        node = nodes.get(node_id)
        if node is None:
            if t in (T_DSV, T_DS):
                node = {"id": node_id, "type": "dataset", "namespace": row["ns"], "name": row["name"], "versions": []}
            elif t in (T_RUN, T_JOB):
                node = {"id": node_id, "type": "job", "namespace": row["ns"], "name": row["name"], "runs": []}
            else:
                node = _version_node(key, row)
            node["depth"] = row["depth"]
            nodes[node_id] = node
        node["depth"] = min(node["depth"], row["depth"])
        if t == T_DSV:
            node["versions"].append({"version": row["version"], "digest": row["digest"] or None})
        elif t == T_RUN:
            node["runs"].append({"runId": _uuid_text(row["ref"]), "state": row["state"]})
    for node in nodes.values():
        if "versions" in node:
            node["versions"].sort(key=lambda v: v["version"])
        if "runs" in node:
            node["runs"].sort(key=lambda r: r["runId"])
    kinds = {k.value: k.label for k in EdgeKind}
    edges = set()
    for s_t, s_id, d_t, d_id, kind in result.edges:
        source, target = ids.get((s_t, s_id)), ids.get((d_t, d_id))
        if source is None or target is None or source == target:
            continue
        edges.add((source, target, kinds.get(kind, str(kind))))
    return {
        "nodes": sorted(nodes.values(), key=lambda n: (n["depth"], n["id"])),
        "edges": [{"source": s, "target": t, "kind": k} for s, t, k in sorted(edges)],
        "truncated": result.truncated,
    }


def graph(*, user, query: GraphQuery) -> dict:
    result = walk(user=user, query=query)
    describe_extension_nodes(result, user, query.as_of)
    body = present(result, granularity=query.granularity)
    return {"nodeId": query.node_id, "direction": query.direction, "depth": query.depth, **body}


# --- attributes as of a time (facets and run events) ---------------------------------------------


def of_subjects(subjects) -> Q:
    """The facets (or any rows keyed so) of these (subject type, id) subjects: one condition per type."""
    by_type = defaultdict(list)
    for t, pk in subjects:
        by_type[t].append(pk)
    query = Q()
    for t, ids in by_type.items():
        query |= Q(subject_type=t, subject_id__in=ids)
    return query


def facets_as_of(
    subjects: list[tuple[int, int]], as_of: datetime | None, *, runs, events: set[int] | None = None
) -> dict[tuple[int, int], dict]:
    """{subject: {(role, name, run_id): value}}: the latest value of each facet recorded by as_of, in the order
    last sent (readers take the last entry of a name as the latest). `events`, when given, gains the lineage events
    that recorded the values read (a trail lists their audit events).

    `runs`: the runs whose own facets the reader asks for (_latest, facet_set with their run_id). What other runs
    sent is read only as the latest of a name (_latest's any_run), so only that row of theirs is fetched: a
    dataset read by thousands of runs costs a row per facet name, not one per run and name."""
    if not subjects:
        return {}
    qs = Facet.objects.filter(of_subjects(subjects))
    if as_of is not None:
        qs = qs.filter(recorded_at__lte=as_of)
    name_key = [F("subject_type"), F("subject_id"), F("role"), F("name")]
    latest_first = [F("recorded_at").desc(), F("id").desc()]
    qs = qs.annotate(
        key_rank=Window(RowNumber(), partition_by=[*name_key, F("run_id")], order_by=latest_first),
        name_rank=Window(RowNumber(), partition_by=name_key, order_by=latest_first),
    ).filter(Q(key_rank=1) & (Q(name_rank=1) | Q(run__isnull=True) | Q(run__in=list(runs))))
    result: dict[tuple[int, int], dict] = defaultdict(dict)
    fields = ("subject_type", "subject_id", "role", "name", "run_id", "value", "event_id")
    for row in qs.order_by("recorded_at", "id").values(*fields):
        result[(row["subject_type"], row["subject_id"])][(row["role"], row["name"], row["run_id"])] = row["value"]
        if events is not None:
            events.add(row["event_id"])
    return result


def statement_times(*, jobs: list[int], datasets: list[int], as_of: datetime | None) -> dict[tuple[int, int], datetime]:
    """{(T_JOB or T_DS, id): the eventTime of the latest event without a run about it (a JobEvent, a DatasetEvent)
    recorded by as_of}: when what an export's run-less events restate was stated, the same at every export."""
    if not jobs and not datasets:
        return {}
    events = LineageEvent.objects.filter(Q(job__in=jobs) | Q(dataset__in=datasets), run__isnull=True)
    if as_of is not None:
        events = events.filter(recorded_at__lte=as_of)
    times = {}
    for job_id, dataset_id, event_time in events.order_by("recorded_at", "id").values_list(
        "job_id", "dataset_id", "event_time"
    ):
        times[(T_JOB, job_id) if job_id else (T_DS, dataset_id)] = event_time
    return times


def _latest(facets: dict, name: str, role: int = FacetRole.FACETS, run_id=None, any_run: bool = True):
    """The facet value sent with run_id (None: one sent without a run, a JobEvent or DatasetEvent), else (any_run,
    for shared subjects such as datasets) the latest any run sent. _deleted counts as absent.

    A run's own attributes (its code, job type, environment) pass its run_id and any_run=False: they are what
    that run sent and nothing else. Not a facet sent without a run: any lineage writer may send a JobEvent for
    any job, and it must not set the commit or kind of a run that produced a model version (the run-ownership
    rule guards only events that carry the run). Not another run's either."""
    exact = facets.get((role, name, run_id))
    if exact is None and any_run:
        candidates = [v for (r, n, _), v in facets.items() if r == role and n == name]
        exact = candidates[-1] if candidates else None
    if isinstance(exact, dict) and exact.get("_deleted") is True:
        return None
    return exact


def _find(facets: dict, name: str, schema: str, role: int = FacetRole.FACETS):
    for (r, n, _), value in reversed(list(facets.items())):
        if r == role and (n == name or f"/{schema}.json" in str(value.get("_schemaURL", ""))):
            return value
    return None


def run_details(runs: list[Run], as_of: datetime | None, facets: dict | None = None) -> dict[int, dict]:
    """State, times, kind, code, parameters and environment of each run, as of a time.

    `facets` (from facets_as_of, covering the runs and their jobs) saves fetching them again."""
    if not runs:
        return {}
    events = LineageEvent.objects.filter(run__in=runs)
    if as_of is not None:
        events = events.filter(recorded_at__lte=as_of)
    by_run = defaultdict(list)
    for ev in events.order_by("event_time", "id").values(
        "id", "run_id", "event_type", "event_time", "producer", "recorded_at", "recorded_by__username"
    ):
        by_run[ev["run_id"]].append(ev)
    if facets is None:
        facets = facets_as_of(
            [(T_RUN, r.pk) for r in runs] + [(T_JOB, r.job_id) for r in runs], as_of, runs=[r.pk for r in runs]
        )
    states = graphs.run_states([run.pk for run in runs], as_of)  # the walk's rule, so the graph says the same
    result = {}
    for run in runs:
        evs = by_run.get(run.pk, [])
        state = states.get(run.pk)
        started = next((e["event_time"] for e in evs if e["event_type"] == RunState.START), None)
        # Ended while in a terminal state, at its latest terminal event (the one the state is); a run started
        # again after one has not ended.
        ended = (
            next((e["event_time"] for e in reversed(evs) if e["event_type"] in TERMINAL_STATES), None)
            if state in TERMINAL_STATES
            else None
        )
        run_facets = facets.get((T_RUN, run.pk), {})
        job_facets = facets.get((T_JOB, run.job_id), {})
        code = _latest(job_facets, "sourceCodeLocation", run_id=run.pk, any_run=False) or {}
        job_type = _latest(job_facets, "jobType", run_id=run.pk, any_run=False) or {}
        params_facet = _find(run_facets, "executionParameters", "ExecutionParametersRunFacet") or {}
        env = _latest(run_facets, "environmentVariables", run_id=run.pk, any_run=False) or {}
        engine = _latest(run_facets, "processing_engine", run_id=run.pk, any_run=False) or {}
        result[run.pk] = {
            "runId": str(run.run_uuid),
            "job": node_ids.job_id(run.job.namespace, run.job.name),
            "kind": _run_kind(job_type.get("jobType")),
            "state": state,
            "startedAt": started,
            "endedAt": ended,
            "code": {
                "type": code.get("type"),
                "url": code.get("url"),
                "repoUrl": code.get("repoUrl"),
                "path": code.get("path"),
                "commit": code.get("version"),
                "branch": code.get("branch"),
                "tag": code.get("tag"),
            }
            if code
            else None,
            "params": {p["key"]: p.get("value") for p in params_facet.get("parameters") or []},
            "environment": {
                "processingEngine": {k: engine.get(k) for k in ("name", "version", "openlineageAdapterVersion")}
                if engine
                else None,
                "variables": {v["name"]: v.get("value") for v in env.get("environmentVariables") or []},
            },
            "events": [
                {
                    "eventType": e["event_type"],
                    "eventTime": e["event_time"],
                    "producer": e["producer"],
                    "recordedAt": e["recorded_at"],
                    "recordedBy": e["recorded_by__username"],
                    "event": e["id"],
                }
                for e in evs
            ],
        }
    return result


def _run_kind(job_type: str | None) -> str:
    text = (job_type or "").lower()
    if "train" in text:
        return "training"
    if "eval" in text:
        return "evaluation"
    return "other"


def dataset_version_details(
    versions: list[DatasetVersion], as_of: datetime | None, facets: dict | None = None, events: set | None = None
) -> dict[int, dict]:
    """URI, schema fields and row count of each dataset version, as of a time (`events`: see facets_as_of)."""
    if facets is None:
        subjects = [(T_DSV, v.pk) for v in versions] + [(T_DS, v.dataset_id) for v in versions]
        facets = facets_as_of(subjects, as_of, runs=(), events=events)  # only the latest any run sent is read
    result = {}
    for v in versions:
        own = facets.get((T_DSV, v.pk), {})
        general = facets.get((T_DS, v.dataset_id), {})

        def pick(name, role=FacetRole.FACETS, own=own, general=general):
            return _latest(own, name, role) or _latest(general, name, role)

        source = pick("dataSource") or {}
        schema = pick("schema") or {}
        stats = pick("outputStatistics", FacetRole.OUTPUT_FACETS) or pick("dataQualityMetrics", FacetRole.INPUT_FACETS)
        result[v.pk] = {
            "id": node_ids.dataset_id(v.dataset.namespace, v.dataset.name, v.version),
            "namespace": v.dataset.namespace,
            "name": v.dataset.name,
            "version": v.version,
            "digest": v.digest or None,
            "uri": source.get("uri"),
            "dataSource": source.get("name"),
            "schema": schema.get("fields") or [],
            "rowCount": (stats or {}).get("rowCount"),
            "createdAt": v.created_at,
            "recordedAt": v.recorded_at,
        }
    return result


# --- what governance's policy checks (require_lineage) ---------------------------------------------

SUMMARY_DEPTH = 50


def version_summary(*, version, as_of: datetime | None = None) -> dict:
    """The lineage facts a policy checks about a model version, for every reader alike.

    A system read, not a user's: it walks the whole upstream graph (depth 50) without the model
    visibility filter, because whether a version has lineage must not depend on who asks.

    {"datasets_with_digest": n, "datasets": [dataset version ids with a digest, upstream],
     "producing_runs": [run ids], "code_commit": str | None, "commit_from": "run:<uuid>" | "source" | None}.
    The commit is the producing run's (its job's sourceCodeLocation as that run sent it); without
    one, the version's registered `source.commit`.
    """
    return version_summaries([version], as_of=as_of)[version.pk]


def version_summaries(versions: list, *, as_of: datetime | None = None) -> dict[int, dict]:
    """version id -> version_summary() for many versions (the review queue's page) in one graph walk and at most
    three more queries (the producing runs, their events and facets).

    The walk starts at every version at once (depth 50 each, the budget of one walk per version); each version's
    share is then its own depth-50 reach over the returned edges, which hold every edge between reached nodes, so
    it is what a walk from that version alone returns."""
    if not versions:
        return {}
    by_pk = {v.pk: v for v in versions}
    params = {f"v{i}": pk for i, pk in enumerate(by_pk)}
    placeholders = ", ".join(f"%({key})s" for key in params)
    start = node_ids.Start(
        "",  # several start nodes: the walk reads only their SQL
        "model",
        versions[0].pk,
        f"SELECT {T_MODEL} AS t, mv.id AS id FROM registry_modelversion mv WHERE mv.id IN ({placeholders})",  # noqa: S608
        params,
    )
    result = graphs.walk(
        user=None,
        start=start,
        direction="upstream",
        depth=SUMMARY_DEPTH,
        as_of=as_of,
        budget=graphs.DEFAULT_BUDGET * len(by_pk),
        seen=graphs.Visibility(),
    )
    upstream = defaultdict(set)
    for s_t, s_id, d_t, d_id, _ in result.edges:
        upstream[(d_t, d_id)].add((s_t, s_id))
    producing = {pk: {i for t, i in upstream[(T_MODEL, pk)] if t == T_RUN} for pk in by_pk}
    runs = list(
        Run.objects.select_related("job").filter(pk__in=set().union(*producing.values())).order_by("recorded_at", "id")
    )
    details = run_details(runs, as_of)
    summaries = {}
    for pk, version in by_pk.items():
        reached, frontier = {(T_MODEL, pk)}, {(T_MODEL, pk)}
        for _ in range(SUMMARY_DEPTH):
            frontier = {n for node in frontier for n in upstream[node]} - reached
            reached |= frontier
        nodes = result.nodes
        datasets = sorted(
            version_node_id(key, nodes[key]) for key in reached if key[0] == T_DSV and nodes[key]["digest"]
        )
        own = [run for run in runs if run.pk in producing[pk]]
        commit, commit_from = None, None
        for run in own:  # the latest producing run with a commit wins
            code = details[run.pk]["code"] or {}
            if code.get("commit"):
                commit, commit_from = code["commit"], node_ids.run_id(run.run_uuid)
        if commit is None and (version.source or {}).get("commit"):
            commit, commit_from = version.source["commit"], "source"
        summaries[pk] = {
            "datasets_with_digest": len(datasets),
            "datasets": datasets,
            "producing_runs": [node_ids.run_id(r.run_uuid) for r in own],
            "code_commit": commit,
            "commit_from": commit_from,
        }
    return summaries
