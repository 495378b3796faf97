"""How long one PostgreSQL round trip takes right after the client has used the CPU for a while.

On a virtual machine whose idle vCPUs halt at once (no guest halt polling: `cpuidle` driver haltpoll
with `haltpoll.guest_halt_poll_ns=0`, as on this project's machines), a process woken on the other,
sleeping vCPU waits for the host to wake it. A request's statements come between stretches of Python
work, so they pay that wake-up; a benchmark loop firing statements back to back does not. Pinning client
and backend to one vCPU, then to two, shows that the wake-up across vCPUs is what costs. run.py records
this with the machine, and bench/README.md uses it to say what bounds a one-client request.

    .venv/bin/python bench/roundtrip.py   -> JSON on stdout
"""

import json
import os
import time
from pathlib import Path

import psycopg

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
GAPS_MS = (0, 0.2, 0.5, 1, 2, 5)


def _busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _medians(cursor, gaps, samples: int) -> dict:
    medians = {}
    for gap in gaps:
        times = []
        for _ in range(samples):
            _busy(gap)
            t0 = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        medians[f"after_{gap}_ms_of_cpu"] = round(times[len(times) // 2], 3)
    return medians


def _pinned(cursor, samples: int) -> dict | None:
    """The same with client and server backend pinned to one vCPU, then to two: the wake-up across vCPUs is
    the difference. None where the backend's CPU affinity may not be set (not root)."""
    backend = cursor.execute("SELECT pg_backend_pid()").fetchone()[0]
    mine = os.sched_getaffinity(0)
    cpus = sorted(mine)
    if len(cpus) < 2:
        return None
    try:
        out = {}
        for label, theirs in (("same_vcpu", cpus[0]), ("other_vcpu", cpus[1])):
            os.sched_setaffinity(0, {cpus[0]})
            os.sched_setaffinity(backend, {theirs})
            out[label] = _medians(cursor, (0, 1, 5), samples)
        return out
    except PermissionError:
        return None
    finally:
        os.sched_setaffinity(0, mine)


def round_trips(samples: int = 1000) -> dict:
    """Median milliseconds of a prepared `SELECT 1` after the client spun the CPU for each gap."""
    with psycopg.connect(dbname="postgres", autocommit=True, prepare_threshold=0, **PG) as conn:
        cursor = conn.cursor()
        for _ in range(100):
            cursor.execute("SELECT 1")
        medians = _medians(cursor, GAPS_MS, samples)
        pinned = _pinned(cursor, samples)
    return {
        "select_1_p50_ms": medians,
        "select_1_p50_ms_pinned": pinned,
        "cpuidle_driver": _read("/sys/devices/system/cpu/cpuidle/current_driver"),
        "guest_halt_poll_ns": _read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    }


if __name__ == "__main__":
    print(json.dumps(round_trips(), indent=1))
