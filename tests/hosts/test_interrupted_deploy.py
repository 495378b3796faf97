"""A self-hosted deploy interrupted after its new model server is ready but before traffic moves to it (HAProxy's check
never passes, HAProxy stops answering, the split is refused) undoes what it brought up: the server's slot back in
maint, its process stopped, its record dropped, so a retry starts cleanly and nothing idles at weight 0. A server that
has served traffic is never touched. Real HAProxy, real model-server processes (the reference server, and
tests/hosts/unchecked_server.py where HAProxy must not see a server healthy). The same interruption by a real soft
time limit on a prefork worker: tests/celery_limits/test_interrupted_self_hosted_deploy.py."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from governance.hosts.base import HostError
from governance.hosts.self_hosted import proc_start_time, process_alive
from tests.hosts.test_self_hosted import ROOT, WORKER, selfhost, selfhost_models, server_pids, versions  # noqa: F401

SCRIPT = Path(__file__).with_name("unchecked_server.py")


def unchecked(pid_dir: Path, stop_haproxy: int | None = None) -> str:
    """The command template of tests/hosts/unchecked_server.py."""
    return f"{{python}} {SCRIPT} {{port}} {{release}} {pid_dir}" + (f" {stop_haproxy}" if stop_haproxy else "")


def runs(pid_dir: Path, release: int) -> bool:
    """The server unchecked_server.py started for `release` still runs (not a later process with its pid)."""
    pid = int((pid_dir / f"pid-{release}").read_text())
    try:
        return proc_start_time(pid) is not None and str(SCRIPT).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def slot_modes(env) -> dict[str, tuple[str, int]]:
    return {s.name: (s.mode, s.weight) for s in env.fleet.api().servers_state("models")}


def test_a_deploy_whose_server_haproxy_never_sees_healthy_leaves_nothing_behind(selfhost, tmp_path):  # noqa: F811
    selfhost.deploy(1, 1)
    serving_slot = selfhost.records()[1].slot

    with pytest.raises(HostError, match="HAProxy does not see"):
        selfhost.deploy(2, 2, command=unchecked(tmp_path), ready_timeout=2)

    assert not runs(tmp_path, 2), "release 2's server still runs after its deploy failed"
    assert sorted(selfhost.records()) == [1]
    modes = slot_modes(selfhost)
    assert modes.pop(serving_slot) == ("ready", 100)
    assert set(modes.values()) == {("maint", 0)}  # the slot it took is free again
    assert selfhost.split() == {1: 100}
    assert versions(selfhost.fleet, 10) == Counter({"1": 10})

    selfhost.deploy(2, 2)  # the retry (here with a server HAProxy sees healthy) starts cleanly

    assert sorted(selfhost.records()) == [1, 2] and selfhost.split() == {2: 100}
    assert versions(selfhost.fleet, 10) == Counter({"2": 10})


def test_a_deploy_whose_haproxy_stops_answering_stops_its_new_server(selfhost, tmp_path):  # noqa: F811
    selfhost.deploy(1, 1)
    haproxy = selfhost.fleet.pid()
    began = time.monotonic()
    try:
        # Release 2's server stops HAProxy when it is first probed: the deploy's next runtime API call times out.
        with pytest.raises(HostError, match="unreachable") as caught:
            selfhost.deploy(2, 2, command=unchecked(tmp_path, stop_haproxy=haproxy))
        assert caught.value.retryable
        assert time.monotonic() - began < 15  # the runtime API's 5 s, then an undo that does not wait on HAProxy
        assert not runs(tmp_path, 2), "release 2's server still runs after its deploy failed"
        assert sorted(selfhost.records()) == [1]
    finally:
        os.kill(haproxy, signal.SIGCONT)

    assert selfhost.split() == {1: 100}
    assert versions(selfhost.fleet, 10) == Counter({"1": 10})
    selfhost.deploy(2, 2)  # the retry starts cleanly
    assert selfhost.split() == {2: 100}
    assert versions(selfhost.fleet, 10) == Counter({"2": 10})


def test_a_refused_split_stops_the_new_server_but_never_one_that_served(selfhost):  # noqa: F811
    selfhost.deploy(1, 1)
    selfhost.deploy(2, 2)  # release 1 is drained and kept running, for a rollback
    served = selfhost.records()[1]
    bad_split = ((9, 50),)  # release 9 runs nowhere: refused after the server is ready and in its slot

    with pytest.raises(HostError, match="release 9 is not running"):
        selfhost.adapter.deploy(replace(selfhost.spec(1, 1), traffic=((1, 50), *bad_split)))
    assert selfhost.records()[1] == served and process_alive(served)  # it has served: untouched

    with pytest.raises(HostError, match="release 9 is not running"):
        selfhost.adapter.deploy(replace(selfhost.spec(3, 3), traffic=((3, 50), *bad_split)))
    assert sorted(selfhost.records()) == [1, 2]
    assert server_pids([selfhost.models[3]]) == set()  # release 3's server, started by that deploy, is gone

    assert selfhost.split() == {2: 100}
    assert versions(selfhost.fleet, 10) == Counter({"2": 10})
    modes = Counter(mode for mode, _ in slot_modes(selfhost).values())
    assert modes == Counter({"maint": 6, "ready": 1, "drain": 1})  # release 3's slot is free again


def test_a_never_served_server_left_by_a_killed_worker_is_stopped_by_the_next_interrupted_deploy(selfhost):  # noqa: F811
    """The rule for a server found running: it goes unless it has served. Here a worker killed mid-deploy left
    release 2's server; the next deploy of release 2 is interrupted before traffic reaches it, and stops it (else
    nothing would: the release fails and the fallback to release 1 deploys nothing)."""
    selfhost.deploy(1, 1)
    spec = selfhost.spec(2, 2)
    fields = ("target", "config", "credentials", "release_number", "model", "version_number", "digest", "artifact_dir")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER.format(root=str(ROOT)), json.dumps({k: getattr(spec, k) for k in fields})]
    )
    try:
        deadline = time.monotonic() + 20
        while 2 not in selfhost.records() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert 2 in selfhost.records(), "the worker never recorded release 2"
        worker.send_signal(signal.SIGKILL)  # its pid is on disk before it waits for the server: long before traffic
        worker.wait(5)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    orphan = selfhost.records()[2]
    selfhost.extra_pids.append(orphan.pid)  # started by the killed worker, not by this process
    assert process_alive(orphan) and orphan.last_served == 0

    with pytest.raises(HostError, match="release 9 is not running"):
        selfhost.adapter.deploy(replace(spec, traffic=((2, 50), (9, 50))))

    deadline = time.monotonic() + 5
    while process_alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not process_alive(orphan), "the never-served server left by the killed worker still runs"
    assert sorted(selfhost.records()) == [1]
    assert selfhost.split() == {1: 100}
    assert versions(selfhost.fleet, 10) == Counter({"1": 10})
