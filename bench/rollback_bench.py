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
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from governance.hosts import self_hosted  # noqa: E402 - no Django in the host modules
from governance.hosts.base import ReleaseSpec  # noqa: E402
from governance.hosts.demo_model import write_linear_model  # noqa: E402
from governance.hosts.haproxy import HAProxyFleet  # noqa: E402

X, WEIGHTS, BIAS = [1.0, 2.0, 3.0], [0.5, 0.25, 1.0], {1: 10.0, 2: 20.0}
NAME = "demo"


def _pct(values: list[float], p: float) -> float:
    data = sorted(values)
    k = (len(data) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def infer(conn: http.client.HTTPConnection) -> str:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": X}]})
    conn.request("POST", f"/v2/models/{NAME}/infer", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
    return json.loads(payload)["model_version"]


def run(rollbacks: int = 30, threads: int = 10) -> dict:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if not haproxy:
        raise RuntimeError("haproxy is not installed: apt-get install -y haproxy socat")
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

    ok, errors = [0], []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=10)
        while not stop.is_set():
            try:
                infer(conn)
                with lock:
                    ok[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                with lock:
                    errors.append(f"{exc.__class__.__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=10)
        conn.close()

    fleet.start()
    try:
        t0 = time.perf_counter()
        adapter.deploy(spec(1))
        first_deploy = time.perf_counter() - t0
        t0 = time.perf_counter()
        adapter.deploy(spec(2))  # a new release: start the server, wait ready, HAProxy check, weights
        switch = time.perf_counter() - t0
        workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
        for w in workers:
            w.start()
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
        stop.set()
        for w in workers:
            w.join(15)
        split = {s.release_number: s.traffic_percent for s in adapter.status(config, None).serving}
        return {
            "rollbacks": rollbacks,
            "client_threads": threads,
            "p50_ms": _pct(timings, 50) * 1000,
            "p95_ms": _pct(timings, 95) * 1000,
            "max_ms": max(timings) * 1000,
            "client_requests_ok": ok[0],
            "client_requests_failed": len(errors),
            "failures": errors[:5],
            "final_split": split,
            "first_deploy_s": first_deploy,
            "switch_to_new_release_s": switch,
        }
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            adapter.shutdown(config)
        for proc in list(self_hosted._CHILDREN.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        fleet.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    print(json.dumps(run(*args)))
