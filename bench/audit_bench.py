"""Audit benchmarks, driven by bench/run.py (`--only audit`).

* `append`: run in-process against the bench database (this file as a script, Django set up from the
  environment run.py passes): 8 writer threads, each with its own database connection, each appending
  events through `audit.services.record()` in its own transaction (exactly what every service does).
  Events/s, per-append p50/p95, then `manage.py audit_verify` (run.py) checks the chain is intact.
* `bulk_events()`: appends N events to the chain with COPY, hashes computed with audit/chain.py (the
  database's link trigger is off during the load), so that the export has 1,000,000 events to stream
  (not a figure, just the set-up).
* `export_and_verify()`: `GET /api/v1/audit/events?format=ndjson` from gunicorn into a file (events/s,
  peak RSS of the serving worker sampled from /proc), then `python audit/chain.py FILE` (the stdlib
  offline verifier) over the whole file from genesis (events/s, peak RSS of that process from wait4).
* `export_command()`: `manage.py audit_export --output FILE`, the same export from a process of its own
  (events/s and peak RSS from wait4), checked byte for byte against the HTTP export.
"""

from __future__ import annotations

import datetime as dt
import filecmp
import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from stats import pct  # bench/stats.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audit import chain  # noqa: E402 - stdlib only, no Django

# --- append: 8 concurrent writers, in-process ---------------------------------------------------


def append(writers: int, per_writer: int) -> dict:
    import django

    django.setup()
    from django.db import connection, transaction

    from audit.models import AuditChainHead
    from audit.services import record

    start_seq = (AuditChainHead.objects.filter(pk=1).values_list("seq", flat=True).first()) or 0
    barrier = threading.Barrier(writers + 1)
    lat: list[list[float]] = [[] for _ in range(writers)]
    errors: list[str] = []

    def writer(w: int) -> None:
        try:
            with transaction.atomic():  # open the connection before the start line
                pass
            barrier.wait()
            for i in range(per_writer):
                t0 = time.perf_counter_ns()
                with transaction.atomic():
                    record(
                        action="bench.appended",
                        subject_type="bench.thing",
                        subject_id=f"{w}-{i}",
                        subject_repr=f"bench thing {w}-{i}",
                        actor="bench:audit-writer",
                        before={"state": "old", "n": i},
                        after={"state": "new", "n": i, "writer": w, "note": "x" * 64},
                    )
                lat[w].append((time.perf_counter_ns() - t0) / 1e6)
        except Exception as exc:  # noqa: BLE001 - reported, the run fails
            errors.append(f"writer {w}: {exc!r}")
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    all_ms = [x for per in lat for x in per]
    end_seq = AuditChainHead.objects.get(pk=1).seq
    return {
        "writers": writers,
        "events": len(all_ms),
        "seq_advanced": end_seq - start_seq,
        "wall_s": wall,
        "events_per_s": len(all_ms) / wall,
        "p50_ms": pct(all_ms, 50),
        "p95_ms": pct(all_ms, 95),
        "p99_ms": pct(all_ms, 99),
    }


# --- bulk load of N events (set-up for the export) -----------------------------------------------


def bulk_events(dbname: str, pg: dict, count: int) -> dict:
    """Append `count` chained events with COPY, continuing from the current head."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(dbname=dbname, **pg) as conn:
        seq, prev, last_at = conn.execute(
            "SELECT seq, hash, at FROM audit_auditchainhead WHERE id = 1 FOR UPDATE"
        ).fetchone()
        # The rows come linked (audit/chain.py, below); the database's link trigger would relink each one
        # and move the head row a million times in one transaction. Off for this load only.
        conn.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_chain_link")
        # times follow the chain; in UTC, as the lines below format them
        at = max(dt.datetime.now(dt.UTC), last_at or dt.datetime.min.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        cols = (
            "seq, at, actor_id, actor_username, token_id, request_id, action, subject_type, subject_id, "
            "subject_repr, before, after, reason, prev_hash, hash, line"
        )
        with conn.cursor() as cur, cur.copy(f"COPY audit_auditevent ({cols}) FROM STDIN") as copy:
            for i in range(1, count + 1):
                seq += 1
                at += dt.timedelta(microseconds=1)
                before = {"status": "registered"} if i % 3 else None
                after = {
                    "number": i,
                    "digest": "sha256:" + hashlib.sha256(str(i).encode()).hexdigest(),
                    "metrics": {"auc": (i % 1000) / 1000},
                    "source": {"commit": hashlib.sha1(str(i).encode()).hexdigest(), "branch": "main"},  # noqa: S324
                }
                event = {
                    "seq": seq,
                    "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "actor_id": None,
                    "actor_username": "bench:bulk",
                    "token_id": None,
                    "request_id": f"req-{i:012d}",
                    "action": "version.registered",
                    "subject_type": "registry.modelversion",
                    "subject_id": str(i),
                    "subject_repr": f"bench/bulk:{i}",
                    "before": before,
                    "after": after,
                    "reason": "",
                }
                digest = chain.event_hash(prev, event)
                # the line as the chain-link trigger stores it
                line = chain.canonical_json({**event, "prev_hash": prev, "hash": digest}).decode()
                copy.write_row(
                    (
                        seq,
                        at,
                        None,
                        "bench:bulk",
                        None,
                        event["request_id"],
                        event["action"],
                        event["subject_type"],
                        event["subject_id"],
                        event["subject_repr"],
                        chain.canonical_json(before).decode(),
                        chain.canonical_json(after).decode(),
                        "",
                        prev,
                        digest,
                        line,
                    )
                )
                prev = digest
        # the head's guard lets only the link trigger move it; this load linked the rows itself
        conn.execute("ALTER TABLE audit_auditchainhead DISABLE TRIGGER audit_head_guard")
        conn.execute("UPDATE audit_auditchainhead SET seq = %s, hash = %s, at = %s WHERE id = 1", (seq, prev, at))
        conn.execute("ALTER TABLE audit_auditchainhead ENABLE TRIGGER audit_head_guard")
        conn.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_chain_link")
        conn.commit()
    with psycopg.connect(dbname=dbname, autocommit=True, **pg) as conn:
        conn.execute("VACUUM ANALYZE audit_auditevent")
    return {"events": count, "head_seq": seq, "seconds": time.perf_counter() - t0}


# --- export over HTTP and offline verify ---------------------------------------------------------


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def export_and_verify(port: int, token: str, worker_pids: list[int], out: Path) -> dict:
    baseline = {pid: _rss_kb(pid) for pid in worker_pids}
    peak = dict(baseline)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in worker_pids:
                peak[pid] = max(peak[pid], _rss_kb(pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("GET", "/api/v1/audit/events?format=ndjson", headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"export -> {resp.status}: {resp.read()[:300]!r}")
    last_seq, last_hash = int(resp.headers["X-Audit-Last-Seq"]), resp.headers["X-Audit-Last-Hash"]
    size = 0
    with out.open("wb") as f:
        while chunk := resp.read(1 << 20):
            f.write(chunk)
            size += len(chunk)
    export_s = time.perf_counter() - t0
    conn.close()
    stop.set()
    sampler.join()
    served_by = max(worker_pids, key=lambda pid: peak[pid] - baseline[pid])

    python = str(ROOT / ".venv" / "bin" / "python")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [python, str(ROOT / "audit" / "chain.py"), str(out), "--expect-head", last_hash],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    verify_s = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"audit/chain.py failed ({proc.returncode}): {stdout}{stderr}")
    return {
        "events": last_seq,
        "bytes": size,
        "export_s": export_s,
        "export_events_per_s": last_seq / export_s,
        "export_worker_peak_rss_mb": peak[served_by] / 1024,
        "export_worker_rss_before_mb": baseline[served_by] / 1024,
        "verify_s": verify_s,
        "verify_events_per_s": last_seq / verify_s,
        "verify_peak_rss_mb": usage.ru_maxrss / 1024,
        "verify_output": stdout.strip()[-200:],
        "end_to_end_events_per_s": last_seq / (export_s + verify_s),
    }


def export_command(env: dict, out: Path, http_export: Path) -> dict:
    """`manage.py audit_export --output FILE` as its own process: events/s and peak RSS (wait4), and the
    file compared with the HTTP export of the same log."""
    python = str(ROOT / ".venv" / "bin" / "python")
    err_path = out.with_name(out.name + ".stderr")
    with err_path.open("w+b") as err:  # a file, not a pipe: wait4 reads nothing while the child writes
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [python, "manage.py", "audit_export", "--output", str(out)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4
        err.seek(0)
        stderr = err.read().decode()
    err_path.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"audit_export failed: {stderr}")
    events = int(stderr.split("up to #", 1)[1].split(" ", 1)[0])
    return {
        "events": events,
        "seconds": seconds,  # the whole process: interpreter and Django start-up included
        "events_per_s": events / seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "same_bytes_as_http": filecmp.cmp(out, http_export, shallow=False),
    }


if __name__ == "__main__":
    if sys.argv[1] != "append":
        raise SystemExit("usage: audit_bench.py append WRITERS PER_WRITER")
    print(json.dumps(append(int(sys.argv[2]), int(sys.argv[3]))))
