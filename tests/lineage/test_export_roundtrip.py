"""An OpenLineage export sent back to the registry through its ingest API changes nothing (docs/lineage.md).

Including the DatasetEvents of model versions that no exported run reads or writes: a DatasetEvent in the
`registry` namespace restates a model version the registry holds (its digest as the `version` facet), so the
ingest verifies it instead of refusing it; one that contradicts the registry is still a 400.
"""

import json
import uuid

import pytest

from audit.models import AuditEvent
from governance.choices import ReleaseState
from lineage import exports
from lineage.models import Dataset, DatasetVersion, Edge, Facet, Job, LineageEvent, Run, VersionRunLink
from registry.models import ModelVersion
from tests.lineage.conftest import PRODUCER, RAW, ol_dataset, post_event, run_event
from tests.ui import builders

pytestmark = pytest.mark.django_db

FACTS = (Dataset, DatasetVersion, Job, Run, Edge, Facet, VersionRunLink, ModelVersion)


def export(client, **query) -> str:
    response = client.get("/api/v1/lineage/export", {"format": "openlineage", **query})
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content).decode()


def facts() -> dict[str, int]:
    return {m.__name__: m.objects.count() for m in FACTS}


def send_back(client, events: list[dict]) -> list[dict]:
    """POST every event through the ingest API: each is received (an event row and its audit event). Returns
    what each audit event says the event created (`recorded`)."""
    seq = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    for event in events:
        response = client.post("/api/v1/lineage", event, format="json")
        assert response.status_code == 201, (event, response.json())
    added = list(AuditEvent.objects.filter(seq__gt=seq).order_by("seq"))
    assert [e.action for e in added] == ["lineage.event_ingested"] * len(events)
    assert LineageEvent.objects.filter(pk__in=[int(e.subject_id) for e in added]).count() == len(events)
    return [json.loads(e.after)["recorded"] for e in added]


def versions_stated(events: list[dict]) -> int:
    """The `version` facets the export states for dataset versions (a model version's is its digest)."""
    datasets = [d for e in events for d in [*e.get("inputs", []), *e.get("outputs", []), e.get("dataset", {})]]
    return sum(
        d["facets"]["version"]["_producer"] == exports.PRODUCER
        for d in datasets
        if d.get("namespace") not in (None, "registry") and "version" in d["facets"]
    )


@pytest.mark.parametrize(
    ("query", "states_versions"),
    [
        # the released version at depth 1: its producing run lies beyond the limit
        ({"nodeId": "release:prod:1", "direction": "upstream", "depth": 1}, False),
        # a base model: nothing upstream of it
        ({"nodeId": "model:acme/base:1", "direction": "upstream"}, False),
        # a version registered without lineage, deployed: reached from its release only
        ({"nodeId": "release:prod:2", "direction": "upstream"}, False),
        # the whole lineage of the released version: every model version is in a run's event, and each dataset
        # version there carries the `version` facet the export states, whether or not the run's event sent one
        ({"nodeId": "release:prod:1", "direction": "both"}, True),
        # a dataset version alone: its DatasetEvent restates the schema and source its producing run sent
        ({"nodeId": f"dataset:s3://lake:raw/events#{RAW}", "direction": "both", "depth": 0}, True),
    ],
    ids=["frontier", "base", "no-lineage", "covered", "dataset-alone"],
)
def test_an_export_sent_back_changes_nothing(personas, scenario, query, states_versions):
    owner = personas["owner"]
    prod = builders.target(personas["admin"].user)
    builders.release(prod, scenario["churn"], 1, state=ReleaseState.SUPERSEDED)
    solo = builders.version(owner.user, scenario["base"].model, "solo")  # acme/base:2, no run
    builders.release(prod, solo, 2, state=ReleaseState.LIVE)

    client = owner.client()
    text = export(client, **query)
    events = [json.loads(line) for line in text.splitlines()]
    model_events = [e for e in events if e.get("dataset", {}).get("namespace") == "registry"]
    assert bool(model_events) == (query["direction"] == "upstream"), text
    assert bool(versions_stated(events)) == states_versions, text
    if query.get("depth") == 0:
        assert [e["dataset"]["facets"].keys() for e in events] == [{"dataSource", "schema", "version"}], text
    graph = client.get("/api/v1/lineage/graph", query).json()
    before = facts()

    recorded = send_back(client, events)
    # Nothing is recorded but the events: a `version` facet names the dataset version the event is about (its
    # identity), and is no facet row, however the export states it.
    assert facts() == before
    assert all(not any(counts.values()) for counts in recorded), recorded  # and their audit events say so
    assert not Dataset.objects.filter(namespace="registry").exists()  # a model version is not a dataset
    assert export(client, **query) == text
    assert client.get("/api/v1/lineage/graph", query).json() == graph


def dataset_event(name: str, version: str | None, **facets) -> dict:
    if version is not None:
        facets["version"] = {"_producer": PRODUCER, "_schemaURL": "https://x/Version.json", "datasetVersion": version}
    return {
        "eventTime": "2026-01-05T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/DatasetEvent",
        "dataset": {"namespace": "registry", "name": name, "facets": facets},
    }


def test_a_model_version_dataset_event_must_agree_with_the_registry(personas, scenario):
    churn = scenario["churn"]
    client = personas["owner"].client()
    before, events = facts(), LineageEvent.objects.count()

    def refused(body, status, field):
        response = client.post("/api/v1/lineage", body, format="json")
        assert response.status_code == status, response.json()
        assert field in response.json()["error"]["detail"], response.json()

    other = "sha256:" + "0" * 64
    refused(dataset_event("acme/churn:1", other), 400, "dataset.facets.version.datasetVersion")
    refused(dataset_event("acme/churn:9", churn.digest), 400, "dataset.name")
    refused(dataset_event(f"acme/churn@{other}", None), 400, "dataset.name")
    schema = {"_producer": PRODUCER, "_schemaURL": "https://x/S.json", "fields": [{"name": "x", "type": "INT"}]}
    refused(dataset_event("acme/churn:1", churn.digest, schema=schema), 400, "dataset.facets.schema")
    # a model version the sender may not view is answered like one that does not exist
    outsider = personas["outsider"].client()
    response = outsider.post("/api/v1/lineage", dataset_event("acme/churn:1", churn.digest), format="json")
    assert response.status_code == 400 and "dataset.name" in response.json()["error"]["detail"]
    assert (facts(), LineageEvent.objects.count()) == (before, events)

    # By number or by digest, with or without the version facet: received, nothing recorded.
    for body in (
        dataset_event("acme/churn:1", churn.digest),
        dataset_event(f"acme/churn@{churn.digest}", None),
        dataset_event("acme/churn:1", None),
    ):
        response = client.post("/api/v1/lineage", body, format="json")
        assert response.status_code == 201, response.json()
        assert response.json()["outputs"] == ["model:acme/churn:1"]
    assert facts() == before


def test_a_declared_job_exports_its_own_facets_at_the_time_they_were_stated(personas):
    """A job with declared lineage (a JobEvent) whose run sent its commit: the job's JobEvent states the job's own
    facets, not the run's code location (docs/lineage.md), dated by the JobEvent (two exports are the same file),
    and sending the export back records nothing."""
    ci = personas["ci_bot"].client()
    job_type = {"_producer": PRODUCER, "_schemaURL": "https://x/JobType.json", "processingType": "BATCH",
                "integration": "DBT", "jobType": "MODEL"}  # fmt: skip
    raw, mart = ol_dataset("pg", "raw.orders"), ol_dataset("pg", "mart.orders")
    post_event(ci, {
        "eventTime": "2026-02-01T09:30:00Z", "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent",
        "job": {"namespace": "dbt", "name": "orders", "facets": {"jobType": job_type}},
        "inputs": [raw], "outputs": [mart],
    })  # fmt: skip
    run = run_event("COMPLETE", uuid.uuid4(), ("dbt", "orders"), commit="abc123", inputs=[raw], outputs=[mart])
    post_event(ci, run)

    text = export(ci, nodeId="job:dbt:orders", direction="both")
    events = [json.loads(line) for line in text.splitlines()]
    [job] = [e for e in events if e["schemaURL"].endswith("JobEvent")]
    assert job["job"]["facets"] == {"jobType": job_type}
    assert job["eventTime"] == "2026-02-01T09:30:00Z"
    [run_line] = [e for e in events if e["schemaURL"].endswith("RunEvent")]
    assert run_line["job"]["facets"]["sourceCodeLocation"]["version"] == "abc123"  # the run's own event says it
    before = facts()
    send_back(ci, events)
    assert facts() == before
    assert export(ci, nodeId="job:dbt:orders", direction="both") == text
