"""Claims on a run are serialized: two teams naming one fresh run at the same time cannot both get through.

A run that produced a version of a model speaks for that model, so naming a run as a producer (a link, a
registration's run_id, a model version as a RunEvent's output) is refused once it produced another team's
version. Each claim read what the run had produced without seeing the other's uncommitted claim, so two at once
both passed and each team locked the other out of the run. Team A's claim is held open in its transaction (its
request runs inside an outer transaction.atomic() that waits before committing); team B's claim, on its own
connection, must wait for the run's claim lock, then see A's claim and get the 403."""

import threading
import time
import uuid

import pytest
from django.db import connection, connections, transaction

from lineage.models import VersionRunLink
from registry.models import ModelVersion
from tests.lineage.conftest import run_event
from tests.registry.helpers import register_body, s3_manifest

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite serializes write transactions"),
]


def create_model(client, namespace: str) -> None:
    response = client.post("/api/v1/models/", {"namespace": namespace, "name": "m"}, format="json")
    assert response.status_code == 201, response.json()
    registered = client.post(f"/api/v1/models/{namespace}/m/versions/", register_body(s3_manifest(b"1")), format="json")
    assert registered.status_code == 201, registered.json()


def claim(client, how: str, namespace: str, run: uuid.UUID) -> int:
    """Name `run` as the producer of a version of namespace/m, `how`: a link, a RunEvent output, a registration."""
    if how == "link":
        body = {"nodeId": f"model:{namespace}/m:1", "runId": str(run), "linked": True, "reason": "race"}
        return client.post("/api/v1/lineage/links", body, format="json").status_code
    if how == "event":
        output = {"namespace": "registry", "name": f"{namespace}/m:1"}
        body = run_event("COMPLETE", run, (namespace, "train"), outputs=[output])
        return client.post("/api/v1/lineage", body, format="json").status_code
    body = register_body(s3_manifest(b"2"), run_id=str(run))
    return client.post(f"/api/v1/models/{namespace}/m/versions/", body, format="json").status_code


def claimants(run: uuid.UUID) -> set[str]:
    """The namespaces of the models the run produced a version of (registrations and links)."""
    registered = ModelVersion.objects.filter(run_id=run).values_list("model__namespace", flat=True)
    linked = VersionRunLink.objects.filter(run_uuid=run, linked=True).values_list("version__model__namespace")
    return set(registered) | {namespace for (namespace,) in linked}


def lock_wait(pid: int) -> str | None:
    """What the backend `pid` waits for, when it waits for a lock ('advisory', 'transactionid', ...)."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row[1] if row and row[0] == "Lock" else None


@pytest.mark.parametrize(
    ("first", "second", "same_team"),
    [
        ("link", "event", False),
        ("event", "registration", False),
        ("registration", "link", False),
        # one team's claims are serialized too: the link sees the event's and has nothing to record (200)
        ("event", "link", True),
    ],
)
def test_two_claims_on_a_fresh_run_at_once(personas, first, second, same_team):
    run = uuid.uuid4()
    team_a = personas["owner"].client()
    team_b = team_a if same_team else personas["ci_bot"].client()  # ci_bot: another team
    create_model(team_a, "acme")
    second_namespace = "acme" if same_team else "teamb"
    if not same_team:
        create_model(team_b, "teamb")

    holding, release, outcome, pid = threading.Event(), threading.Event(), {}, []

    def claim_and_hold():
        try:
            with transaction.atomic():  # A's claim is made, not committed
                outcome["first"] = claim(team_a, first, "acme", run)
                holding.set()
                release.wait(20)
        except Exception as exc:  # noqa: BLE001 - the outcome is the assertion
            outcome["first"] = repr(exc)
        finally:
            holding.set()
            connection.close()

    def claim_meanwhile():
        try:
            pid.append(connection.cursor().connection.info.backend_pid)
            outcome["second"] = claim(team_b, second, second_namespace, run)
        except Exception as exc:  # noqa: BLE001
            outcome["second"] = repr(exc)
        finally:
            connection.close()

    holder = threading.Thread(target=claim_and_hold)
    holder.start()
    assert holding.wait(20)
    waiter = threading.Thread(target=claim_meanwhile)
    waiter.start()
    waited_for, deadline = None, time.monotonic() + 10
    while waited_for is None and waiter.is_alive() and time.monotonic() < deadline:
        waited_for = lock_wait(pid[0]) if pid else None
        time.sleep(0.02)
    release.set()
    holder.join(20)
    waiter.join(20)

    assert outcome["first"] == 201, outcome
    assert outcome["second"] == (200 if same_team else 403), (outcome, claimants(run))
    assert claimants(run) == {"acme"}  # team B's model is not linked to team A's run
    assert waited_for == "advisory", "the second claim should wait for the run's claim lock"
