"""POST /api/v1/lineage: validation naming the bad field, atomicity, mapping, audit, append-only rows."""

import copy
import gzip
import json
import uuid

import pytest
from django.db import IntegrityError, connection, transaction

from audit.models import AuditEvent
from lineage.models import Dataset, DatasetVersion, Edge, Facet, Job, LineageEvent, Run, VersionRunLink
from tests.lineage.conftest import PRODUCER, digest_of, ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

URL = "/api/v1/lineage"
TABLES = (Dataset, DatasetVersion, Job, Run, Edge, Facet, LineageEvent, VersionRunLink, AuditEvent)


def counts() -> dict:
    return {m.__name__: m.objects.count() for m in TABLES}


def valid() -> dict:
    return run_event(
        "COMPLETE",
        uuid.uuid4(),
        ("pipelines", "train"),
        inputs=[ol_dataset("s3://lake", "a", schema=[("x", "INT")])],
        outputs=[ol_dataset("s3://lake", "b")],
        commit="abc",
    )


def _set(body: dict, path: list, value):
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        (["eventTime"], _DELETE, "eventTime", "is required"),
        (["eventTime"], "2026-01-01", "eventTime", "no time part"),
        (["eventTime"], "2026-13-01T00:00:00Z", "eventTime", "not an RFC 3339 date-time"),
        # Valid RFC 3339 whose UTC instant is in year 0 (was a 500) or year 10000 (stored, then every export of
        # the run failed reading it back): neither fits a Python datetime
        (["eventTime"], "0001-01-01T00:00:00+05:00", "eventTime", "outside years 1-9999 once in UTC"),
        (["eventTime"], "9999-12-31T23:59:59-05:00", "eventTime", "outside years 1-9999 once in UTC"),
        (["producer"], _DELETE, "producer", "is required"),
        (["producer"], "not a uri", "producer", "is not a URI"),
        (["schemaURL"], _DELETE, "schemaURL", "is required"),
        (
            ["schemaURL"],
            "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent",
            "schemaURL",
            "names a JobEvent",
        ),
        (["eventType"], "DONE", "eventType", "is not one of"),
        (["run", "runId"], "run-1", "run.runId", "is not a UUID"),
        # uuid.UUID reads these, but the spec's runId is the 8-4-4-4-12 form: stored, the export named another id
        (["run", "runId"], "urn:uuid:0f3a9c1e-7b2d-4f6a-8c1e-3b5d7f9a2c4e", "run.runId", "not a UUID in its standard"),
        (["run", "runId"], "{0f3a9c1e-7b2d-4f6a-8c1e-3b5d7f9a2c4e}", "run.runId", "not a UUID in its standard"),
        (["run", "runId"], "0f3a9c1e7b2d4f6a8c1e3b5d7f9a2c4e", "run.runId", "not a UUID in its standard"),
        (["run"], "x", "run", "must be an object"),
        (["run", "facets"], [], "run.facets", "must be an object"),
        (
            ["run", "facets", "nominalTime"],
            {"nominalStartTime": "soon"},
            "run.facets.nominalTime.nominalStartTime",
            "no time part",
        ),
        (["job", "name"], _DELETE, "job.name", "is required"),
        (["job", "namespace"], "  ", "job.namespace", "must not be empty"),
        (["job", "facets", "sourceCodeLocation", "url"], 3, "job.facets.sourceCodeLocation.url", "must be a string"),
        (["job", "facets", "sourceCodeLocation", "type"], _DELETE, "job.facets.sourceCodeLocation.type", "is required"),
        (["inputs"], {"namespace": "x"}, "inputs", "must be an array"),
        (["inputs", 0, "name"], _DELETE, "inputs[0].name", "is required"),
        (
            ["inputs", 0, "facets", "schema", "fields", 0, "name"],
            _DELETE,
            "inputs[0].facets.schema.fields[0].name",
            "is required",
        ),
        (["inputs", 0, "facets", "schema", "fields"], "x", "inputs[0].facets.schema.fields", "must be an array"),
        (
            ["outputs", 0, "facets"],
            {"version": {"datasetVersion": 7}},
            "outputs[0].facets.version.datasetVersion",
            "must be a string",
        ),
        (
            ["outputs", 0, "outputFacets"],
            {"outputStatistics": {"rowCount": -1}},
            "outputs[0].outputFacets.outputStatistics.rowCount",
            "non-negative",
        ),
        (["outputs", 0, "facets"], {"dataSource": {"uri": "nope"}}, "outputs[0].facets.dataSource.uri", "is not a URI"),
        (["outputs", 0, "name"], "x" * 1001, "outputs[0].name", "longer than 1000 bytes"),
        (["outputs", 0, "namespace"], "registry", "outputs[0].name", "name model versions"),
        # environmentVariables is redacted wherever it is attached, so its shape is checked there too (was a 500
        # on job and dataset facets).
        (
            ["job", "facets", "environmentVariables"],
            {"environmentVariables": [1]},
            "job.facets.environmentVariables.environmentVariables[0]",
            "must be an object",
        ),
        (
            ["job", "facets", "environmentVariables"],
            {"environmentVariables": "A=1"},
            "job.facets.environmentVariables.environmentVariables",
            "must be an array",
        ),
        (  # a deletion marker that still carries variables must carry well-formed ones
            ["job", "facets", "environmentVariables"],
            {"_deleted": True, "environmentVariables": [{"value": "x"}]},
            "job.facets.environmentVariables.environmentVariables[0].name",
            "is required",
        ),
        (
            ["inputs", 0, "facets", "environmentVariables"],
            {"environmentVariables": [{"value": "x"}]},
            "inputs[0].facets.environmentVariables.environmentVariables[0].name",
            "is required",
        ),
        (
            ["outputs", 0, "outputFacets"],
            {"environmentVariables": {"environmentVariables": [{"name": 1}]}},
            "outputs[0].outputFacets.environmentVariables.environmentVariables[0].name",
            "must be a string",
        ),
        (
            ["run", "facets", "environmentVariables"],
            {"environmentVariables": [{"name": "A", "value": 5}]},
            "run.facets.environmentVariables.environmentVariables[0].value",
            "must be a string",
        ),
    ],
)
def test_malformed_events_are_a_400_naming_the_field_and_store_nothing(personas, path, value, field, message):
    client = personas["ci_bot"].client()
    body = valid()
    _set(body, path, value)
    before = counts()
    response = client.post(URL, body, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "invalid_event"
    assert field in error["detail"], error
    assert message in error["detail"][field][0]
    assert error["message"].startswith(f"Invalid OpenLineage event: {field}: ")
    assert counts() == before


@pytest.mark.parametrize("body", [[], "x", 3, None])
def test_a_body_that_is_not_an_object(personas, body):
    response = personas["ci_bot"].client().post(URL, json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_event"


def test_not_json_and_gzip_bodies(personas):
    client = personas["ci_bot"].client()
    assert client.post(URL, "{not json", content_type="application/json").status_code == 400
    body = gzip.compress(json.dumps(valid()).encode())
    response = client.post(URL, body, content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 201, response.json()
    bad = client.post(URL, b"not gzip", content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert bad.status_code == 400
    odd = client.post(URL, b"{}", content_type="application/json", HTTP_CONTENT_ENCODING="br")
    assert (odd.status_code, odd.json()["error"]["code"]) == (400, "unsupported_encoding")
    lone = json.dumps(valid()).replace('"producer": "', '"producer": "\\ud800', 1).encode()
    assert b"\\ud800" in lone
    for data, encoding in ((lone, ""), (gzip.compress(lone), "gzip")):  # each parser path refuses it
        refused = client.post(URL, data, content_type="application/json", HTTP_CONTENT_ENCODING=encoding)
        assert refused.status_code == 400 and "holds a lone surrogate" in refused.json()["error"]["message"]


def test_a_failure_late_in_the_event_rolls_back_everything(personas, make_version):
    """Validation passes, then the writer finds a problem after it has written rows: all roll back."""
    make_version("other")  # the ci_bot may not view it
    client = personas["ci_bot"].client()
    body = valid()
    body["inputs"].append(ol_dataset("registry", "acme/other:1"))
    before = counts()
    response = client.post(URL, body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["detail"] == {"inputs[1].name": ["Unknown model version."]}
    assert counts() == before

    run = uuid.uuid4()
    post_event(client, run_event("START", run, ("p", "one")))
    before = counts()
    response = client.post(
        URL, run_event("COMPLETE", run, ("p", "another"), outputs=[ol_dataset("s3://x", "y")]), format="json"
    )
    assert response.status_code == 400
    assert "belongs to job p:one" in response.json()["error"]["message"]
    assert counts() == before


def test_a_run_event_maps_to_rows_and_one_audit_event(personas):
    client = personas["ci_bot"].client()
    body = valid()
    body["inputs"][0]["facets"]["version"] = {"datasetVersion": digest_of("a")}
    body["run"]["facets"]["environmentVariables"] = {
        "environmentVariables": [{"name": "HF_TOKEN", "value": "hf_abc"}, {"name": "RANK", "value": "0"}]
    }
    result = post_event(client, body)
    run_id = body["run"]["runId"]
    assert result == {
        "event": LineageEvent.objects.get().pk,
        "kind": "RunEvent",
        "eventType": "COMPLETE",
        "job": "job:pipelines:train",
        "run": f"run:{run_id}",
        "inputs": [f"dataset:s3://lake:a#{digest_of('a')}"],
        "outputs": [f"dataset:s3://lake:b#run:{run_id}"],
    }
    a = DatasetVersion.objects.get(dataset__name="a")
    assert (a.version, a.digest) == (digest_of("a"), digest_of("a"))
    b = DatasetVersion.objects.get(dataset__name="b")
    assert (b.version, b.digest) == (f"run:{run_id}", "")
    run = Run.objects.get()
    assert {(e.src_type, e.src_id, e.dst_type, e.dst_id, e.kind) for e in Edge.objects.all()} == {
        (1, a.pk, 2, run.pk, 1),
        (2, run.pk, 1, b.pk, 2),
    }
    env = Facet.objects.get(name="environmentVariables").value["environmentVariables"]
    assert env == [{"name": "HF_TOKEN", "value": "[redacted]"}, {"name": "RANK", "value": "0"}]
    (event,) = AuditEvent.objects.filter(action="lineage.event_ingested")
    after = json.loads(event.after)
    assert event.actor_username == "ci_bot"
    assert event.subject_type == "lineage.lineageevent"
    assert after["run"] == f"run:{run_id}"
    assert after["inputs"] == result["inputs"]
    assert after["outputs"] == result["outputs"]
    assert len(after["payload_sha256"]) == 64


def test_environment_variables_are_redacted_on_every_subject(personas):
    """Job, dataset and input facets named environmentVariables are redacted like run facets; a name sent
    twice keeps each value; a deletion marker is stored as sent."""
    client = personas["ci_bot"].client()
    body = valid()
    env = {"environmentVariables": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}, {"name": "RANK", "value": "0"}]}
    body["job"]["facets"]["environmentVariables"] = env
    body["inputs"][0]["facets"]["environmentVariables"] = env
    body["inputs"][0]["inputFacets"] = {"environmentVariables": env}
    body["outputs"][0]["facets"]["environmentVariables"] = {"_deleted": True}
    body["run"]["facets"]["environmentVariables"] = {
        "environmentVariables": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}, {"name": "B"}]
    }
    post_event(client, body)
    stored = [f.value for f in Facet.objects.filter(name="environmentVariables")]
    redacted = {
        "environmentVariables": [
            {"name": "AWS_SECRET_ACCESS_KEY", "value": "[redacted]"},
            {"name": "RANK", "value": "0"},
        ]
    }
    twice = {
        "environmentVariables": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}, {"name": "B", "value": None}]
    }
    assert sorted(stored, key=json.dumps) == sorted([redacted] * 3 + [{"_deleted": True}, twice], key=json.dumps)
    assert "abc" not in json.dumps(stored)


def test_repeated_events_add_no_duplicate_facts(personas):
    client = personas["ci_bot"].client()
    body = valid()
    post_event(client, body)
    edges, facets = Edge.objects.count(), Facet.objects.count()
    again = copy.deepcopy(body)
    again["eventType"] = "OTHER"
    post_event(client, again)
    assert (Edge.objects.count(), Facet.objects.count()) == (edges, facets)
    assert LineageEvent.objects.count() == 2
    # A changed facet is a new fact; the old one stays.
    again["inputs"][0]["facets"]["schema"]["fields"].append({"name": "y", "type": "INT"})
    post_event(client, again)
    assert Facet.objects.filter(name="schema").count() == 2


def test_inputs_without_version_read_the_latest_version(personas):
    client = personas["ci_bot"].client()
    first, second, reader = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    post_event(client, run_event("COMPLETE", first, ("p", "w"), outputs=[ol_dataset("s3://b", "t")]))
    post_event(client, run_event("COMPLETE", reader, ("p", "r"), inputs=[ol_dataset("s3://b", "t")]))
    post_event(client, run_event("COMPLETE", second, ("p", "w"), outputs=[ol_dataset("s3://b", "t")]))
    versions = list(DatasetVersion.objects.order_by("id").values_list("version", flat=True))
    assert versions == [f"run:{first}", f"run:{second}"]
    run = Run.objects.get(run_uuid=reader)
    (edge,) = Edge.objects.filter(dst_type=2, dst_id=run.pk)
    assert DatasetVersion.objects.get(pk=edge.src_id).version == f"run:{first}"
    # A dataset first seen as an input gets an initial, unnamed version.
    post_event(client, run_event("COMPLETE", uuid.uuid4(), ("p", "r"), inputs=[ol_dataset("s3://b", "fresh")]))
    assert DatasetVersion.objects.get(dataset__name="fresh").version == ""


def test_model_versions_as_inputs_and_outputs(personas, make_version):
    owner = personas["owner"].client()
    base = make_version("base")
    tuned = make_version("tuned")
    run = uuid.uuid4()
    post_event(
        owner,
        run_event(
            "COMPLETE",
            run,
            ("p", "finetune"),
            inputs=[ol_dataset("registry", f"acme/base@{base.digest}")],
            outputs=[ol_dataset("registry", "acme/tuned:1")],
        ),
    )
    (edge,) = Edge.objects.all()
    assert (edge.src_type, edge.src_id, edge.kind) == (3, base.pk, 1)
    (link,) = VersionRunLink.objects.all()
    assert (link.version_id, link.run_uuid, link.linked, link.source) == (tuned.pk, run, True, "openlineage")
    # A reviewer may view the model but not register: claiming its producer is refused.
    response = (
        personas["reviewer"]
        .client()
        .post(
            URL,
            run_event("COMPLETE", uuid.uuid4(), ("p", "x"), outputs=[ol_dataset("registry", "acme/tuned:1")]),
            format="json",
        )
    )
    assert response.status_code == 403
    assert VersionRunLink.objects.count() == 1


def test_dataset_event_without_version_describes_the_dataset(personas):
    client = personas["ci_bot"].client()
    body = {
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/DatasetEvent",
        "dataset": ol_dataset("s3://lake", "ref", schema=[("k", "STRING")]),
    }
    assert post_event(client, body)["outputs"] == ["dataset:s3://lake:ref"]
    facet = Facet.objects.get()
    assert (facet.subject_type, facet.subject_id, facet.name) == (5, Dataset.objects.get().pk, "schema")
    body["dataset"]["namespace"] = "registry"
    response = client.post(URL, body, format="json")
    assert response.status_code == 400


def test_lineage_rows_are_append_only(personas):
    post_event(personas["ci_bot"].client(), valid())
    for model in (Dataset, DatasetVersion, Job, Run, Edge, Facet):
        table = model._meta.db_table
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table}")  # noqa: S608 - a table name from the model
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        Edge.objects.update(recorded_at="2020-01-01T00:00:00Z")
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        LineageEvent.objects.update(event_type="FAIL")
    # The recording user may go away; the event stays (recorded_by becomes null).
    LineageEvent.objects.update(recorded_by=None)
