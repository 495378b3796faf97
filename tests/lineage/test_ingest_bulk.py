"""Ingest costs a fixed number of statements however many datasets an event names, and records exactly what
recording the datasets one by one did (the expected rows below were taken from that per-dataset path; since then
a `version` facet names the dataset version and is no facet row, and `recorded.edges` counts the edges created)."""

import json
import threading
import time
import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from lineage import nodes, openlineage, services
from lineage.choices import NodeType
from lineage.models import Dataset, DatasetVersion, Edge, Facet, Job, LineageEvent, Run, VersionRunLink
from registry.models import ModelVersion
from tests.lineage.conftest import PRODUCER, digest_of, post_event, run_event

pytestmark = pytest.mark.django_db
# SQLite: Django splits a bulk insert at 999 parameters, has_perm asks once per model, and a transaction takes
# the write lock when it begins, so no other one inserts meanwhile.
ON_POSTGRESQL = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's statements and locks")

RUNS = {uuid.UUID(int=i): label for i, label in enumerate(("W", "R", "W2", "R2"), 1)}
W, R, W2, R2 = RUNS
ENV = {"environmentVariables": [{"name": "DB_PASSWORD", "value": "pw"}, {"name": "RANK", "value": "0"}]}


def ds(name: str, version: str | None = None, *, schema: str | None = None, **more) -> dict:
    """A dataset in namespace s3://b with short facets: a version, a one-field schema, any others as given."""
    facets = {"version": {"datasetVersion": version}} if version is not None else {}
    if schema is not None:
        facets["schema"] = {"fields": [{"name": schema}]}
    role = {key: more.pop(key) for key in ("inputFacets", "outputFacets") if key in more}
    return {"namespace": "s3://b", "name": name, "facets": {**facets, **more}, **role}


O_DIGEST = digest_of("o")


def label(text: str) -> str:
    for run_uuid, name in RUNS.items():
        text = text.replace(str(run_uuid), name)
    return text.replace(O_DIGEST, "sha256:o")


SAME = ("payload_sha256", "producer", "kind")  # parse()'s, or in subject_repr


def snapshot() -> dict:
    """Every lineage row and ingest audit event by natural keys (runs by label), in id order, with the ordinal
    of the event that recorded it in place of times and ids."""
    events = list(LineageEvent.objects.order_by("id").values_list("pk", "recorded_at"))
    ordinal = {pk: i for i, (pk, _) in enumerate(events)}
    at = {recorded_at: i for i, (_, recorded_at) in enumerate(events)}
    versions = {v.pk: v for v in DatasetVersion.objects.select_related("dataset")}
    node = {
        NodeType.DATASET_VERSION: {
            pk: nodes.dataset_id(v.dataset.namespace, v.dataset.name, v.version) for pk, v in versions.items()
        },
        NodeType.DATASET: {d.pk: nodes.dataset_id(d.namespace, d.name) for d in Dataset.objects.all()},
        NodeType.RUN: {r.pk: nodes.run_id(r.run_uuid) for r in Run.objects.all()},
        NodeType.JOB: {j.pk: nodes.job_id(j.namespace, j.name) for j in Job.objects.all()},
        NodeType.MODEL: {
            v.pk: nodes.model_id(v.model.namespace, v.model.name, v.number)
            for v in ModelVersion.objects.select_related("model")
        },
    }
    result = {
        "datasets": [(d.name, at[d.recorded_at]) for d in Dataset.objects.order_by("id")],
        "versions": [
            (node[NodeType.DATASET_VERSION][v.pk], v.digest, v.created_at.date().isoformat(), at[v.recorded_at])
            for v in sorted(versions.values(), key=lambda v: v.pk)
        ],
        "edges": [
            (node[e.src_type][e.src_id], node[e.dst_type][e.dst_id], e.kind, ordinal[e.event_id], at[e.recorded_at])
            for e in Edge.objects.order_by("id")
        ],
        "facets": [
            (node[f.subject_type][f.subject_id], f.role, f.name, f.value, RUNS.get(f.run and f.run.run_uuid))
            + (ordinal[f.event_id], at[f.recorded_at])
            for f in Facet.objects.select_related("run").order_by("id")
        ],
        "links": [
            (node[NodeType.MODEL][k.version_id], RUNS[k.run_uuid], k.linked, k.source, ordinal[k.event_id])
            for k in VersionRunLink.objects.order_by("id")
        ],
        "audit": [
            (a.actor_username, a.subject_repr, {k: v for k, v in json.loads(a.after).items() if k not in SAME})
            for a in AuditEvent.objects.filter(action="lineage.event_ingested").order_by("seq")
        ],
    }
    return json.loads(label(json.dumps(result)))


def test_a_mixed_event_records_what_the_per_dataset_path_recorded(personas, make_version):
    """Versionless inputs (read before, the latest not produced by the run, made earlier in the same event, the
    initial one), a dataset read and written, datasets named twice, model versions in and out, facets unchanged
    and changed, a retry, JobEvent and DatasetEvent lineage: the rows and audit events the per-dataset path made."""
    make_version("base")
    make_version("tuned")
    owner = personas["owner"].client()
    post_event(owner, run_event("COMPLETE", W, ("p", "write"), outputs=[ds("t")]))
    dataset_event = {
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/DatasetEvent",
        "dataset": ds("d", "v1", schema="x"),
    }
    post_event(owner, dataset_event)
    big = run_event(
        "START",
        R,
        ("p", "train"),
        inputs=[
            ds("t", schema="x"),  # t#run:W, the latest version R did not produce
            ds("fresh", schema="x", environmentVariables=ENV, inputFacets={"environmentVariables": ENV}),  # fresh#
            ds("e", "v2", schema="x"),  # e#v2 made now...
            ds("e"),  # ...and so read by this versionless input of e
            ds("d"),  # d#v1
            ds("fresh", schema="y"),  # fresh# again, with another schema
            {"namespace": "registry", "name": "acme/base:1"},
        ],
        outputs=[
            ds("t", outputFacets={"outputStatistics": {"rowCount": 5}}),  # t#run:R
            ds("o", O_DIGEST),
            ds("e", "v2", schema="x"),  # read and written: its schema is there already
            {"namespace": "registry", "name": "acme/tuned:1"},
            {"namespace": "registry", "name": "acme/tuned:1"},  # linked once
        ],
    )
    big["job"]["facets"] = {"jobType": {"processingType": "BATCH", "integration": "X", "jobType": "TRAINING"}}
    post_event(owner, big)
    retry = owner.post("/api/v1/lineage", big, format="json")  # a client's retry: the same event, nothing new
    assert (retry.status_code, retry.json()["event"]) == (200, LineageEvent.objects.latest("id").pk)
    # The same facts in another event (another producer): nothing new but the event and fresh#'s two schemas.
    post_event(owner, {**big, "producer": PRODUCER + "/again"})
    post_event(owner, run_event("COMPLETE", W2, ("p", "write"), outputs=[ds("t")]))
    again = run_event(
        "COMPLETE",
        R,
        ("p", "train"),
        inputs=[ds("t"), ds("t2")],  # still t#run:W, not W2's newer version
        outputs=[ds("t", outputFacets={"outputStatistics": {"rowCount": 7}})],
        time="2026-01-02T00:00:00Z",
    )
    post_event(owner, again)
    job_event = {
        "eventTime": "2026-01-03T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent",
        "job": {"namespace": "p", "name": "declared", "facets": {}},
        "inputs": [ds("t", schema="x"), ds("d", "v1", schema="x")],
        "outputs": [ds("new", "v9"), ds("t", schema="x")],
    }
    post_event(owner, job_event)
    post_event(owner, run_event("COMPLETE", R2, ("p", "other"), inputs=[ds("t"), ds("e")]))  # t#run:W2
    assert snapshot() == EXPECTED


def statements(client, body: dict, status: int = 201) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.post("/api/v1/lineage", body, format="json")
    assert response.status_code == status, response.json()
    return len(queries)


@ON_POSTGRESQL
def test_statements_do_not_grow_with_the_datasets_of_an_event(personas, make_version):
    """A RunEvent naming 10 or 200 datasets (and 1 or 3 model versions) costs the same number of statements,
    sent the first time and again: identities, versions, edges, facets, links and permissions are read and
    written in bulk, not once per dataset."""
    owner = personas["owner"].client()
    post_event(owner, run_event("START", uuid.uuid4(), ("p", "warm-up")))  # the token's last use, once a minute
    spent = {}
    for n, models in ((10, 1), (200, 3)):
        tag = f"n{n}"
        bases = [make_version(f"{tag}-base{i}") for i in range(models)]
        tuned = [make_version(f"{tag}-tuned{i}") for i in range(models)]
        writer, reader = uuid.uuid4(), uuid.uuid4()
        written = [ds(f"{tag}/w{i}", schema="x") for i in range(n)]
        body = run_event(
            "COMPLETE",
            reader,
            ("p", f"{tag}-read"),
            inputs=[ds(f"{tag}/w{i}", schema="x") for i in range(n)]  # the writer's versions, by resolution
            + [ds(f"{tag}/v{i}", f"v{i}", schema="x") for i in range(n)]
            + [{"namespace": "registry", "name": f"acme/{v.model.name}:1"} for v in bases],
            outputs=[ds(f"{tag}/o{i}", outputFacets={"outputStatistics": {"rowCount": i}}) for i in range(n)]
            + [{"namespace": "registry", "name": f"acme/{v.model.name}:1"} for v in tuned],
        )
        spent[n] = (
            statements(owner, run_event("COMPLETE", writer, ("p", f"{tag}-write"), outputs=written)),
            statements(owner, body),
            statements(owner, body, 200),  # a retry: the stored event's answer
        )
        run = Run.objects.get(run_uuid=reader)
        assert Edge.objects.filter(dst_type=NodeType.RUN, dst_id=run.pk).count() == 2 * n + models
        assert Edge.objects.filter(src_type=NodeType.RUN, src_id=run.pk).count() == n
        assert Facet.objects.filter(run=run).count() == 3 * n  # two schemas each input (a version is no facet), stats
        assert VersionRunLink.objects.filter(run_uuid=reader).count() == models
    assert spent[10] == spent[200], f"statements (writer, first, retry) for 10 and 200 datasets: {spent}"


@ON_POSTGRESQL
@pytest.mark.django_db(transaction=True)
def test_a_dataset_another_transaction_creates_meanwhile_is_read_not_created_twice(personas):
    """The datasets of an event are inserted in one statement. When another event's transaction inserts one of
    them after this one read it as missing, the insert waits for that transaction and, once it commits, reads
    the row instead (as get_or_create did): the event is recorded, one row, and its audit event counts only what
    this event created."""
    holding, release, outcome = threading.Event(), threading.Event(), {}

    def hold():
        try:
            with transaction.atomic():
                Dataset.objects.create(namespace="s3://b", name="raced", recorded_at=timezone.now())
                outcome["holder"] = connection.connection.info.backend_pid
                holding.set()
                release.wait(20)
        finally:
            connection.close()

    def ingest():
        try:
            event = openlineage.parse(
                run_event("COMPLETE", uuid.uuid4(), ("p", "race"), outputs=[ds("raced"), ds("new")])
            )
            outcome["result"] = services.event_ingest(actor=personas["ci_bot"].user, event=event)
        except Exception as exc:  # noqa: BLE001 - the outcome is the assertion
            outcome["result"] = exc
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(20)
    worker = threading.Thread(target=ingest)
    worker.start()
    deadline, waited = time.monotonic() + 20, False
    while not waited and worker.is_alive() and time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [outcome["holder"]]
            )
            waited = cursor.fetchone()[0] > 0
        time.sleep(0.02)
    release.set()
    holder.join(20)
    worker.join(20)
    result = outcome["result"]
    assert isinstance(result, services.IngestResult), result
    assert waited, "the event's insert should have waited for the other transaction's row"
    assert result.outputs == [f"dataset:s3://b:{name}#run:{result.run[4:]}" for name in ("raced", "new")]
    assert Dataset.objects.filter(name="raced").count() == 1
    assert result.created["datasets"] == 1
    after = json.loads(AuditEvent.objects.get(action="lineage.event_ingested").after)
    assert after["recorded"]["datasets"] == 1


EXPECTED = {
    "datasets": [["t", 0], ["d", 1], ["e", 2], ["fresh", 2], ["o", 2], ["t2", 5], ["new", 6]],
    "versions": [
        ["dataset:s3://b:t#run:W", "", "2026-01-01", 0],
        ["dataset:s3://b:d#v1", "", "2026-01-01", 1],
        ["dataset:s3://b:t#run:R", "", "2026-01-01", 2],
        ["dataset:s3://b:e#v2", "", "2026-01-01", 2],
        ["dataset:s3://b:fresh#", "", "2026-01-01", 2],
        ["dataset:s3://b:o#sha256:o", "sha256:o", "2026-01-01", 2],
        ["dataset:s3://b:t#run:W2", "", "2026-01-01", 4],
        ["dataset:s3://b:t2#", "", "2026-01-02", 5],
        ["dataset:s3://b:new#v9", "", "2026-01-03", 6],
    ],
    "edges": [
        ["run:W", "dataset:s3://b:t#run:W", 2, 0, 0],
        ["dataset:s3://b:t#run:W", "run:R", 1, 2, 2],
        ["dataset:s3://b:fresh#", "run:R", 1, 2, 2],
        ["dataset:s3://b:e#v2", "run:R", 1, 2, 2],
        ["dataset:s3://b:d#v1", "run:R", 1, 2, 2],
        ["model:acme/base:1", "run:R", 1, 2, 2],
        ["run:R", "dataset:s3://b:t#run:R", 2, 2, 2],
        ["run:R", "dataset:s3://b:o#sha256:o", 2, 2, 2],
        ["run:R", "dataset:s3://b:e#v2", 2, 2, 2],
        ["run:W2", "dataset:s3://b:t#run:W2", 2, 4, 4],
        ["dataset:s3://b:t2#", "run:R", 1, 5, 5],
        ["dataset:s3://b:t", "job:p:declared", 1, 6, 6],
        ["dataset:s3://b:d", "job:p:declared", 1, 6, 6],
        ["job:p:declared", "dataset:s3://b:t", 2, 6, 6],
        ["job:p:declared", "dataset:s3://b:new", 2, 6, 6],
        ["dataset:s3://b:t#run:W2", "run:R2", 1, 7, 7],
        ["dataset:s3://b:e#v2", "run:R2", 1, 7, 7],
    ],
    "facets": [
        ["dataset:s3://b:d#v1", 0, "schema", {"fields": [{"name": "x"}]}, None, 1, 1],
        [
            "job:p:train",
            0,
            "jobType",
            {"jobType": "TRAINING", "integration": "X", "processingType": "BATCH"},
            "R",
            2,
            2,
        ],
        ["dataset:s3://b:t#run:W", 0, "schema", {"fields": [{"name": "x"}]}, "R", 2, 2],
        ["dataset:s3://b:fresh#", 0, "schema", {"fields": [{"name": "x"}]}, "R", 2, 2],
        [
            "dataset:s3://b:fresh#",
            0,
            "environmentVariables",
            {"environmentVariables": [{"name": "DB_PASSWORD", "value": "[redacted]"}, {"name": "RANK", "value": "0"}]},
            "R",
            2,
            2,
        ],
        [
            "dataset:s3://b:fresh#",
            1,
            "environmentVariables",
            {"environmentVariables": [{"name": "DB_PASSWORD", "value": "[redacted]"}, {"name": "RANK", "value": "0"}]},
            "R",
            2,
            2,
        ],
        ["dataset:s3://b:e#v2", 0, "schema", {"fields": [{"name": "x"}]}, "R", 2, 2],
        ["dataset:s3://b:fresh#", 0, "schema", {"fields": [{"name": "y"}]}, "R", 2, 2],
        ["dataset:s3://b:t#run:R", 2, "outputStatistics", {"rowCount": 5}, "R", 2, 2],
        ["dataset:s3://b:fresh#", 0, "schema", {"fields": [{"name": "x"}]}, "R", 3, 3],
        ["dataset:s3://b:fresh#", 0, "schema", {"fields": [{"name": "y"}]}, "R", 3, 3],
        ["dataset:s3://b:t#run:R", 2, "outputStatistics", {"rowCount": 7}, "R", 5, 5],
        ["dataset:s3://b:t", 0, "schema", {"fields": [{"name": "x"}]}, None, 6, 6],
    ],
    "links": [["model:acme/tuned:1", "R", True, "openlineage", 2]],
    "audit": [
        [
            "owner",
            "RunEvent COMPLETE run:W",
            {
                "event_time": "2026-01-01T00:00:00Z",
                "event_type": "COMPLETE",
                "inputs": [],
                "job": "job:p:write",
                "outputs": ["dataset:s3://b:t#run:W"],
                "recorded": {
                    "dataset_versions": 1,
                    "datasets": 1,
                    "edges": 1,
                    "facets": 0,
                    "jobs": 1,
                    "links": 0,
                    "runs": 1,
                },
                "run": "run:W",
            },
        ],
        [
            "owner",
            "DatasetEvent  dataset:s3://b:d#v1",
            {
                "event_time": "2026-01-01T00:00:00Z",
                "event_type": "",
                "inputs": [],
                "job": None,
                "outputs": ["dataset:s3://b:d#v1"],
                "recorded": {
                    "dataset_versions": 1,
                    "datasets": 1,
                    "edges": 0,
                    "facets": 1,
                    "jobs": 0,
                    "links": 0,
                    "runs": 0,
                },
                "run": None,
            },
        ],
        [
            "owner",
            "RunEvent START run:R",
            {
                "event_time": "2026-01-01T00:00:00Z",
                "event_type": "START",
                "inputs": [
                    "dataset:s3://b:t#run:W",
                    "dataset:s3://b:fresh#",
                    "dataset:s3://b:e#v2",
                    "dataset:s3://b:e#v2",
                    "dataset:s3://b:d#v1",
                    "dataset:s3://b:fresh#",
                    "model:acme/base:1",
                ],
                "job": "job:p:train",
                "outputs": [
                    "dataset:s3://b:t#run:R",
                    "dataset:s3://b:o#sha256:o",
                    "dataset:s3://b:e#v2",
                    "model:acme/tuned:1",
                    "model:acme/tuned:1",
                ],
                "recorded": {
                    "dataset_versions": 4,
                    "datasets": 3,
                    "edges": 8,
                    "facets": 8,
                    "jobs": 1,
                    "links": 1,
                    "runs": 1,
                },
                "run": "run:R",
            },
        ],
        [
            "owner",
            "RunEvent START run:R",
            {
                "event_time": "2026-01-01T00:00:00Z",
                "event_type": "START",
                "inputs": [
                    "dataset:s3://b:t#run:W",
                    "dataset:s3://b:fresh#",
                    "dataset:s3://b:e#v2",
                    "dataset:s3://b:e#v2",
                    "dataset:s3://b:d#v1",
                    "dataset:s3://b:fresh#",
                    "model:acme/base:1",
                ],
                "job": "job:p:train",
                "outputs": [
                    "dataset:s3://b:t#run:R",
                    "dataset:s3://b:o#sha256:o",
                    "dataset:s3://b:e#v2",
                    "model:acme/tuned:1",
                    "model:acme/tuned:1",
                ],
                "recorded": {
                    "dataset_versions": 0,
                    "datasets": 0,
                    "edges": 0,
                    "facets": 2,
                    "jobs": 0,
                    "links": 0,
                    "runs": 0,
                },
                "run": "run:R",
            },
        ],
        [
            "owner",
            "RunEvent COMPLETE run:W2",
            {
                "event_time": "2026-01-01T00:00:00Z",
                "event_type": "COMPLETE",
                "inputs": [],
                "job": "job:p:write",
                "outputs": ["dataset:s3://b:t#run:W2"],
                "recorded": {
                    "dataset_versions": 1,
                    "datasets": 0,
                    "edges": 1,
                    "facets": 0,
                    "jobs": 0,
                    "links": 0,
                    "runs": 1,
                },
                "run": "run:W2",
            },
        ],
        [
            "owner",
            "RunEvent COMPLETE run:R",
            {
                "event_time": "2026-01-02T00:00:00Z",
                "event_type": "COMPLETE",
                "inputs": ["dataset:s3://b:t#run:W", "dataset:s3://b:t2#"],
                "job": "job:p:train",
                "outputs": ["dataset:s3://b:t#run:R"],
                "recorded": {
                    "dataset_versions": 1,
                    "datasets": 1,
                    "edges": 1,
                    "facets": 1,
                    "jobs": 0,
                    "links": 0,
                    "runs": 0,
                },
                "run": "run:R",
            },
        ],
        [
            "owner",
            "JobEvent  job:p:declared",
            {
                "event_time": "2026-01-03T00:00:00Z",
                "event_type": "",
                "inputs": ["dataset:s3://b:t", "dataset:s3://b:d"],
                "job": "job:p:declared",
                "outputs": ["dataset:s3://b:new", "dataset:s3://b:t"],
                "recorded": {
                    "dataset_versions": 1,
                    "datasets": 1,
                    "edges": 4,
                    "facets": 1,
                    "jobs": 1,
                    "links": 0,
                    "runs": 0,
                },
                "run": None,
            },
        ],
        [
            "owner",
            "RunEvent COMPLETE run:R2",
            {
                "event_time": "2026-01-01T00:00:00Z",
                "event_type": "COMPLETE",
                "inputs": ["dataset:s3://b:t#run:W2", "dataset:s3://b:e#v2"],
                "job": "job:p:other",
                "outputs": [],
                "recorded": {
                    "dataset_versions": 0,
                    "datasets": 0,
                    "edges": 2,
                    "facets": 0,
                    "jobs": 1,
                    "links": 0,
                    "runs": 1,
                },
                "run": "run:R2",
            },
        ],
    ],
}
