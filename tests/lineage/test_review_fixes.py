"""Review fixes: secret-named facet keys redacted at ingest, a re-sent RunEvent recorded once, a HEAD of the trail
that issues nothing, and the export's and trail's media types and headers in the OpenAPI schema."""

import copy
import json
import uuid

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from audit.models import AuditEvent
from lineage.models import Edge, Facet, LineageEvent
from tests.lineage.conftest import PRODUCER, digest_of, ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

URL = "/api/v1/lineage"
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


def export(client, **query) -> str:
    response = client.get(f"{URL}/export", {"format": "openlineage", **query})
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content).decode()


def facet(**fields) -> dict:
    return {"_producer": PRODUCER, "_schemaURL": "https://x/F.json", **fields}


# --- secret-named facet keys --------------------------------------------------------------------------------------


def secret_event(run) -> dict:
    output = ol_dataset("s3://lake", "out")
    output["facets"]["storage"] = facet(storageLayer="s3", credentials={"user": "u", "pass": SECRET})
    output["outputFacets"] = {"outputStatistics": facet(rowCount=3, api_key=SECRET)}
    # Maps keyed by column name: a column called `token` or `password` is no secret.
    output["facets"]["columnLineage"] = facet(
        fields={"token": {"inputFields": [{"namespace": "s3://lake", "name": "in", "field": "token"}]}}
    )
    body_in = ol_dataset("s3://lake", "in")
    body_in["inputFacets"] = {"dataQualityMetrics": facet(rowCount=3, columnMetrics={"password": {"nullCount": 0}})}
    body = run_event("COMPLETE", run, ("pipelines", "train"), inputs=[body_in], outputs=[output])
    body["run"]["facets"] = {
        "spark_properties": facet(
            properties={
                "spark.hadoop.fs.s3a.secret.key": SECRET,
                "spark.hadoop.fs.s3a.access.key": "AKIAEXAMPLE",  # an id, not a secret: kept
                "spark.ssl.keyStorePassword": SECRET,
                "password": "hunter2hunter2",
                "spark.app.name": "train",
            },
            nested=[{"db": {"PASSWORD": SECRET, "host": "db.internal"}}],
        ),
        "executionParameters": facet(parameters=[{"key": "db_password", "value": SECRET}, {"key": "lr", "value": "1"}]),
        "checksums": facet(digest=digest_of("x"), token_count=12, model="sha256:" + "a" * 64),
    }
    body["job"]["facets"]["ownership"] = facet(owners=[{"name": "team", "type": "MAINTAINER"}], auth_token=SECRET)
    return body


def test_secret_named_facet_keys_are_redacted_at_ingest(personas):
    owner, outsider = personas["owner"].client(), personas["outsider"].client()
    run = uuid.uuid4()
    post_event(owner, secret_event(run))

    stored = json.dumps([f.value for f in Facet.objects.all()])
    assert SECRET not in stored and "hunter2hunter2" not in stored
    props = Facet.objects.get(name="spark_properties").value
    assert props["properties"] == {
        "spark.hadoop.fs.s3a.secret.key": "[redacted]",
        "spark.hadoop.fs.s3a.access.key": "AKIAEXAMPLE",
        "spark.ssl.keyStorePassword": "[redacted]",
        "password": "[redacted]",
        "spark.app.name": "train",
    }
    assert props["nested"] == [{"db": {"PASSWORD": "[redacted]", "host": "db.internal"}}]
    assert Facet.objects.get(name="executionParameters").value["parameters"] == [
        {"key": "db_password", "value": "[redacted]"},
        {"key": "lr", "value": "1"},
    ]
    # By key name only: digests and other values under ordinary keys are kept as sent.
    assert Facet.objects.get(name="checksums").value == facet(
        digest=digest_of("x"), token_count=12, model="sha256:" + "a" * 64
    )
    assert Facet.objects.get(name="storage").value["credentials"] == "[redacted]"
    assert Facet.objects.get(name="outputStatistics").value == facet(rowCount=3, api_key="[redacted]")
    assert Facet.objects.get(name="ownership").value["auth_token"] == "[redacted]"
    assert Facet.objects.get(name="columnLineage").value["fields"] == {
        "token": {"inputFields": [{"namespace": "s3://lake", "name": "in", "field": "token"}]}
    }
    assert Facet.objects.get(name="dataQualityMetrics").value["columnMetrics"] == {"password": {"nullCount": 0}}

    changed = secret_event(run)
    changed["eventTime"] = "2026-01-01T00:05:00Z"  # a new event with the same facets records none
    facets = Facet.objects.count()
    post_event(owner, changed)
    assert Facet.objects.count() == facets

    # What every reader gets: the export (outsider: no group, no object permission) holds no secret.
    text = export(outsider, nodeId=f"run:{run}")
    assert SECRET not in text and "hunter2hunter2" not in text
    assert '"spark.hadoop.fs.s3a.secret.key":"[redacted]"' in text
    # Two exports are the same file, and sending one back records no facet.
    assert export(outsider, nodeId=f"run:{run}") == text
    for line in text.splitlines():
        response = owner.post(URL, json.loads(line), format="json")
        assert response.status_code in (200, 201), response.content
    assert Facet.objects.count() == facets
    assert export(outsider, nodeId=f"run:{run}") == text


# --- a re-sent RunEvent -------------------------------------------------------------------------------------------


def test_a_resent_run_event_records_nothing_and_names_the_stored_one(personas):
    owner = personas["owner"].client()
    run = uuid.uuid4()
    body = run_event(
        "COMPLETE",
        run,
        ("pipelines", "train"),
        inputs=[ol_dataset("s3://lake", "in")],
        commit="abc",
        time="2026-01-01T01:00:00Z",
    )
    body["outputs"] = [ol_dataset("s3://lake", "out", version=digest_of("out"))]
    first = owner.post(URL, body, format="json")
    assert first.status_code == 201, first.content
    counts = (LineageEvent.objects.count(), AuditEvent.objects.count(), Edge.objects.count(), Facet.objects.count())

    # The client's retry, with its keys in another order (the same canonical body): 200, the stored event's answer.
    resent = json.loads(json.dumps(body, sort_keys=True))
    again = owner.post(URL, resent, format="json")
    assert again.status_code == 200, again.content
    assert again.json() == first.json()
    assert (LineageEvent.objects.count(), AuditEvent.objects.count(), Edge.objects.count(), Facet.objects.count()) == (
        counts
    )
    assert AuditEvent.objects.filter(action="lineage.event_ingested").count() == 1
    graph = owner.get(f"{URL}/graph", {"nodeId": f"run:{run}", "granularity": "version"}).json()
    [node] = [n for n in graph["nodes"] if n["id"] == f"run:{run}"]
    assert node["state"] == "COMPLETE"
    [exported] = [json.loads(line) for line in export(owner, nodeId=f"run:{run}").splitlines() if "eventType" in line]
    assert exported["eventType"] == "COMPLETE"

    # Another eventTime, eventType or body is another event: stored (201).
    for change in ({"eventTime": "2026-01-01T01:00:01Z"}, {"eventType": "OTHER"}, {"producer": "https://x/other"}):
        other = post_event(owner, {**copy.deepcopy(body), **change})
        assert other["event"] != first.json()["event"]
    assert LineageEvent.objects.count() == counts[0] + 3


def test_a_resent_run_event_is_checked_as_a_new_one(personas, make_version):
    """A re-send answers only to one who may send the event: the run's claim and the model versions it names."""
    owner, outsider = personas["owner"].client(), personas["outsider"].client()
    run = uuid.uuid4()
    make_version("churn", run_id=run)  # the run produced acme/churn:1: it speaks for that model
    body = run_event("COMPLETE", run, ("pipelines", "train"), outputs=[ol_dataset("registry", "acme/churn:1")])
    assert owner.post(URL, body, format="json").status_code == 201
    before = (LineageEvent.objects.count(), AuditEvent.objects.count())

    refused = outsider.post(URL, body, format="json")
    assert refused.status_code == 403, refused.content
    assert "register_version" in refused.json()["error"]["message"]
    assert "acme/churn" not in refused.json()["error"]["message"]  # a model the outsider may not view
    assert (LineageEvent.objects.count(), AuditEvent.objects.count()) == before
    assert owner.post(URL, body, format="json").status_code == 200

    # A run that produced nothing takes any writer's events; naming a hidden model version is still a 400.
    free = uuid.uuid4()
    reads_model = run_event("COMPLETE", free, ("pipelines", "eval"), inputs=[ol_dataset("registry", "acme/churn:1")])
    assert owner.post(URL, reads_model, format="json").status_code == 201
    hidden = outsider.post(URL, reads_model, format="json")
    assert hidden.status_code == 400 and "inputs[0].name" in hidden.json()["error"]["detail"], hidden.content


# --- HEAD of the trail --------------------------------------------------------------------------------------------


def test_head_of_the_trail_issues_nothing(personas, make_version):
    owner = personas["owner"].client()
    make_version("churn")
    query = {"nodeId": "model:acme/churn:1"}
    before = AuditEvent.objects.count()
    for fmt in ("json", "html"):
        head = owner.head(f"{URL}/trail", {**query, "format": fmt})
        assert head.status_code == 200, head.content
        assert len(head["X-Trail-SHA256"]) == 64 and "X-Trail-Audit-Seq" not in head
    assert AuditEvent.objects.count() == before  # no lineage.trail_issued

    got = owner.get(f"{URL}/trail", query)
    assert got["X-Trail-SHA256"] == got.json()["sha256"]
    issued = AuditEvent.objects.get(action="lineage.trail_issued")
    assert got["X-Trail-Audit-Seq"] == str(issued.seq)


# --- schema: media types and headers ------------------------------------------------------------------------------

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def schema_dict(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        return SchemaGenerator().get_schema(request=None, public=True)


def test_exports_trails_and_resends_conform_to_the_schema(live_server, personas, make_version, schema_dict):
    schema = schemathesis.openapi.from_dict(schema_dict)
    owner = personas["owner"]
    headers = {"Authorization": f"Bearer {owner.token}"}
    run = uuid.uuid4()
    make_version("churn", run_id=run)
    event = run_event("COMPLETE", run, ("p", "train"), inputs=[ol_dataset("s3://lake", "in")])

    def call(method, template, **kwargs):
        case = schema[template][method].Case(**kwargs)
        response = case.call(base_url=live_server.url, headers=headers, timeout=60)
        case.validate_response(response, checks=CHECKS, headers=headers)
        return response

    sent = [call("POST", "/api/v1/lineage/", body=event, media_type="application/json") for _ in range(2)]
    assert [r.status_code for r in sent] == [201, 200]
    media = {}
    for fmt in ("openlineage", "prov-json", "csv"):
        response = call("GET", "/api/v1/lineage/export/", query={"nodeId": "model:acme/churn:1", "format": fmt})
        media[fmt] = response.headers["content-type"][0].split(";")[0]
        assert response.headers["x-lineage-nodes"][0].isdigit()
    assert media == {"openlineage": "application/x-ndjson", "prov-json": "application/json", "csv": "text/csv"}
    for fmt, expected in (("json", "application/json"), ("html", "text/html")):
        response = call("GET", "/api/v1/lineage/trail/", query={"nodeId": "model:acme/churn:1", "format": fmt})
        assert response.headers["content-type"][0].startswith(expected)
        assert response.headers["x-trail-audit-seq"][0].isdigit()
