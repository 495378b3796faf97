"""A run's state follows OpenLineage's run cycle, and facets keep their JSON exactly through the bulk insert.

Run cycle (https://openlineage.io/docs/spec/run-cycle): COMPLETE, ABORT and FAIL are terminal; a long-running job
may be started again after one (a START), and RUNNING reports on a run that is running. So a RUNNING after a
terminal event does not make the run running again, a START does, and of events with the same eventTime the
terminal one comes last. The graph (one SQL statement) and the run details (trail, exports) read the same rule.
"""

import json
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from lineage import openlineage, selectors, services
from lineage.choices import FacetRole, NodeType
from lineage.models import Facet, Run
from tests.lineage.conftest import PRODUCER, ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

JOB = ("airflow", "dag.task")


def states(client, run_id) -> tuple[str, str | None, str | None]:
    """The run's state as the graph shows it, and its state and end as its details (trail, exports) show them."""
    response = client.get("/api/v1/lineage/graph", {"nodeId": f"run:{run_id}", "granularity": "version"})
    assert response.status_code == 200, response.json()
    (graph_state,) = [n["state"] for n in response.json()["nodes"] if n["type"] == "run"]
    run = Run.objects.select_related("job").get(run_uuid=run_id)
    details = selectors.run_details([run], None)[run.pk]
    ended = details["endedAt"].isoformat() if details["endedAt"] else None
    return graph_state, details["state"], ended


def send(client, run_id, *events: tuple[str, str]) -> None:
    for event_type, time in events:
        post_event(client, run_event(event_type, run_id, JOB, time=time))


@pytest.mark.parametrize("terminal", ["COMPLETE", "FAIL", "ABORT"])
def test_a_running_event_dated_after_a_terminal_one_does_not_reopen_the_run(personas, terminal):
    ci, run = personas["ci_bot"].client(), uuid.uuid4()
    send(ci, run, ("START", "2026-01-01T10:00:00Z"), (terminal, "2026-01-01T11:00:00Z"))
    send(ci, run, ("RUNNING", "2026-01-01T11:00:05Z"))  # a late progress report, or a producer's clock ahead
    assert states(ci, run) == (terminal, terminal, "2026-01-01T11:00:00+00:00")


def test_a_running_event_sent_before_its_start_still_counts_once_started(personas):
    ci, run = personas["ci_bot"].client(), uuid.uuid4()
    send(ci, run, ("RUNNING", "2026-01-01T10:05:00Z"), ("START", "2026-01-01T10:00:00Z"))
    assert states(ci, run) == ("RUNNING", "RUNNING", None)


def test_of_events_with_the_same_event_time_the_terminal_one_counts_last(personas):
    ci = personas["ci_bot"].client()
    for order in (["COMPLETE", "START"], ["START", "COMPLETE"]):
        run = uuid.uuid4()
        send(ci, run, *[(event_type, "2026-01-01T11:00:00Z") for event_type in order])
        assert states(ci, run) == ("COMPLETE", "COMPLETE", "2026-01-01T11:00:00+00:00"), order


def test_a_start_after_a_terminal_event_starts_the_run_again(personas):
    """A long-running job (a stream) is often started again after it completed or failed, under the same run."""
    ci, run = personas["ci_bot"].client(), uuid.uuid4()
    send(ci, run, ("START", "2026-01-01T10:00:00Z"), ("FAIL", "2026-01-01T11:00:00Z"))
    send(ci, run, ("START", "2026-01-01T12:00:00Z"))
    assert states(ci, run) == ("START", "START", None)
    send(ci, run, ("RUNNING", "2026-01-01T12:30:00Z"))
    assert states(ci, run) == ("RUNNING", "RUNNING", None)
    send(ci, run, ("COMPLETE", "2026-01-01T13:00:00Z"), ("RUNNING", "2026-01-01T13:00:01Z"))
    assert states(ci, run) == ("COMPLETE", "COMPLETE", "2026-01-01T13:00:00+00:00")


def test_a_late_start_dated_before_the_terminal_event_does_not_reopen_the_run(personas):
    ci, run = personas["ci_bot"].client(), uuid.uuid4()
    send(ci, run, ("COMPLETE", "2026-01-01T10:00:00Z"), ("START", "2026-01-01T09:00:00+01:00"))  # 08:00Z
    assert states(ci, run) == ("COMPLETE", "COMPLETE", "2026-01-01T10:00:00+00:00")
    send(ci, run, ("FAIL", "2026-01-01T10:00:01Z"))  # a later terminal event is the state
    assert states(ci, run) == ("FAIL", "FAIL", "2026-01-01T10:00:01+00:00")


def test_the_state_as_of_a_time_follows_the_same_rule(personas):
    ci, run = personas["ci_bot"].client(), uuid.uuid4()
    send(ci, run, ("START", "2026-01-01T10:00:00Z"), ("COMPLETE", "2026-01-01T11:00:00Z"))
    send(ci, run, ("RUNNING", "2026-01-01T11:00:05Z"))
    before_restart = Run.objects.get(run_uuid=run).events.latest("recorded_at").recorded_at
    send(ci, run, ("START", "2026-01-01T12:00:00Z"))
    response = ci.get(
        "/api/v1/lineage/graph",
        {"nodeId": f"run:{run}", "granularity": "version", "as_of": before_restart.isoformat()},
    )
    assert [n["state"] for n in response.json()["nodes"] if n["type"] == "run"] == ["COMPLETE"]
    run_row = Run.objects.select_related("job").get(run_uuid=run)
    assert selectors.run_details([run_row], before_restart)[run_row.pk]["state"] == "COMPLETE"
    assert states(ci, run) == ("START", "START", None)  # now: started again


# --- facets: the values stored are the values sent ----------------------------------------------------------

AWKWARD = {
    "_producer": PRODUCER,
    "_schemaURL": "https://example.com/Awkward.json",
    "quotes": 'a "quoted" word, a \'single\' one, and {"json": "in a string"}',
    "backslashes": 'C:\\path\\to\\file \\" \\\\ \\n (not a newline) \\u0041',
    "control": "tab\there, newline\nthere, carriage\rreturn",
    "unicode": "naïve café, 中文, emoji 🧪, combining e\u0301, RTL שלום, zero width\u200b",
    "braces": "{not, an, array} (a, b) [c] NULL null",
    "nested": {"list": [1, 2.5, -3e-7, True, False, None, [], {}, [[{"deep": ['"', "\\", "{}", ","]}]]]},
    "empty": "",
    "numbers": [0, -1, 1.5, 12345678901234567890],
}


def test_facet_values_round_trip_exactly_through_the_bulk_insert(personas):
    """Several datasets with several facets each, inserted together: on PostgreSQL by COPY, not by Django's bulk
    insert (INSERT ... SELECT * FROM UNNEST(arrays), whose jsonb[] literal psycopg escapes quote by quote in Python,
    which made a large event's ingest take tens of seconds; docs/lineage.md, "Ingest")."""
    run = uuid.uuid4()
    outputs = []
    for i in range(3):
        dataset = ol_dataset("s3://lake", f"odd/{i}", schema=[(f'col "{i}"', "VARCHAR"), ("c\\d", "INT")])
        dataset["facets"]["awkward"] = {**AWKWARD, "index": i}
        outputs.append(dataset)
    event = openlineage.parse(json.loads(json.dumps(run_event("COMPLETE", run, JOB, outputs=outputs))))
    with CaptureQueriesContext(connection) as queries:
        services.event_ingest(actor=personas["ci_bot"].user, event=event)
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "lineage_facet"')]
    assert inserts == []  # COPY, which Django's query log does not show (the tests run on PostgreSQL)
    stored = Facet.objects.filter(
        subject_type=NodeType.DATASET_VERSION, role=FacetRole.FACETS, run__run_uuid=run
    ).values_list("name", "value")
    awkward = sorted((v for name, v in stored if name == "awkward"), key=lambda v: v["index"])
    assert awkward == [{**AWKWARD, "index": i} for i in range(3)]
    schemas = sorted((v for name, v in stored if name == "schema"), key=lambda v: v["fields"][0]["name"])
    assert [s["fields"] for s in schemas] == [
        [{"name": f'col "{i}"', "type": "VARCHAR"}, {"name": "c\\d", "type": "INT"}] for i in range(3)
    ]
