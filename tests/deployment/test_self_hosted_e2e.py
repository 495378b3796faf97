"""Approve → live → rollback on a self-hosted target, with traffic running throughout.

Everything is real: CI registers two ONNX versions with `registry-cli` over HTTP, a reviewer approves
over REST, the web process (gunicorn) enqueues on a private Redis, a Celery worker process materializes
the artifacts, starts KServe v2 model servers and moves HAProxy weights through its runtime API. Client
threads send inference requests through HAProxy the whole time; not one may fail.
"""

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from governance.hosts.demo_model import write_linear_model
from tests import processes
from tests.hosts.test_self_hosted import BIAS, NAME, WEIGHTS, Traffic, versions

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MODEL = f"acme/{NAME}"
TARGET = "prod-local"


def register_with_cli(stack, tmp_path, version: int, model_dir=None) -> dict:
    """What a CI pipeline does: registry-cli hashes, uploads and registers the model directory."""
    model_dir = model_dir or write_linear_model(tmp_path / f"model-v{version}", WEIGHTS, BIAS[version]).parent
    metrics = tmp_path / f"metrics-v{version}.json"
    metrics.write_text(json.dumps({"mse": 0.1 / version}))
    result = subprocess.run(
        [sys.executable, "-m", "registry.cli", "register", "--model", MODEL, "--path", str(model_dir),
         "--metrics", str(metrics)],
        env={**os.environ, "REGISTRY_URL": stack.url, "REGISTRY_TOKEN": stack.tokens["owner"]},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def promote(stack, version: int) -> int:
    with stack.api("owner") as owner, stack.api("reviewer") as reviewer:
        created = owner.post("/promotions/", json={"model": MODEL, "version": version, "target": TARGET})
        assert created.status_code == 201, created.text
        approved = reviewer.post(f"/promotions/{created.json()['id']}/approve", json={"comment": "metrics ok"})
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] == "approved"
        return created.json()["id"]


def releases(stack) -> list[dict]:
    with stack.api("reviewer") as api:
        response = api.get(f"/targets/{TARGET}/releases")
        assert response.status_code == 200, response.text
        body = response.json()
        return body["results"] if isinstance(body, dict) else body


def wait_live(stack, number: int, timeout: float = 90) -> dict:
    def live():
        found = {r["number"]: r for r in releases(stack)}.get(number)
        if found and found["state"] == "failed":
            raise AssertionError(f"release {number} failed: {found['reason']}\n{stack.logs()}")
        return found if found and found["state"] == "live" else None

    try:
        return processes.wait(live, timeout, f"release {number} to go live", interval=0.3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from None


def create_target(stack, config, **extra) -> None:
    with stack.api("owner") as owner:
        assert owner.post("/models/", json={"namespace": "acme", "name": NAME}).status_code == 201
    with stack.api("admin") as admin:
        created = admin.post(
            "/targets/",
            json={
                "name": TARGET,
                "kind": "self_hosted",
                "stage": "production",
                "config": config,
                "policy": {"approvals_required": 1, "approver_groups": ["reviewers"]},
                **extra,
            },
        )
        assert created.status_code == 201, created.text


def test_approve_goes_live_and_rollback_restores_the_previous_version_under_traffic(stack, selfhost_fleet, tmp_path):
    stack, config = stack
    create_target(stack, config)
    v1, v2 = register_with_cli(stack, tmp_path, 1), register_with_cli(stack, tmp_path, 2)
    assert (v1["number"], v2["number"]) == (1, 2)

    # Approve v1: the worker starts its server and gives it all of HAProxy's traffic.
    promote(stack, 1)
    first = wait_live(stack, 1)
    assert first["version"] == 1 and first["endpoint_url"].endswith(f"/v2/models/{NAME}")
    assert versions(selfhost_fleet, 20) == {"1": 20}

    with Traffic(selfhost_fleet, threads=8) as traffic:
        traffic.wait_for(50)
        # Approve v2 while clients are sending requests.
        promote(stack, 2)
        wait_live(stack, 2)
        switched = time.monotonic()
        traffic.wait_for(100)
        assert set(traffic.versions_between(switched)) == {"2"}, traffic.versions_between(switched)

        # Roll back over REST: release 1 serves again, through the same worker.
        before_rollback = datetime.now(UTC)
        with stack.api("admin") as admin:
            rolled = admin.post(f"/targets/{TARGET}/rollback", json={"reason": "p95 latency regression"})
            assert rolled.status_code == 202, rolled.text
        wait_live(stack, 1)
        rolled_back = time.monotonic()
        traffic.wait_for(100)
        assert set(traffic.versions_between(rolled_back)) == {"1"}
    assert traffic.errors == [], traffic.errors[:5]
    assert len(traffic.results) > 250

    states = {r["number"]: r["state"] for r in releases(stack)}
    assert states == {1: "live", 2: "rolled_back"}
    with stack.api("admin") as api:
        served = api.get(f"/targets/{TARGET}/served-at", params={"at": before_rollback.isoformat()})
        assert served.status_code == 200 and served.json()["release"]["number"] == 2
        actions = [
            e["action"]
            for e in (json.loads(line) for line in api.get("/audit/events", params={"format": "ndjson"}).iter_lines())
            if e["action"].startswith("release.")
        ]
    assert actions == [
        "release.created", "release.started", "release.live",  # v1
        "release.created", "release.started", "release.live", "release.superseded",  # v2, which replaced v1
        "release.rolled_back", "release.started", "release.live",  # back to v1
    ]  # fmt: skip
