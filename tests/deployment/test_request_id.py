"""A worker's audit events name the request that queued its task (issue 7: the same request id on
logs and audit events). Real gunicorn, Redis and Celery worker; no beat, so every reconcile is the
one the API request queued. The target's host is unreachable, so the worker fails the release fast."""

import json

import pytest

from tests import processes
from tests.deployment.conftest import make_stack, stop_stack

pytestmark = pytest.mark.django_db(transaction=True)

APPROVE_ID = "approve-7f3c2a9e"


@pytest.fixture
def quiet_stack(users, tmp_path):
    stack = make_stack(users, tmp_path, beat=False, RECONCILE_MAX_RETRIES="0")
    try:
        yield stack
    finally:
        stop_stack(stack)


def test_worker_audit_events_carry_the_request_id_of_the_api_call_that_queued_them(quiet_stack):
    stack = quiet_stack
    with stack.api("owner") as owner, stack.api("admin") as admin, stack.api("reviewer") as reviewer:
        assert owner.post("/models/", json={"namespace": "acme", "name": "rid"}).status_code == 201
        version = owner.post(
            "/models/acme/rid/versions/",
            json={
                "artifact_uri": "s3://bucket/rid/1/",
                "manifest": {"files": [{"path": "model.onnx", "size": 1, "sha256": "ab" * 32}]},
            },
        )
        assert version.status_code == 201, version.text
        target = admin.post(
            "/targets/",
            json={
                "name": "nowhere",
                "kind": "self_hosted",
                "stage": "staging",
                "config": {"haproxy_admin": f"127.0.0.1:{processes.free_port()}"},  # nothing listens there
                "policy": {"approvals_required": 1, "approver_groups": ["reviewers"]},
            },
        )
        assert target.status_code == 201, target.text
        promotion = owner.post("/promotions/", json={"model": "acme/rid", "version": 1, "target": "nowhere"})
        assert promotion.status_code == 201, promotion.text
        approved = reviewer.post(
            f"/promotions/{promotion.json()['id']}/approve", json={}, headers={"X-Request-ID": APPROVE_ID}
        )
        assert approved.status_code == 200 and approved.headers["X-Request-ID"] == APPROVE_ID

        def failed():
            body = admin.get("/targets/nowhere/releases").json()
            rows = body["results"] if isinstance(body, dict) else body
            return rows if rows and rows[0]["state"] == "failed" else None

        processes.wait(failed, 60, "the worker to fail the release", interval=0.3)
        events = [json.loads(line) for line in admin.get("/audit/events", params={"format": "ndjson"}).iter_lines()]
    by_action = {e["action"]: e for e in events if e["subject_type"] == "governance.release"}
    assert by_action["release.created"]["request_id"] == APPROVE_ID  # written by the web request
    assert by_action["release.failed"]["request_id"] == APPROVE_ID, stack.logs()  # written by the worker
    assert by_action["release.failed"]["actor_username"].startswith("system:")
    worker_log = (stack.workdir / "worker.log").read_text()
    assert APPROVE_ID in worker_log  # the task's log lines name it too
