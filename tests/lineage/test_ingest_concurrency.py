"""Two OpenLineage emitters sending, at the same moment, events that name the same rows in another order: both
are recorded. An insert waits for another transaction's uncommitted row with the same unique key, so inserts in
each event's own order deadlocked and one of the two clients got a 500.

Left to the scheduler, the two inserts overlap only now and then; each test lines them up instead: a third
transaction holds one of the rows, the first event waits for it, then the second event waits too, and the third
rolls back."""

import threading
import time
import uuid

import pytest
import requests
from django.db import connection, transaction
from django.utils import timezone

from lineage.choices import EdgeKind, NodeType
from lineage.models import Dataset, DatasetVersion, Edge, Job, LineageEvent
from tests.lineage.conftest import PRODUCER, post_event, run_event

ON_POSTGRESQL = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's row locks")
LIVE = pytest.mark.django_db(transaction=True)  # the live server's threads must see committed rows

RETRIED = "lineage event ingest aborted"  # lineage.services.event_ingest's warning when it runs an event again
NAMES = [f"t{i:02d}" for i in range(10)]
MIDDLE = NAMES[5]


def ds(name: str, version: str | None = None) -> dict:
    facets = {"version": {"datasetVersion": version}} if version is not None else {}
    return {"namespace": "s3://b", "name": name, "facets": facets}


def waiting() -> int:
    """How many backends of this database wait for another one's lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND cardinality(pg_blocking_pids(pid)) > 0"
        )
        return cursor.fetchone()[0]


def wait_for(count: int) -> None:
    deadline = time.monotonic() + 20
    while waiting() < count:
        assert time.monotonic() < deadline, f"{count} transactions should be waiting"
        time.sleep(0.02)


def lined_up(live_server, token: str, bodies: list[dict], hold) -> list[requests.Response]:
    """POST bodies[0], once its transaction waits for the row hold() inserts in another transaction POST
    bodies[1], once that one waits too roll hold()'s transaction back: the answers."""
    holding, release, answers = threading.Event(), threading.Event(), [None, None]

    def holder():
        try:
            with transaction.atomic():
                hold()
                holding.set()
                release.wait(30)
                transaction.set_rollback(True)
        finally:
            connection.close()

    def send(i):
        answers[i] = requests.post(
            f"{live_server.url}/api/v1/lineage",
            json=bodies[i],
            headers={"Authorization": f"Bearer {token}", "Connection": "close"},  # no pooled socket outlives the test
            timeout=60,
        )

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    try:
        assert holding.wait(20)
        for i in range(2):
            threads.append(threading.Thread(target=send, args=(i,)))
            threads[-1].start()
            wait_for(i + 1)
    finally:
        release.set()
        for t in threads:
            t.join(60)
    return answers


@ON_POSTGRESQL
@LIVE
def test_two_events_naming_the_same_new_datasets_in_another_order_are_both_recorded(live_server, personas, caplog):
    bodies = [
        run_event("COMPLETE", uuid.uuid4(), ("p", job), inputs=[ds(n) for n in order])
        for job, order in (("a", NAMES), ("b", NAMES[::-1]))
    ]

    def hold():
        Dataset.objects.create(namespace="s3://b", name=MIDDLE, recorded_at=timezone.now())

    answers = lined_up(live_server, personas["ci_bot"].token, bodies, hold)
    assert [a.status_code for a in answers] == [201, 201], [a.text[:300] for a in answers]
    assert Dataset.objects.filter(name__in=NAMES).count() == len(NAMES)
    assert DatasetVersion.objects.filter(dataset__name__in=NAMES, version="").count() == len(NAMES)
    assert RETRIED not in caplog.text, "sorted inserts should not deadlock at all"


@ON_POSTGRESQL
@LIVE
def test_two_job_events_declaring_the_same_edges_in_another_order_are_both_recorded(live_server, personas, caplog):
    """A JobEvent's declared dataset -> job edges are the same rows whoever sends them."""
    now = timezone.now()
    job = Job.objects.create(namespace="p", name="declared", recorded_at=now)
    datasets = {n: Dataset.objects.create(namespace="s3://b", name=n, recorded_at=now) for n in NAMES}
    bodies = [
        {
            "eventTime": "2026-01-01T00:00:00Z",
            "producer": PRODUCER,
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent",
            "job": {"namespace": "p", "name": "declared", "facets": {}},
            "inputs": [ds(n) for n in order],
            "outputs": [],
        }
        for order in (NAMES, NAMES[::-1])
    ]

    def hold():
        Edge.objects.create(
            src_type=NodeType.DATASET,
            src_id=datasets[MIDDLE].pk,
            dst_type=NodeType.JOB,
            dst_id=job.pk,
            kind=EdgeKind.INPUT,
            recorded_at=timezone.now(),
        )

    answers = lined_up(live_server, personas["ci_bot"].token, bodies, hold)
    assert [a.status_code for a in answers] == [201, 201], [a.text[:300] for a in answers]
    assert Edge.objects.filter(dst_type=NodeType.JOB, dst_id=job.pk).count() == len(NAMES)
    assert RETRIED not in caplog.text, "sorted inserts should not deadlock at all"


@ON_POSTGRESQL
@LIVE
def test_an_event_aborted_as_a_deadlock_victim_is_recorded_again(live_server, personas, caplog):
    """Two new versions of one dataset, named in opposite orders, are inserted in the events' orders (the order of
    one dataset's versions decides which one is its latest), so two events can still deadlock: the victim's whole
    transaction runs again and reads the versions the other one committed. B inserts b and waits for the held w,
    A inserts a and waits for b; w rolls back, B inserts w and waits for a."""
    dataset = Dataset.objects.create(namespace="s3://b", name="d", recorded_at=timezone.now())
    bodies = [
        run_event("COMPLETE", uuid.uuid4(), ("p", "b"), inputs=[ds("d", "b"), ds("d", "w"), ds("d", "a")]),
        run_event("COMPLETE", uuid.uuid4(), ("p", "a"), inputs=[ds("d", "a"), ds("d", "b")]),
    ]

    def hold():
        now = timezone.now()
        DatasetVersion.objects.create(dataset=dataset, version="w", created_at=now, recorded_at=now)

    answers = lined_up(live_server, personas["ci_bot"].token, bodies, hold)
    assert [a.status_code for a in answers] == [201, 201], [a.text[:300] for a in answers]
    assert sorted(DatasetVersion.objects.filter(dataset=dataset).values_list("version", flat=True)) == ["a", "b", "w"]
    assert LineageEvent.objects.count() == 2  # the aborted attempt left no event behind
    assert "attempt 1 of 3" in caplog.text, "the two events should have deadlocked, and one run again"


@pytest.mark.django_db
def test_the_versions_of_one_dataset_an_event_creates_keep_its_order(personas):
    """New versions are inserted by dataset, not by version: of one dataset's versions created by one event, the
    last one named is the latest (same recorded_at, the higher id), the one a later run reads without naming one."""
    owner = personas["owner"].client()
    post_event(owner, run_event("COMPLETE", uuid.uuid4(), ("p", "x"), inputs=[ds("x")]))  # x before y
    written = run_event("COMPLETE", uuid.uuid4(), ("p", "w"), inputs=[ds("y", "b"), ds("x", "v2"), ds("x", "v1")])
    post_event(owner, written)
    read = post_event(owner, run_event("COMPLETE", uuid.uuid4(), ("p", "r"), inputs=[ds("x"), ds("y")]))
    assert read["inputs"] == ["dataset:s3://b:x#v1", "dataset:s3://b:y#b"]
