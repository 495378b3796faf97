"""A control character (C0 but NUL, DEL, C1, U+2028/U+2029, the bidirectional overrides) in a dataset's or job's
namespace or name, or in a dataset version, is refused at ingest: those become node ids, PROV ids, CSV cells and
the page. The 400 names the field, the code point and its position, and nothing of the event is stored. A node id
holding one is a 400 on reads too (it cannot name a node), not a 404."""

import uuid
from html import unescape

import pytest
from django.test import Client

from audit.models import AuditEvent
from core.errors import InvalidInput
from lineage import nodes
from lineage.models import Dataset, DatasetVersion, Edge, Facet, Job, LineageEvent, Run
from tests.lineage.conftest import PRODUCER, ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

CONTROLS = ["\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\u2028", "\u2029"]
BIDI = ["\u202a", "\u202e", "\u2066", "\u2069"]  # embeddings, overrides, isolates: text shown out of order
ROWS = (Dataset, DatasetVersion, Job, Run, Edge, Facet, LineageEvent, AuditEvent)


def stored() -> dict[str, int]:
    return {m.__name__: m.objects.count() for m in ROWS}


def job_event(job: tuple[str, str], inputs=(), outputs=()) -> dict:
    return {
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent",
        "job": {"namespace": job[0], "name": job[1], "facets": {}},
        "inputs": list(inputs),
        "outputs": list(outputs),
    }


def dataset_event(dataset: dict) -> dict:
    return {
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/DatasetEvent",
        "dataset": dataset,
    }


def good(name: str = "t") -> dict:
    return ol_dataset("s3://lake", name)


def cases(c: str) -> list[tuple[dict, str, int]]:
    """(event, the field named, the position of `c` in it) for every identifier an event names."""
    run = uuid.uuid4()
    return [
        (run_event("START", run, ("etl", f"daily{c}load")), "job.name", 5),
        (run_event("START", run, (f"{c}etl", "load")), "job.namespace", 0),
        (run_event("START", run, ("etl", "load"), inputs=[good("a"), good(f"raw/{c}")]), "inputs[1].name", 4),
        (run_event("START", run, ("etl", "load"), outputs=[ol_dataset(f"s3://l{c}", "x")]), "outputs[0].namespace", 6),
        (
            run_event("START", run, ("etl", "load"), inputs=[ol_dataset("s3://lake", "a", version=f"v1{c}")]),
            "inputs[0].facets.version.datasetVersion",
            2,
        ),
        (job_event(("etl", "load"), outputs=[good("a"), good(f"{c}b")]), "outputs[1].name", 0),
        (job_event((f"e{c}", "load")), "job.namespace", 1),
        (dataset_event(good(f"tab{c}")), "dataset.name", 3),
    ]


@pytest.mark.parametrize("char", CONTROLS + BIDI, ids=lambda c: f"U+{ord(c):04X}")
def test_a_control_character_in_an_identifier_refuses_the_whole_event(personas, char):
    client = personas["ci_bot"].client()
    post_event(client, run_event("START", uuid.uuid4(), ("etl", "seed"), inputs=[good("seed")]))
    before = stored()
    for body, field, at in cases(char):
        response = client.post("/api/v1/lineage", body, format="json")
        assert response.status_code == 400, (field, response.json())
        error = response.json()["error"]
        message = f"{field}: control character U+{ord(char):04X} at position {at} is not allowed"
        assert message in error["message"], error
        assert list(error["detail"]) == [field], error
    assert stored() == before  # nothing of any event: not its job, run, datasets or the other datasets it named


def test_names_without_control_characters_are_still_taken(personas):
    """Non-ASCII letters, right-to-left script, a space and the separators real namespaces hold are no control
    characters."""
    client = personas["ci_bot"].client()
    out = ol_dataset("postgres://db:5432", "données clients/漢字 🚀/بيانات", version="v1 #2")
    body = post_event(client, run_event("COMPLETE", uuid.uuid4(), ("ünï cöde", "a b"), outputs=[out]))
    assert body["outputs"] == ["dataset:postgres://db:5432:données clients/漢字 🚀/بيانات#v1 #2"]


@pytest.mark.parametrize("char", ["\n", "\x7f", "\x85", "\u2028", "\u202e"], ids=lambda c: f"U+{ord(c):04X}")
def test_a_node_id_holding_a_control_character_is_a_400_not_a_404(personas, char):
    user = personas["reviewer"].user
    for node_id in (
        f"dataset:s3://lake:a{char}b",
        f"job:etl:a{char}b",
        f"model:acme/churn{char}:1",
        f"release:p{char}:1",
    ):
        with pytest.raises(InvalidInput) as refused:
            nodes.resolve(node_id, user)
        assert f"control character U+{ord(char):04X} at position" in refused.value.message
        assert list(refused.value.detail) == ["nodeId"]
        api = personas["reviewer"].client().get("/api/v1/lineage/graph", {"nodeId": node_id})
        assert api.status_code == 400 and "nodeId" in api.json()["error"]["detail"], api.json()
    page = Client(raise_request_exception=False)
    page.force_login(user)
    response = page.get("/lineage/", {"nodeId": f"job:etl:a{char}b"})
    assert response.status_code == 400
    assert f"control character U+{ord(char):04X} at position 9" in unescape(response.content.decode())
