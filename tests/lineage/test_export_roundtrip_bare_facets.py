"""A facet stored without `_producer`/`_schemaURL` is exported with the export's own (the 2-0-2 schema requires
both); sending that file back stores nothing: the stored facets stay byte for byte what they were. The ingest
recognises the export's rendering of a facet it holds, and drops nothing a client writes: a facet with a client's
own values, or the export's values on a facet not stored bare, is recorded as sent."""

import json
import uuid

import pytest
from django.db import connection

from audit.models import AuditEvent
from lineage import exports
from lineage.models import Facet, Run
from lineage.openlineage import SCHEMA_URL
from tests.lineage.conftest import PRODUCER, post_event, run_event

pytestmark = pytest.mark.django_db

EVENT_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/"
EXPORTED = {"_producer": exports.PRODUCER}
QUERIES = [
    {"nodeId": "job:etl:load", "direction": "both"},
    {"nodeId": "job:etl:declared", "direction": "both"},
    {"nodeId": "dataset:s3://lake:described#v1"},
    {"nodeId": "dataset:s3://lake:plain"},
]


def bare_events(run_uuid) -> list[dict]:
    """A RunEvent, a JobEvent and two DatasetEvents whose facets carry no `_producer`/`_schemaURL`, but one that
    carries the client's `_producer` only."""
    run = run_event("COMPLETE", run_uuid, ("etl", "load"))
    run["run"]["facets"] = {
        "custom": {"a": 1, "nested": {"b": [1, "two", None]}},
        "partial": {"_producer": "https://client.example/x", "k": "v"},
        "environmentVariables": {
            "environmentVariables": [{"name": "API_TOKEN", "value": "s3cret"}, {"name": "LANG", "value": "C"}]
        },
    }
    run["job"]["facets"] = {
        "sourceCodeLocation": {"type": "git", "url": "https://github.com/acme/etl"},
        "owners": {"owners": [{"name": "team:data"}]},
    }
    run["inputs"] = [
        {
            "namespace": "s3://lake",
            "name": "in",
            "facets": {"schema": {"fields": [{"name": "x", "type": "INT"}]}},
            "inputFacets": {"custom_in": {"d": 4}},
        }
    ]
    run["outputs"] = [
        {
            "namespace": "s3://lake",
            "name": "out",
            "facets": {"quality": {"ok": True}},
            "outputFacets": {"outputStatistics": {"rowCount": 5}},
        }
    ]
    declared = {
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": EVENT_SCHEMA + "JobEvent",
        "job": {"namespace": "etl", "name": "declared", "facets": {"owners": {"owners": [{"name": "team:x"}]}}},
        "inputs": [{"namespace": "s3://lake", "name": "decl-in", "facets": {"dataSource": {"name": "lake"}}}],
        "outputs": [{"namespace": "s3://lake", "name": "decl-out", "facets": {"custom": {"z": 1}}}],
    }
    return [
        run,
        declared,
        dataset_event("described", version="v1", custom={"y": 2}),
        dataset_event("plain", custom={"w": 3}),
    ]


def dataset_event(name: str, version: str | None = None, **facets) -> dict:
    if version is not None:
        facets["version"] = {"datasetVersion": version}
    return {
        "eventTime": "2026-01-02T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": EVENT_SCHEMA + "DatasetEvent",
        "dataset": {"namespace": "s3://lake", "name": name, "facets": facets},
    }


def export(client, query) -> str:
    response = client.get("/api/v1/lineage/export", {"format": "openlineage", **query})
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content).decode()


def timeless(text: str) -> list[dict]:
    """Exported events without the eventTime a JobEvent or a dataset's DatasetEvent takes from the clock."""
    events = [json.loads(line) for line in text.splitlines()]
    return [{k: v for k, v in e.items() if k != "eventTime" or "run" in e} for e in events]


def stored_facets() -> list[tuple]:
    """Every facet row and its value as PostgreSQL holds it (jsonb's text)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, subject_type, subject_id, role, name, run_id, value::text FROM lineage_facet ORDER BY id"
        )
        return cursor.fetchall()


def facets_of(events: list[dict]):
    """Every facet object in exported events."""
    for event in events:
        sides = [event.get("run", {}), event.get("job", {}), event.get("dataset", {})]
        sides += [*event.get("inputs", []), *event.get("outputs", [])]
        for side in sides:
            for key in ("facets", "inputFacets", "outputFacets"):
                for name, facet in side.get(key, {}).items():
                    yield key, name, facet


def test_an_exported_file_sent_back_keeps_the_stored_facets_byte_for_byte(personas):
    client = personas["ci_bot"].client()
    for body in bare_events(uuid.uuid4()):
        post_event(client, body)
    before = stored_facets()
    assert not any('"_schemaURL"' in row[-1] for row in before)  # stored bare, as sent
    texts = [export(client, query) for query in QUERIES]
    events = [json.loads(line) for text in texts for line in text.splitlines()]
    assert {e["schemaURL"].rsplit("/", 1)[1] for e in events} == {"RunEvent", "JobEvent", "DatasetEvent"}
    exported = list(facets_of(events))
    # the export filled in its own producer and the base facet types on every bare facet
    assert {(name, f["_schemaURL"].rsplit("/", 1)[1]) for _, name, f in exported if name != "version"} >= {
        ("custom", "RunFacet"),
        ("sourceCodeLocation", "JobFacet"),
        ("owners", "JobFacet"),
        ("schema", "DatasetFacet"),
        ("custom_in", "InputDatasetFacet"),
        ("outputStatistics", "OutputDatasetFacet"),
        ("dataSource", "DatasetFacet"),
        ("custom", "DatasetFacet"),
    }
    partial = next(f for _, name, f in exported if name == "partial")
    assert partial == {"_producer": "https://client.example/x", "_schemaURL": SCHEMA_URL + "RunFacet", "k": "v"}
    assert all(f["_producer"] in (exports.PRODUCER, "https://client.example/x") for _, _, f in exported)

    seq = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    for event in events:
        response = client.post("/api/v1/lineage", event, format="json")
        assert response.status_code == 201, (event, response.json())
    assert stored_facets() == before  # not one facet row more, and every value as it was
    recorded = [json.loads(e.after)["recorded"] for e in AuditEvent.objects.filter(seq__gt=seq).order_by("seq")]
    assert len(recorded) == len(events) and all(counts["facets"] == 0 for counts in recorded), recorded
    assert [timeless(export(client, query)) for query in QUERIES] == [timeless(text) for text in texts]


def test_a_clients_own_values_are_recorded_as_sent(personas):
    client = personas["ci_bot"].client()
    first, second = uuid.uuid4(), uuid.uuid4()
    post_event(client, bare_events(first)[0])
    run = Run.objects.get(run_uuid=first)

    def send(run_uuid, facet: dict) -> dict:
        body = run_event("COMPLETE", run_uuid, ("etl", "load"))
        body["run"]["facets"] = {"custom": facet}
        post_event(client, body)
        return Facet.objects.filter(run__run_uuid=run_uuid, name="custom").latest("id").value

    mine = {"_producer": "https://client.example/x", "a": 1, "nested": {"b": [1, "two", None]}}
    assert send(first, mine) == mine  # the client's producer on a facet stored bare: a new fact, kept whole
    exported = {**EXPORTED, "_schemaURL": SCHEMA_URL + "RunFacet", "a": 1, "nested": {"b": [1, "two", None]}}
    assert send(first, exported) == exported  # restates no stored value (the latest has the client's producer)
    changed = {**exported, "a": 2}
    assert send(first, changed) == changed
    # a first facet that carries the export's values is stored with them, not stripped
    assert send(second, exported) == exported
    assert Facet.objects.filter(run=run, name="custom").count() == 4
