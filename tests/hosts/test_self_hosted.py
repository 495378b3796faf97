"""Self-hosted host adapter against a real HAProxy (Debian package) and real model-server processes.

Every test starts its own HAProxy (fresh ports, 8 disabled slots) and its own state directory, and
stops every process it started, also when it fails. HAProxy missing is a failure, not a skip: CI
installs it with `apt-get install -y haproxy socat`.

Traffic tests run client threads with keep-alive connections through HAProxy while the adapter
moves traffic, and count every failed request (connection error or non-200 answer).
"""

import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from governance.hosts import HOSTS, self_hosted
from governance.hosts.base import HostError, ReleaseSpec
from governance.hosts.demo_model import write_linear_model
from governance.hosts.haproxy import HAProxyFleet, RuntimeAPI
from governance.hosts.self_hosted import SelfHostedHost, State, process_alive

ROOT = Path(__file__).resolve().parents[2]
MODEL = "acme/demo"
NAME = "demo"
X = [1.0, 2.0, 3.0]
WEIGHTS = [0.5, 0.25, 1.0]
BIAS = {1: 10.0, 2: 20.0, 3: 30.0}  # model version -> bias: the answer tells the version apart too


# --- fixtures ----------------------------------------------------------------------------------


def plant_worker_secrets(monkeypatch, **more: str) -> dict[str, str]:
    """A worker's environment as production's holds it: the registry's secrets and another target's token. What a
    process a host adapter starts must not get."""
    planted = {
        "SECRET_KEY": "planted-secret-key-0123456789",
        "DATABASE_URL": "postgres://registry:planted-db-password@db.internal/registry",
        "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-0123456789",
        "REPLICATE_API_TOKEN": "r8_planted_token_of_another_target",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        **more,
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    return planted


@pytest.fixture(scope="session")
def selfhost_models(tmp_path_factory) -> dict[int, str]:
    """Three versions of a tiny ONNX model y = x·w + b, differing in b."""
    root = tmp_path_factory.mktemp("selfhost-models")
    return {v: str(write_linear_model(root / f"v{v}", WEIGHTS, BIAS[v]).parent) for v in BIAS}


@pytest.fixture
def selfhost(selfhost_fleet, selfhost_models, tmp_path):
    """An adapter, a target config for the fleet, and a spec builder; stops every model server after."""
    config = selfhost_fleet.host_config(state_dir=str(tmp_path / "state"), ready_timeout=30)
    adapter = SelfHostedHost()
    children_before = set(self_hosted._CHILDREN)
    env = SelfHost(adapter, config, selfhost_fleet, selfhost_models)
    try:
        yield env
    finally:
        with contextlib.suppress(Exception):
            adapter.shutdown(config)
        for pid, proc in list(self_hosted._CHILDREN.items()):  # whatever escaped the state file
            if pid not in children_before and proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for pid in env.extra_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class SelfHost:
    def __init__(self, adapter, config, fleet, models):
        self.adapter = adapter
        self.config = config
        self.fleet = fleet
        self.models = models
        self.extra_pids: list[int] = []

    def spec(self, release: int, version: int, **config) -> ReleaseSpec:
        return ReleaseSpec(
            target="prod",
            config={**self.config, **config},
            credentials=None,
            release_number=release,
            model=MODEL,
            version_number=version,
            digest=f"sha256:{version:064x}",
            artifact_dir=self.models[version],
        )

    def deploy(self, release: int, version: int, **config):
        return self.adapter.deploy(self.spec(release, version, **config))

    def status(self):
        return self.adapter.status(self.config, None)

    def records(self):
        return State(Path(self.config["state_dir"])).load()

    def split(self) -> dict[int, int]:
        return {s.release_number: s.traffic_percent for s in self.status().serving}


def infer(conn: http.client.HTTPConnection) -> str:
    """One KServe v2 inference through HAProxy; returns the model version that answered."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": X}]})
    conn.request("POST", f"/v2/models/{NAME}/infer", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
    answer = json.loads(payload)
    version = answer["model_version"]
    expected = sum(x * w for x, w in zip(X, WEIGHTS, strict=True)) + BIAS[int(version)]
    assert answer["model_name"] == NAME
    assert answer["outputs"][0]["data"] == pytest.approx([expected])
    return version


def versions(fleet: HAProxyFleet, n: int) -> Counter:
    conn = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=10)
    try:
        return Counter(infer(conn) for _ in range(n))
    finally:
        conn.close()


class Traffic:
    """Client threads sending inference requests through HAProxy over keep-alive connections."""

    def __init__(self, fleet: HAProxyFleet, threads: int = 20):
        self.fleet = fleet
        self.results: list[tuple[float, str]] = []  # (time the request was sent, version that answered)
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.fleet.port, timeout=10)
        while not self.stop_event.is_set():
            sent = time.monotonic()
            try:
                version = infer(conn)
                with self.lock:
                    self.results.append((sent, version))
            except Exception as exc:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.errors.append(f"{time.monotonic():.3f} {exc.__class__.__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.fleet.port, timeout=10)
        conn.close()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(15)

    def wait_for(self, count: int, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        start = len(self.results)
        while len(self.results) - start < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def versions_between(self, start: float, end: float = float("inf")) -> Counter:
        with self.lock:
            return Counter(v for t, v in self.results if start <= t < end)


# --- deploy, switch, rollback ------------------------------------------------------------------


def test_deploy_serves_release_through_haproxy(selfhost):
    assert selfhost.status().state == "absent"

    result = selfhost.deploy(1, 1)

    assert result.ready
    assert result.host_release_id == "prod/r1@000000000000"  # target, release number, digest prefix
    assert result.endpoint_url == f"{selfhost.fleet.url}/v2/models/{NAME}"
    conn = http.client.HTTPConnection("127.0.0.1", selfhost.fleet.port, timeout=5)
    conn.request("GET", f"/v2/models/{NAME}")
    response = conn.getresponse()
    metadata = json.loads(response.read())
    assert response.status == 200
    assert metadata["name"] == NAME and metadata["versions"] == ["1"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}]
    conn.request("GET", "/v2/health/ready")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read()) == {"ready": True}
    assert versions(selfhost.fleet, 20) == Counter({"1": 20})
    status = selfhost.status()
    assert status.state == "ready"
    assert [(s.release_number, s.host_release_id, s.traffic_percent) for s in status.serving] == [
        (1, result.host_release_id, 100)
    ]
    assert status.endpoint_url == result.endpoint_url


def test_switch_and_rollback_under_traffic_drop_nothing(selfhost):
    selfhost.deploy(1, 1)
    first_pid = selfhost.records()[1].pid

    with Traffic(selfhost.fleet, threads=20) as traffic:
        traffic.wait_for(200)
        deploy_began = time.monotonic()
        selfhost.deploy(2, 2)
        switched = time.monotonic()
        traffic.wait_for(500)
        assert traffic.versions_between(0, deploy_began)["1"] > 0
        after_switch = traffic.versions_between(switched + 0.001)
        assert after_switch["2"] > 0 and after_switch["1"] == 0, after_switch

        began = time.monotonic()
        selfhost.deploy(1, 1)  # rollback: release 1's server is still running, drained
        rolled_back = time.monotonic()
        traffic.wait_for(500)
        after_rollback = traffic.versions_between(rolled_back + 0.001)
        assert after_rollback["1"] > 0 and after_rollback["2"] == 0, after_rollback

    assert traffic.errors == [], traffic.errors[:5]
    assert len(traffic.results) > 1000
    print(f"\nswitch to a new release (start + ready + HAProxy check + weights): {switched - deploy_began:.3f}s")
    print(f"rollback to a running release: {rolled_back - began:.3f}s; {len(traffic.results)} requests, 0 errors")
    assert rolled_back - began < 1.0
    assert selfhost.records()[1].pid == first_pid  # the fast path did not restart anything
    assert selfhost.split() == {1: 100}
    assert versions(selfhost.fleet, 20) == Counter({"1": 20})


def test_rollback_takes_well_under_a_second(selfhost):
    """Request to 100% of traffic on the previous release, warm servers: p50/p95 over 30 rollbacks."""
    selfhost.deploy(1, 1)
    selfhost.deploy(2, 2)
    conn = http.client.HTTPConnection("127.0.0.1", selfhost.fleet.port, timeout=5)
    timings = []
    for i in range(30):
        release = 1 if i % 2 == 0 else 2
        began = time.perf_counter()
        selfhost.deploy(release, release)
        # the very next requests all answer with the rolled-back-to version
        assert {infer(conn) for _ in range(4)} == {str(release)}
        timings.append(time.perf_counter() - began)
    timings.sort()
    p50, p95 = statistics.median(timings), timings[int(0.95 * len(timings)) - 1]
    print(
        f"\nrollback (deploy of a running earlier release + 4 answers from it): p50 {p50 * 1000:.1f} ms, "
        f"p95 {p95 * 1000:.1f} ms, max {timings[-1] * 1000:.1f} ms"
    )
    assert p95 < 1.0


def test_canary_split_follows_weights(selfhost):
    selfhost.deploy(1, 1)
    selfhost.deploy(2, 2)
    selfhost.adapter.set_traffic(selfhost.config, None, {1: 90, 2: 10})

    seen = versions(selfhost.fleet, 200)

    assert 10 <= seen["2"] <= 35 and seen["1"] + seen["2"] == 200, seen
    assert selfhost.split() == {1: 90, 2: 10}
    selfhost.adapter.set_traffic(selfhost.config, None, {1: 50, 2: 50})
    seen = versions(selfhost.fleet, 200)
    assert 70 <= seen["2"] <= 130, seen
    selfhost.adapter.set_traffic(selfhost.config, None, {2: 100})
    assert versions(selfhost.fleet, 50) == Counter({"2": 50})
    assert selfhost.split() == {2: 100}


def test_set_traffic_refuses_bad_splits_and_unknown_releases(selfhost):
    selfhost.deploy(1, 1)
    for split in ({1: 90}, {1: 60, 2: 60}, {}, {1: -10, 2: 110}, {1: 99.5, 2: 0.5}):
        with pytest.raises(HostError) as caught:
            selfhost.adapter.set_traffic(selfhost.config, None, split)
        assert not caught.value.retryable
    with pytest.raises(HostError, match="release 7 is not running"):
        selfhost.adapter.set_traffic(selfhost.config, None, {1: 90, 7: 10})
    assert selfhost.split() == {1: 100}


# --- idempotency and recovery ------------------------------------------------------------------


def server_pids(model_dirs) -> set[int]:
    """Live reference-server processes serving one of `model_dirs`, found in /proc."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            args = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0")]
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, NotADirectoryError):
            continue
        if "governance.hosts.model_server" in args and stat[0] not in "ZX" and set(args) & set(model_dirs):
            pids.add(int(entry.name))
    return pids


def test_deploy_is_idempotent(selfhost):
    assert server_pids(selfhost.models.values()) == set()
    first = selfhost.deploy(1, 1)
    second = selfhost.deploy(1, 1)

    assert second.host_release_id == first.host_release_id
    assert list(selfhost.records()) == [1]
    assert server_pids(selfhost.models.values()) == {selfhost.records()[1].pid}  # one process
    assert selfhost.split() == {1: 100}

    with pytest.raises(HostError, match="already runs digest"):
        selfhost.adapter.deploy(
            ReleaseSpec(
                target="prod",
                config=selfhost.config,
                credentials=None,
                release_number=1,
                model=MODEL,
                version_number=1,
                digest="sha256:" + "f" * 64,
                artifact_dir=selfhost.models[1],
            )
        )


def test_a_new_adapter_instance_reports_what_serves(selfhost):
    selfhost.deploy(1, 1)
    selfhost.deploy(2, 2)
    selfhost.adapter.set_traffic(selfhost.config, None, {1: 70, 2: 30})
    ids = {n: r.host_release_id for n, r in selfhost.records().items()}

    status = SelfHostedHost().status(selfhost.config, None)  # nothing kept in memory

    assert status.state == "ready"
    assert {(s.release_number, s.host_release_id, s.traffic_percent) for s in status.serving} == {
        (1, ids[1], 70),
        (2, ids[2], 30),
    }


WORKER = """
import sys, json
sys.path.insert(0, {root!r})
from governance.hosts.base import ReleaseSpec
from governance.hosts.self_hosted import SelfHostedHost
SelfHostedHost().deploy(ReleaseSpec(**json.loads(sys.argv[1])))
"""


def test_worker_killed_mid_deploy_leaves_a_recoverable_state(selfhost):
    """SIGKILL the worker once release 2's server is on disk: status still true, redeploy converges."""
    selfhost.deploy(1, 1)
    spec = selfhost.spec(2, 2)
    payload = {
        k: getattr(spec, k)
        for k in (
            "target",
            "config",
            "credentials",
            "release_number",
            "model",
            "version_number",
            "digest",
            "artifact_dir",
        )
    }
    worker = subprocess.Popen([sys.executable, "-c", WORKER.format(root=str(ROOT)), json.dumps(payload)])
    try:
        deadline = time.monotonic() + 20
        while 2 not in selfhost.records() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert 2 in selfhost.records(), "the worker never recorded release 2"
        worker.send_signal(signal.SIGKILL)
        worker.wait(5)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    orphan = selfhost.records()[2]
    selfhost.extra_pids.append(orphan.pid)  # started by the killed worker, not by this process

    status = SelfHostedHost().status(selfhost.config, None)
    assert status.state == "ready" and {s.release_number for s in status.serving} == {1}
    assert versions(selfhost.fleet, 10) == Counter({"1": 10})

    result = SelfHostedHost().deploy(spec)  # the reconciler's retry, in another worker

    assert selfhost.records()[2].pid == orphan.pid  # the orphaned server was adopted, not duplicated
    assert result.host_release_id == orphan.host_release_id
    assert selfhost.split() == {2: 100}
    assert versions(selfhost.fleet, 10) == Counter({"2": 10})


def test_a_dead_server_is_restarted_on_deploy(selfhost):
    selfhost.deploy(1, 1)
    selfhost.deploy(2, 2)
    dead = selfhost.records()[1]
    os.kill(dead.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_alive(dead) and time.monotonic() < deadline:
        time.sleep(0.01)

    selfhost.deploy(1, 1)  # rollback to a release whose process died: restarted, then switched

    assert selfhost.records()[1].pid != dead.pid
    assert selfhost.split() == {1: 100}
    assert versions(selfhost.fleet, 10) == Counter({"1": 10})


def test_haproxy_restart_loses_weights_and_deploy_restores_them(selfhost):
    selfhost.deploy(1, 1)
    selfhost.fleet.stop()
    selfhost.fleet.start()  # same ports; runtime changes are gone, slots are disabled again
    assert selfhost.status().state == "absent"

    began = time.monotonic()
    selfhost.deploy(1, 1)

    assert time.monotonic() - began < 2.0  # the server was still running: only the slot is set again
    assert selfhost.split() == {1: 100}
    assert versions(selfhost.fleet, 10) == Counter({"1": 10})


# --- failures ------------------------------------------------------------------------------------


def test_a_server_that_never_becomes_ready_fails_and_shifts_nothing(selfhost):
    selfhost.deploy(1, 1)
    servers_before = RuntimeAPI(selfhost.fleet.admin_address).servers_state("models")
    # accepts connections on its port, never answers
    listen_only = "import socket, time; s = socket.socket(); s.bind(('{host}', {port})); s.listen(); time.sleep(99)"
    never_ready = f'{{python}} -c "{listen_only}"'

    began = time.monotonic()
    with pytest.raises(HostError, match="not ready after 2s") as caught:
        selfhost.deploy(2, 2, command=never_ready, ready_timeout=2)

    assert caught.value.retryable
    assert time.monotonic() - began < 6
    assert RuntimeAPI(selfhost.fleet.admin_address).servers_state("models") == servers_before
    assert list(selfhost.records()) == [1]  # its process was stopped and forgotten
    assert not [p for p in self_hosted._CHILDREN.values() if p.poll() is None and p.pid != selfhost.records()[1].pid]
    assert selfhost.split() == {1: 100}
    assert versions(selfhost.fleet, 10) == Counter({"1": 10})


def test_a_server_that_exits_reports_its_log(selfhost, tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    spec = selfhost.spec(1, 1)

    with pytest.raises(HostError, match="no .onnx file") as caught:
        selfhost.adapter.deploy(ReleaseSpec(**{**spec.__dict__, "artifact_dir": str(empty)}))

    assert not caught.value.retryable
    assert selfhost.status().state == "absent"
    assert selfhost.records() == {}


def test_missing_artifact_dir_is_refused(selfhost, tmp_path):
    spec = selfhost.spec(1, 1)
    with pytest.raises(HostError, match="artifact directory") as caught:
        selfhost.adapter.deploy(ReleaseSpec(**{**spec.__dict__, "artifact_dir": str(tmp_path / "nope")}))
    assert not caught.value.retryable


def test_unreachable_haproxy_is_retryable(selfhost):
    config = {**selfhost.config, "haproxy_admin": "127.0.0.1:1"}
    with pytest.raises(HostError, match="unreachable") as caught:
        selfhost.adapter.status(config, None)
    assert caught.value.retryable


# --- retention: old releases are stopped only after their traffic moved ---------------------------


def test_releases_beyond_keep_previous_are_retired_without_dropping_requests(selfhost):
    api = RuntimeAPI(selfhost.fleet.admin_address)
    selfhost.deploy(1, 1, keep_previous=0)
    old = selfhost.records()[1]

    with Traffic(selfhost.fleet, threads=20) as traffic:
        traffic.wait_for(200)
        selfhost.deploy(2, 2, keep_previous=0)
        traffic.wait_for(300)

    assert traffic.errors == [], traffic.errors[:5]
    assert not process_alive(old)
    assert list(selfhost.records()) == [2]
    slot = {s.name: s for s in api.servers_state("models")}[old.slot]
    assert slot.maint and slot.weight == 0
    assert selfhost.split() == {2: 100}


def test_keep_previous_keeps_the_last_releases_warm(selfhost):
    for n in (1, 2, 3):
        selfhost.deploy(n, n, keep_previous=1)
    records = selfhost.records()
    assert sorted(records) == [2, 3]  # release 1 retired; 2 kept, drained, for a fast rollback
    api = RuntimeAPI(selfhost.fleet.admin_address)
    slots = {s.name: s for s in api.servers_state("models")}
    assert slots[records[2].slot].drain and slots[records[2].slot].weight == 0
    assert slots[records[3].slot].receives_traffic


def test_rollback_as_a_new_release_number_reuses_the_running_server(selfhost):
    """Same digest under a new release number: the running server is relabelled, not duplicated."""
    selfhost.deploy(1, 1)
    selfhost.deploy(2, 2)
    pid = selfhost.records()[1].pid

    selfhost.deploy(3, 1)

    records = selfhost.records()
    assert sorted(records) == [2, 3] and records[3].pid == pid
    assert selfhost.split() == {3: 100}
    assert versions(selfhost.fleet, 10) == Counter({"1": 10})


def test_a_canary_of_the_serving_version_starts_its_own_server(selfhost):
    """The serving version promoted again as a canary: release 1 keeps its server and 90%; release 2 (same digest)
    gets a server of its own instead of taking release 1's, which would leave the split naming a release gone."""
    selfhost.deploy(1, 1)
    pid = selfhost.records()[1].pid

    result = selfhost.adapter.deploy(replace(selfhost.spec(2, 1), traffic=((1, 90), (2, 10))))

    records = selfhost.records()
    assert sorted(records) == [1, 2] and records[1].pid == pid and records[2].pid != pid
    assert all(process_alive(record) for record in records.values())
    assert result.host_release_id == records[2].host_release_id == "prod/r2@" + "0" * 12
    assert selfhost.split() == {1: 90, 2: 10}
    assert versions(selfhost.fleet, 20) == Counter({"1": 20})  # both servers answer as version 1


def test_the_serving_version_as_a_new_release_keeps_the_serving_server(selfhost):
    """A whole deploy of the serving version under a new number starts a server: the serving one stays, drained,
    as release 1 (the rollback destination), not relabelled away under the traffic it has."""
    selfhost.deploy(1, 1)
    pid = selfhost.records()[1].pid

    selfhost.deploy(2, 1)

    records = selfhost.records()
    assert sorted(records) == [1, 2] and records[1].pid == pid and records[2].pid != pid
    assert process_alive(records[1]) and selfhost.split() == {2: 100}


def test_model_servers_get_none_of_the_workers_secrets(selfhost, monkeypatch):
    """A model server runs the target's command (third-party code): it gets an allow-listed environment, not the
    worker's, whose secrets (and every target's `env:` credential) /proc/<pid>/environ would show."""
    planted = plant_worker_secrets(monkeypatch)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")

    selfhost.deploy(1, 1)

    raw = Path(f"/proc/{selfhost.records()[1].pid}/environ").read_bytes().decode()
    environ = dict(entry.split("=", 1) for entry in raw.split("\0") if entry)
    assert not set(planted) & set(environ)
    assert not [value for value in planted.values() if value in raw]
    assert environ["PATH"] == os.environ["PATH"] and environ["LC_ALL"] == "C.UTF-8"
    assert str(ROOT) in environ["PYTHONPATH"].split(os.pathsep)  # the reference server's package
    assert versions(selfhost.fleet, 2) == Counter({"1": 2})


def test_one_runtime_api_under_any_spelling_is_one_resource(tmp_path):
    """Two targets must not share a backend: the key is the runtime API's address, not how the config spells it."""

    def backend(admin: str) -> str:
        keys = self_hosted.resources({"haproxy_admin": admin, "state_dir": "/srv/state"}, "")
        return next(key for key in keys if key.startswith("HAProxy backend"))

    loopback = backend("127.0.0.1:9999")
    assert {backend(a) for a in ("ipv4@127.0.0.1:9999", "localhost:9999", "LocalHost:9999", "tcp@127.0.0.1:9999")} == {
        loopback
    }
    assert backend("[::1]:9999") == backend("ipv6@::1:9999") == backend("ipv6@localhost:9999") != loopback
    assert len({loopback, backend("127.0.0.1:9998"), backend("10.0.0.5:9999")}) == 3
    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    assert backend(f"unix@{tmp_path}/link/admin.sock") == backend(f"{tmp_path}/run/./admin.sock")

    state_dirs = [self_hosted.resources({"state_dir": d}, "") for d in ("/srv/a/state/", "/srv/b/../a/state")]
    assert state_dirs[0] == state_dirs[1]


def test_runtime_api_addresses_in_haproxys_spellings():
    import socket

    from governance.hosts.haproxy import parse_address

    assert (
        parse_address("ipv4@127.0.0.1:9999") == parse_address("127.0.0.1:9999") == (socket.AF_INET, ("127.0.0.1", 9999))
    )
    assert parse_address("ipv6@::1:9999") == parse_address("[::1]:9999") == (socket.AF_INET6, ("::1", 9999))
    assert parse_address("unix@/run/haproxy.sock") == (socket.AF_UNIX, "/run/haproxy.sock")
    for bad in ("ipv4@::1:9999", "abns@admin:1", "ipv6@:9999"):
        with pytest.raises(ValueError):
            parse_address(bad)


# --- configuration, registry, protocol -----------------------------------------------------------


def test_validate_config_is_strict():
    from core.errors import InvalidInput

    assert self_hosted.validate_config({}) == {}
    ok = {
        "haproxy_admin": "ipv4@127.0.0.1:9999",
        "backend": "models",
        "listen": "127.0.0.1:8080",
        "host": "127.0.0.1",
        "command": "/opt/serve --dir {model_dir} --port {port} --name {name} --v {version}",
        "state_dir": "/var/lib/registry/self-hosted",
        "model_name": "fraud",
        "ready_timeout": 30,
        "drain_timeout": 10,
        "keep_previous": 1,
    }
    assert self_hosted.validate_config(ok) == ok
    for bad in (
        {"nope": 1},
        {"api_token": "x"},
        {"command": "serve --port {prot}"},
        {"command": "serve --dir {model_dir}"},
        {"command": "serve 'unterminated {port}"},
        {"haproxy_admin": "nowhere"},
        {"backend": "a b"},
        {"state_dir": "relative/dir"},
        {"keep_previous": 9},
        {"ready_timeout": 0},
        {"ready_timeout": "30"},
        {"keep_previous": True},
    ):
        with pytest.raises(InvalidInput):
            self_hosted.validate_config(bad)


def test_registry_hands_out_the_adapter():
    adapter = HOSTS["self_hosted"].adapter()
    assert isinstance(adapter, SelfHostedHost)
    assert adapter.capabilities == {"deploy", "rollback", "traffic_split", "health"}


def test_host_modules_import_no_django():
    code = (
        "import sys; import governance.hosts.self_hosted, governance.hosts.haproxy, "
        "governance.hosts.model_server, governance.hosts.demo_model; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'django'], 'django imported'"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def test_reference_server_speaks_open_inference_protocol_v2(selfhost_models):
    from governance.hosts.haproxy import free_port

    port = free_port()
    args = ["--model-dir", selfhost_models[2], "--name", NAME, "--port", str(port), "--version-label", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "governance.hosts.model_server", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def call(method, path, body=None):
        conn.request(method, path, json.dumps(body) if body is not None else None)
        response = conn.getresponse()
        return response.status, json.loads(response.read())

    try:
        deadline = time.monotonic() + 20
        while not self_hosted.probe_ready("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert call("GET", "/v2/health/live") == (200, {"live": True})
        assert call("GET", "/v2")[1]["name"] == "registry-model-server"
        assert call("GET", f"/v2/models/{NAME}/versions/2")[1]["versions"] == ["2"]
        assert call("GET", f"/v2/models/{NAME}/ready") == (200, {"name": NAME, "ready": True})
        request = {"id": "r-1", "inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32", "data": X + X}]}
        status, answer = call("POST", f"/v2/models/{NAME}/versions/2/infer", request)
        expected = sum(x * w for x, w in zip(X, WEIGHTS, strict=True)) + BIAS[2]
        assert status == 200 and answer["id"] == "r-1" and answer["model_version"] == "2"
        assert answer["outputs"][0]["shape"] == [2, 1] and answer["outputs"][0]["datatype"] == "FP32"
        assert answer["outputs"][0]["data"] == pytest.approx([expected, expected])
        assert call("GET", "/v2/models/other")[0] == 404
        assert call("GET", f"/v2/models/{NAME}/versions/1")[0] == 404
        for bad in (
            {},
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": X}]},
            {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]},
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": X}]},
            {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": X[:2]}]},
        ):
            status, answer = call("POST", f"/v2/models/{NAME}/infer", bad)
            assert status == 400 and answer["error"], bad
        conn.request("POST", f"/v2/models/{NAME}/infer", b"not json")
        response = conn.getresponse()
        assert response.status == 400 and "error" in json.loads(response.read())

        proc.send_signal(signal.SIGTERM)  # graceful: exits 0 once the keep-alive connection is closed
        assert proc.wait(15) == 0
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
