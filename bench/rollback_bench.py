"""Rollback on the self-hosted target through a real HAProxy, with clients running throughout.

Run by bench/run.py (`--only rollback`), or alone: `.venv/bin/python bench/rollback_bench.py [ROLLBACKS] [THREADS]`.

Starts HAProxy (Debian package, `governance.hosts.haproxy.HAProxyFleet`: 8 server slots, runtime API)
and deploys releases 1 and 2 (two versions of a tiny ONNX model, real model-server processes) with
`governance.hosts.self_hosted.SelfHostedHost`, the adapter the reconciler calls. Then, while THREADS
client threads send KServe v2 inference requests through HAProxy over keep-alive connections, it rolls
back ROLLBACKS times, alternating between the two releases. A rollback is what the reconciler does for a
rollback release: `deploy()` of the previous release's spec (its server is still running, drained), which
moves HAProxy's weights in one runtime API round trip. Timed: from the call until the next 4 requests on
a fresh connection all answer with the rolled-back-to version (i.e. 100 % of new traffic is on it).
Every client request must succeed (any connection error or non-200 answer counts as a failure).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from stats import pct  # bench/stats.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from governance.hosts import self_hosted  # noqa: E402 - no Django in the host modules
from governance.hosts.base import ReleaseSpec  # noqa: E402
from governance.hosts.demo_model import write_linear_model  # noqa: E402
from governance.hosts.haproxy import HAProxyFleet  # noqa: E402

X, WEIGHTS, BIAS = [1.0, 2.0, 3.0], [0.5, 0.25, 1.0], {1: 10.0, 2: 20.0}
NAME = "demo"


def infer(conn: http.client.HTTPConnection, name: str = NAME) -> str:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": X}]})
    conn.request("POST", f"/v2/models/{name}/infer", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
    return json.loads(payload)["model_version"]


class Clients:
    """THREADS client threads sending inference requests through HAProxy on keep-alive connections,
    counting answers and every failure (a connection error or a non-200 answer)."""

    def __init__(self, port: int, threads: int, name: str = NAME):
        self.port, self.name = port, name
        self.ok, self.errors = 0, []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            try:
                infer(conn, self.name)
                with self.lock:
                    self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.errors.append(f"{exc.__class__.__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def finish(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(15)


def run(rollbacks: int = 30, threads: int = 10) -> dict:
    haproxy = haproxy_binary()
    work = Path(tempfile.mkdtemp(prefix="registry-bench-rollback-"))
    fleet = HAProxyFleet(work / "haproxy", executable=haproxy)
    adapter = self_hosted.SelfHostedHost()
    config = fleet.host_config(state_dir=str(work / "state"), ready_timeout=60)
    models = {v: str(write_linear_model(work / f"v{v}", WEIGHTS, BIAS[v]).parent) for v in BIAS}

    def spec(release: int) -> ReleaseSpec:
        return ReleaseSpec(
            target="bench",
            config=config,
            credentials=None,
            release_number=release,
            model="bench/demo",
            version_number=release,
            digest=f"sha256:{release:064x}",
            artifact_dir=models[release],
        )

    clients = Clients(fleet.port, threads)

    fleet.start()
    try:
        t0 = time.perf_counter()
        adapter.deploy(spec(1))
        first_deploy = time.perf_counter() - t0
        t0 = time.perf_counter()
        adapter.deploy(spec(2))  # a new release: start the server, wait ready, HAProxy check, weights
        switch = time.perf_counter() - t0
        clients.start()
        time.sleep(1.0)
        timings = []
        probe = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=10)
        for i in range(rollbacks):
            release = 1 if i % 2 == 0 else 2
            began = time.perf_counter()
            adapter.deploy(spec(release))
            probe.close()
            answers = {infer(probe) for _ in range(4)}
            timings.append(time.perf_counter() - began)
            if answers != {str(release)}:
                raise RuntimeError(f"rollback to release {release}: next answers came from {answers}")
            time.sleep(0.2)
        time.sleep(0.5)
        clients.finish()
        split = {s.release_number: s.traffic_percent for s in adapter.status(config, None).serving}
        return {
            "rollbacks": rollbacks,
            "client_threads": threads,
            "p50_ms": pct(timings, 50) * 1000,
            "p95_ms": pct(timings, 95) * 1000,
            "max_ms": max(timings) * 1000,
            "client_requests_ok": clients.ok,
            "client_requests_failed": len(clients.errors),
            "failures": clients.errors[:5],
            "final_split": split,
            "first_deploy_s": first_deploy,
            "switch_to_new_release_s": switch,
        }
    finally:
        clients.stop.set()
        with contextlib.suppress(Exception):
            adapter.shutdown(config)
        for proc in list(self_hosted._CHILDREN.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        fleet.stop()
        shutil.rmtree(work, ignore_errors=True)


# --- through the product: rollback request over the API -> Celery worker -> adapter -> HAProxy ----


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if not found:
        raise RuntimeError("haproxy is not installed: apt-get install -y haproxy socat")
    return found


def product(port: int, rollbacks: int = 30, threads: int = 10) -> dict:
    """Needs the Django environment of the bench database, gunicorn on `port` and a Celery worker on the
    same broker (bench/run.py starts both). Sets up target `rollback` (self-hosted, this HAProxy), model
    bench/rollback with two registry-stored versions, promotes and approves each (the worker deploys
    them), then times `POST /api/v1/targets/rollback/rollback` until 100 % of new requests answer with the
    previous version, ROLLBACKS times (after 2 unmeasured warm-up rollbacks), with THREADS clients sending
    inference requests throughout."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from accounts import roles
    from accounts import services as accounts
    from governance import services as gov
    from governance.models import DeploymentTarget, PromotionRequest
    from registry import services as reg

    haproxy = haproxy_binary()
    work = Path(tempfile.mkdtemp(prefix="registry-bench-rollback-"))
    fleet = HAProxyFleet(work / "haproxy", executable=haproxy)
    config = fleet.host_config(state_dir=str(work / "state"), ready_timeout=60)
    roles.ensure_roles()
    User = get_user_model()
    admin, _ = User.objects.get_or_create(
        username="bench-rollback-admin", defaults={"is_superuser": True, "is_staff": True}
    )
    owner, _ = User.objects.get_or_create(username="bench-rollback-owner")
    reviewer, _ = User.objects.get_or_create(username="bench-rollback-reviewer")
    reviewer.groups.add(Group.objects.get(name=roles.REVIEWERS))
    token = accounts.token_create(actor="bench", user=admin, name="rollback", scopes="read,deployments:write").plaintext
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def api(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    name = "rollback"
    clients = Clients(fleet.port, threads, name)

    def wait_live(target, number: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            release = target.releases.filter(number=number).first()
            if release is not None and release.state == "live":
                return
            if release is not None and release.state == "failed":
                raise RuntimeError(f"release {number} failed: {release.reason}")
            time.sleep(0.05)
        raise RuntimeError(f"release {number} not live within {timeout} s")

    fleet.start()
    try:
        target = DeploymentTarget.objects.filter(name="rollback").first() or gov.target_create(
            actor=admin,
            name="rollback",
            kind="self_hosted",
            stage="production",
            config=config,
            policy={"approvals_required": 1, "approver_groups": [roles.REVIEWERS], "requester_can_approve": False},
        )
        model = reg.model_create(actor=owner, namespace="bench", name=name)
        for v in (1, 2):
            path = write_linear_model(work / f"v{v}", WEIGHTS, BIAS[v])
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            reg.blob_upload(model=model, chunks=[data], sha256=sha, size=len(data))
            content = reg.VersionContent(manifest={"files": [{"path": path.name, "size": len(data), "sha256": sha}]})
            version, _ = reg.version_register(actor=owner, model=model, content=content)
            request = gov.promotion_request(actor=owner, version=version, target=target)
            gov.promotion_approve(actor=reviewer, request_id=request.pk)
            assert PromotionRequest.objects.get(pk=request.pk).state == "approved"
            wait_live(target, v)
        clients.start()
        time.sleep(1.0)
        timings, api_ms, serving = [], [], "2"
        warmup = 2  # the first rollbacks after start-up pay for cold imports and caches: reported apart
        for _ in range(rollbacks + warmup):
            expect = "1" if serving == "2" else "2"
            began = time.perf_counter()
            # Named: a rollback without one never returns to a release rolled back from (docs: README).
            to = {"release": 1 if expect == "1" else 2, "reason": "bench rollback"}
            status, body = api("POST", f"/api/v1/targets/{target.name}/rollback", to)
            api_ms.append((time.perf_counter() - began) * 1000)
            if status != 202:
                raise RuntimeError(f"rollback -> {status}: {body}")
            deadline, streak = time.monotonic() + 30, 0
            while streak < 4:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"traffic not on version {expect} within 30 s of the rollback request")
                probe = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=10)
                streak = streak + 1 if infer(probe, name) == expect else 0
                probe.close()
            timings.append(time.perf_counter() - began)
            wait_live(target, body["number"])
            serving = expect
            time.sleep(0.2)
        time.sleep(0.5)
        clients.finish()
        warm, timings, api_ms = timings[:warmup], timings[warmup:], api_ms[warmup:]
        return {
            "path": "POST /api/v1/targets/rollback/rollback -> Celery worker -> SelfHostedHost -> HAProxy",
            "rollbacks": rollbacks,
            "client_threads": threads,
            "p50_ms": pct(timings, 50) * 1000,
            "p95_ms": pct(timings, 95) * 1000,
            "max_ms": max(timings) * 1000,
            "warmup_ms": [round(t * 1000, 1) for t in warm],
            "all_ms": [round(t * 1000, 1) for t in timings],
            "api_request_p50_ms": pct(api_ms, 50),
            "client_requests_ok": clients.ok,
            "client_requests_failed": len(clients.errors),
            "failures": clients.errors[:5],
        }
    finally:
        clients.stop.set()
        with contextlib.suppress(Exception):
            self_hosted.SelfHostedHost().shutdown(config)
        fleet.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["product"]:
        print(json.dumps(product(*[int(a) for a in sys.argv[2:]])))
    else:
        print(json.dumps(run(*[int(a) for a in sys.argv[1:]])))
