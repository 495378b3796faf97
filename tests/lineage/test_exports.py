"""GET /api/v1/lineage/export: OpenLineage NDJSON, PROV-JSON (parsed back with `prov`) and CSV."""

import csv
import io
import json
import uuid
from urllib.parse import unquote

import pytest
from prov.model import (
    ProvActivity,
    ProvAgent,
    ProvAssociation,
    ProvAttribution,
    ProvDocument,
    ProvEntity,
    ProvGeneration,
    ProvUsage,
)

from lineage import openlineage
from lineage.models import Dataset, DatasetVersion, Edge, Job, Run
from tests.lineage.conftest import PRODUCER, RAW, ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

EXPORT = "/api/v1/lineage/export"


def export(client, node_id, fmt, **params):
    response = client.get(EXPORT, {"nodeId": node_id, "format": fmt, **params})
    assert response.status_code == 200, response.content
    assert response.streaming
    return response, b"".join(response.streaming_content).decode()


def local(qualified_name) -> str:
    return unquote(qualified_name.localpart)


def test_prov_json_parses_back_with_prov(personas, scenario):
    runs = scenario["runs"]
    response, text = export(personas["owner"].client(), "model:acme/churn:1", "prov-json", direction="upstream")
    assert response["Content-Type"] == "application/json"
    doc = ProvDocument.deserialize(content=text, format="json")

    entities = {local(r.identifier): r for r in doc.get_records(ProvEntity)}
    features = f"dataset:s3://lake:features#run:{runs['B']}"
    raw = f"dataset:s3://lake:raw/events#{RAW}"
    assert set(entities) == {
        "model:acme/churn:1",
        "model:acme/base:1",
        features,
        raw,
        "job:pipelines:train",
        "job:pipelines:featurize",
        "job:etl:ingest",
    }

    def attr(record, name):
        values = [v for k, v in record.attributes if k.localpart == name]
        return values[0] if values else None

    assert attr(entities[raw], "digest") == RAW
    assert attr(entities[raw], "uri") == "s3://lake/raw/events"
    assert attr(entities["model:acme/churn:1"], "digest") == scenario["churn"].digest
    assert attr(entities["model:acme/churn:1"], "type").localpart == "ModelVersion"
    assert attr(entities[features], "rowCount") == 5000
    assert attr(entities["job:pipelines:train"], "type").localpart == "Plan"

    activities = {local(r.identifier): r for r in doc.get_records(ProvActivity)}
    assert set(activities) == {f"run:{runs[k]}" for k in "ABC"}
    train = activities[f"run:{runs['C']}"]
    assert train.get_startTime().isoformat() == "2026-01-03T00:00:00+00:00"
    assert train.get_endTime().isoformat() == "2026-01-03T02:00:00+00:00"
    assert attr(train, "code_commit") == "def456"
    assert attr(train, "kind") == "training"

    def pairs(cls, first, second):
        return {
            (local(dict(r.formal_attributes)[first]), local(dict(r.formal_attributes)[second]))
            for r in doc.get_records(cls)
        }

    from prov.constants import PROV_ATTR_ACTIVITY, PROV_ATTR_AGENT, PROV_ATTR_ENTITY, PROV_ATTR_PLAN

    assert pairs(ProvUsage, PROV_ATTR_ACTIVITY, PROV_ATTR_ENTITY) == {
        (f"run:{runs['C']}", features),
        (f"run:{runs['C']}", "model:acme/base:1"),
        (f"run:{runs['B']}", raw),
    }
    assert pairs(ProvGeneration, PROV_ATTR_ENTITY, PROV_ATTR_ACTIVITY) == {
        ("model:acme/churn:1", f"run:{runs['C']}"),
        (features, f"run:{runs['B']}"),
        (raw, f"run:{runs['A']}"),
    }
    agents = {local(r.identifier) for r in doc.get_records(ProvAgent)}
    assert agents == {"user:owner", "user:ci_bot", f"software:{PRODUCER}"}
    associations = {
        (
            local(dict(r.formal_attributes)[PROV_ATTR_ACTIVITY]),
            local(dict(r.formal_attributes)[PROV_ATTR_AGENT]),
            local(dict(r.formal_attributes)[PROV_ATTR_PLAN]) if dict(r.formal_attributes)[PROV_ATTR_PLAN] else None,
        )
        for r in doc.get_records(ProvAssociation)
    }
    assert (f"run:{runs['C']}", f"software:{PRODUCER}", "job:pipelines:train") in associations
    assert (f"run:{runs['C']}", "user:owner", None) in associations
    assert (f"run:{runs['B']}", "user:ci_bot", None) in associations
    assert pairs(ProvAttribution, PROV_ATTR_ENTITY, PROV_ATTR_AGENT) == {
        ("model:acme/churn:1", "user:owner"),
        ("model:acme/base:1", "user:owner"),
    }


def test_openlineage_ndjson_is_valid_events_and_reingests_to_the_same_graph(personas, scenario):
    runs = scenario["runs"]
    owner = personas["owner"].client()
    response, text = export(owner, "model:acme/churn:1", "openlineage", direction="both")
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["X-Lineage-Truncated"] == "false"
    events = [json.loads(line) for line in text.splitlines()]
    parsed = [openlineage.parse(e) for e in events]  # every line is a valid OpenLineage 2-0-2 event
    by_run = {str(p.run_uuid): e for p, e in zip(parsed, events, strict=True) if p.run_uuid}
    assert set(by_run) == {str(runs[k]) for k in "ABCD"}
    train = by_run[str(runs["C"])]
    assert train["eventType"] == "COMPLETE"
    assert train["eventTime"] == "2026-01-03T02:00:00Z"
    assert train["schemaURL"].endswith("#/$defs/RunEvent")
    assert train["job"]["namespace"] == "pipelines" and train["job"]["name"] == "train"
    assert train["job"]["facets"]["sourceCodeLocation"]["version"] == "def456"
    assert [p["key"] for p in train["run"]["facets"]["executionParameters"]["parameters"]] == ["lr", "epochs"]
    assert [(i["namespace"], i["name"]) for i in train["inputs"]] == [
        ("s3://lake", "features"),
        ("registry", "acme/base:1"),
    ]
    assert [(o["namespace"], o["name"]) for o in train["outputs"]] == [("registry", "acme/churn:1")]
    assert train["outputs"][0]["facets"]["version"]["datasetVersion"] == scenario["churn"].digest
    # Events carry the inputs and outputs that belong to the exported subgraph: the evaluation's
    # holdout set is neither upstream nor downstream of the model.
    evaluate = by_run[str(runs["D"])]
    assert [(i["namespace"], i["name"]) for i in evaluate["inputs"]] == [("registry", "acme/churn:1")]
    raw = by_run[str(runs["A"])]["outputs"][0]
    assert raw["facets"]["version"]["datasetVersion"] == RAW
    assert [f["name"] for f in raw["facets"]["schema"]["fields"]] == ["user"]

    # Sending the export back changes nothing: every fact is already recorded.
    tables = (Dataset, DatasetVersion, Job, Run, Edge)
    before = {m.__name__: m.objects.count() for m in tables}
    for event in events:
        post_event(owner, event)
    assert {m.__name__: m.objects.count() for m in tables} == before


def test_csv_lists_nodes_then_edges(personas, scenario):
    runs = scenario["runs"]
    response, text = export(
        personas["owner"].client(), "dataset:s3://lake:raw/events", "csv", direction="downstream", depth=2
    )
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="lineage.csv"'
    rows = list(csv.DictReader(io.StringIO(text)))
    nodes = [(r["id"], r["type"], r["depth"]) for r in rows if r["record"] == "node"]
    assert nodes == [
        (f"dataset:s3://lake:raw/events#{RAW}", "datasetVersion", "0"),
        (f"run:{runs['B']}", "run", "1"),
        (f"dataset:s3://lake:features#run:{runs['B']}", "datasetVersion", "2"),
    ]
    assert response["X-Lineage-Nodes"] == "3"  # what was sent: not the dataset node the walk started from
    raw = next(r for r in rows if r["type"] == "datasetVersion" and r["name"] == "raw/events")
    assert (raw["namespace"], raw["version"], raw["digest"]) == ("s3://lake", RAW, RAW)
    edges = [(r["source"], r["target"], r["kind"]) for r in rows if r["record"] == "edge"]
    assert edges == [
        (f"dataset:s3://lake:raw/events#{RAW}", f"run:{runs['B']}", "input"),
        (f"run:{runs['B']}", f"dataset:s3://lake:features#run:{runs['B']}", "output"),
    ]
    assert rows[-1]["record"] == "truncated"  # depth 2 stops before the training run


def test_csv_cells_that_look_like_formulas_are_escaped(personas, make_version):
    """Names and versions sent in OpenLineage events that start with = + - or @ get a leading ' in the CSV (a
    spreadsheet shows them instead of running them); numbers the export writes (depth, model number) do not. (Tab
    and CR, which csv_safe escapes too, are control characters no name may hold: test_control_characters.)
    The OpenLineage export keeps the names as sent."""
    owner = personas["owner"].client()
    make_version("churn")
    run = uuid.uuid4()
    link = '=HYPERLINK("http://evil.example/?x","click")'
    event = run_event(
        "COMPLETE",
        run,
        ("pipelines", "@cmd"),
        inputs=[ol_dataset("+ns", link, version="-2+3"), ol_dataset("registry", "acme/churn:1")],
        outputs=[ol_dataset("s3://lake", "-out"), ol_dataset("s3://lake", "a=b")],
    )
    post_event(owner, event)
    _, text = export(owner, f"run:{run}", "csv", depth=1)
    rows = list(csv.DictReader(io.StringIO(text)))
    nodes = {r["id"]: r for r in rows if r["record"] == "node"}
    escaped = link.replace(":", "%3A")  # a name's ':' is escaped in its id (docs/lineage.md "Node ids")
    linked = nodes[f"dataset:+ns:{escaped}#-2+3"]  # ids start with the node type: never a formula
    assert (linked["namespace"], linked["name"], linked["version"]) == ("'+ns", "'" + link, "'-2+3")
    assert nodes["dataset:s3://lake:-out#run:" + str(run)]["name"] == "'-out"
    assert nodes[f"dataset:s3://lake:a=b#run:{run}"]["name"] == "a=b"
    assert (nodes["model:acme/churn:1"]["version"], nodes["model:acme/churn:1"]["depth"]) == ("1", "1")
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row.values())
    _, lines = export(owner, f"run:{run}", "openlineage", depth=1)
    assert link in {d["name"] for line in lines.splitlines() for d in json.loads(line).get("inputs", [])}


def test_exports_respect_visibility_and_validate_their_query(personas, scenario):
    outsider = personas["outsider"].client()
    _, text = export(outsider, "dataset:s3://lake:raw/events", "csv", direction="downstream")
    assert "model:" not in text
    _, text = export(outsider, "dataset:s3://lake:raw/events", "openlineage", direction="downstream")
    assert "acme/churn" not in text
    assert outsider.get(EXPORT, {"nodeId": "model:acme/churn:1", "format": "csv"}).status_code == 404
    response = outsider.get(EXPORT, {"nodeId": "model:acme/churn:1", "format": "pdf"})
    assert response.status_code == 400
    assert "format" in response.json()["error"]["detail"]
    response = outsider.get(EXPORT, {"nodeId": "model:acme/churn:1", "format": "csv"}, HTTP_ACCEPT="text/csv")
    assert response.status_code == 404  # errors stay JSON whatever the Accept header


def test_export_as_of(personas, scenario):
    from django.utils import timezone

    runs = scenario["runs"]
    owner = personas["owner"].client()
    before_eval = scenario["card"].created_at  # the evaluation run was sent after the card
    _, now_text = export(owner, "model:acme/churn:1", "csv", direction="downstream")
    _, then_text = export(owner, "model:acme/churn:1", "csv", direction="downstream", as_of=before_eval.isoformat())
    assert f"run:{runs['D']}" in now_text
    assert f"run:{runs['D']}" not in then_text
    assert timezone.now() > before_eval


def test_a_run_is_credited_only_with_the_code_location_it_sent(personas, make_version):
    """Run Y sent no sourceCodeLocation: its commit is the version's registered source.commit, not the one
    another run of the same job sent (before or after), in the summary the policy reads and in the export."""
    from lineage import selectors as lineage_selectors

    owner = personas["owner"].client()
    x, y, z = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    post_event(owner, run_event("COMPLETE", x, ("pipelines", "train"), commit="aaa111"))
    post_event(owner, run_event("COMPLETE", y, ("pipelines", "train")))
    version = make_version("churn", run_id=y)  # source.commit c0ffee
    summary = lineage_selectors.version_summary(version=version)
    assert (summary["code_commit"], summary["commit_from"]) == ("c0ffee", "source")
    post_event(owner, run_event("COMPLETE", z, ("pipelines", "train"), commit="zzz999", time="2026-01-03T00:00:00Z"))
    assert lineage_selectors.version_summary(version=version)["code_commit"] == "c0ffee"
    _, text = export(owner, "model:acme/churn:1", "openlineage", direction="upstream")
    lines = [json.loads(line) for line in text.splitlines()]
    y_events = [e for e in lines if e.get("run", {}).get("runId") == str(y)]
    assert y_events and all("sourceCodeLocation" not in e["job"]["facets"] for e in y_events)


def test_a_jobs_facets_sent_without_a_run_are_not_exported_as_a_runs(personas, make_version):
    """Anyone's JobEvent may describe a job; the export merged its sourceCodeLocation into the events of the
    job's runs that sent none, so importing the file elsewhere credited that commit to the run itself. They
    go in a JobEvent of their own."""
    owner, outsider = personas["owner"].client(), personas["ci_bot"].client()
    run = uuid.uuid4()
    post_event(owner, run_event("COMPLETE", run, ("pipelines", "train")))
    make_version("churn", run_id=run)
    job_event = run_event("COMPLETE", uuid.uuid4(), ("pipelines", "train"), commit="e0e0e0")
    job_event = {k: v for k, v in job_event.items() if k not in ("run", "eventType")}
    job_event["schemaURL"] = job_event["schemaURL"].replace("RunEvent", "JobEvent")
    post_event(outsider, job_event)
    _, text = export(owner, "model:acme/churn:1", "openlineage", direction="upstream")
    lines = [json.loads(line) for line in text.splitlines()]
    [run_line] = [e for e in lines if e.get("run", {}).get("runId") == str(run)]
    assert "sourceCodeLocation" not in run_line["job"]["facets"]
    [job_line] = [e for e in lines if "run" not in e and e.get("job", {}).get("name") == "train"]
    assert job_line["job"]["facets"]["sourceCodeLocation"]["version"] == "e0e0e0"


def test_facets_sent_bare_are_exported_as_the_schema_requires(personas):
    """Ingest keeps a facet without _producer/_schemaURL as sent; the 2-0-2 schema requires both on every
    facet, so the export names itself and the base facet type."""
    owner = personas["owner"].client()
    run = uuid.uuid4()
    event = run_event("COMPLETE", run, ("etl", "bare"), outputs=[ol_dataset("s3://b", "out")])
    event["run"]["facets"]["custom"] = {"a": 1}
    event["job"]["facets"]["ownership_note"] = {"team": "data"}
    event["outputs"][0]["facets"]["custom"] = {"b": 2}
    event["outputs"][0]["outputFacets"] = {"custom": {"c": 3}}
    post_event(owner, event)
    _, text = export(owner, f"run:{run}", "openlineage", direction="both")
    exported = next(
        json.loads(line) for line in text.splitlines() if json.loads(line).get("run", {}).get("runId") == str(run)
    )
    found = {
        "RunFacet": exported["run"]["facets"]["custom"],
        "JobFacet": exported["job"]["facets"]["ownership_note"],
        "DatasetFacet": exported["outputs"][0]["facets"]["custom"],
        "OutputDatasetFacet": exported["outputs"][0]["outputFacets"]["custom"],
    }
    for kind, facet in found.items():
        assert facet["_producer"] == "urn:model-governance-registry:lineage-export", facet
        assert facet["_schemaURL"].endswith(f"OpenLineage.json#/$defs/{kind}"), facet
    assert (found["RunFacet"]["a"], found["JobFacet"]["team"], found["OutputDatasetFacet"]["c"]) == (1, "data", 3)


def test_a_dataset_shows_the_schema_sent_last_whichever_run_sent_it_before(personas):
    """Run A sends a schema, run B another, then run A a third: the third is the dataset's (a repeated
    (run, facet) used to keep its first place in the order readers take the latest from)."""
    from lineage import selectors as lineage_selectors

    owner = personas["owner"].client()
    a, b = uuid.uuid4(), uuid.uuid4()
    for run, schema, time in ((a, "s1", "01"), (b, "s2", "02"), (a, "s3", "03")):
        dataset = ol_dataset("s3://b", "table", version="v1", schema=[(schema, "INT")])
        post_event(
            owner, run_event("RUNNING", run, ("etl", "load"), outputs=[dataset], time=f"2026-01-{time}T00:00:00Z")
        )
    version = DatasetVersion.objects.get(dataset__name="table", version="v1")
    details = lineage_selectors.dataset_version_details([version], None)[version.pk]
    assert details["schema"] == [{"name": "s3", "type": "INT"}]


def test_a_subject_read_by_many_runs_costs_a_row_per_facet_name_not_per_run(personas):
    """Five runs each send a schema for one dataset version. Reading the facets for run 2 fetches run 2's own
    row and the latest any run sent (run 5's), not the other three; run 2's event still exports run 2's schema
    and the dataset shows run 5's."""
    from lineage import selectors as lineage_selectors
    from lineage.choices import NodeType

    owner = personas["owner"].client()
    runs = [uuid.uuid4() for _ in range(5)]
    for i, run in enumerate(runs, start=1):
        dataset = ol_dataset("s3://b", "wide", version="v1", schema=[(f"s{i}", "INT")])
        post_event(owner, run_event("COMPLETE", run, ("etl", "read"), inputs=[dataset], time=f"2026-01-0{i}T00:00:00Z"))
    version = DatasetVersion.objects.get(dataset__name="wide", version="v1")
    subject = (int(NodeType.DATASET_VERSION), version.pk)

    pk = {i: Run.objects.get(run_uuid=run).pk for i, run in enumerate(runs, start=1)}

    def fetched(reading_runs):
        return [
            (name, run_id)
            for (_, name, run_id) in lineage_selectors.facets_as_of([subject], None, runs=reading_runs)[subject]
        ]

    assert fetched([pk[2]]) == [("schema", pk[2]), ("schema", pk[5])]  # a `version` facet is no facet row
    assert fetched([]) == [("schema", pk[5])]

    _, text = export(owner, f"run:{runs[1]}", "openlineage", direction="both")
    events = [json.loads(line) for line in text.splitlines()]
    own = [e for e in events if e["run"]["runId"] == str(runs[1])]
    assert own and all(e["inputs"][0]["facets"]["schema"]["fields"] == [{"name": "s2", "type": "INT"}] for e in own)
    details = lineage_selectors.dataset_version_details([version], None)[version.pk]
    assert details["schema"] == [{"name": "s5", "type": "INT"}]
