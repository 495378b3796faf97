#!/usr/bin/env python
"""Registry benchmarks: one command runs them all.

    .venv/bin/python bench/run.py [--quick] [--no-profile] [--only registration|reads]
                                  [--worker-class sync|gthread --workers N --threads N]

Creates a fresh PostgreSQL database `registry_bench`, migrates it, starts the service under gunicorn
with production-like settings (default: cores + 1 gthread workers of 4 threads), and measures over real HTTP (one
http.client connection per client thread, kept alive where the worker class allows it; gunicorn's
sync workers close after each response, so the client reconnects; latency taken on the client):

  1. version registration, 1 and 8 concurrent clients: versions/s, p50/p95/p99
  2. reference in the same run: pgbench, one single-row INSERT per transaction, -c 1 and -c 8
  3. version get and alias resolution: p50/p95 (client side; server side from gunicorn's access log)
  4. version list/filter with 100,000 versions in one model: p50/p95

Each figure is the median of the repetitions. Results: a table on stdout and bench/results/latest.json.
Then (unless --no-profile) one more 8-client registration pass under py-spy: bench/results/profile.svg
(on-CPU flame graph) and bench/results/profile_top.txt (top costs, on-CPU and wall clock).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuid_mod
from collections import Counter
from pathlib import Path

import psycopg
from roundtrip import round_trips  # bench/roundtrip.py
from stats import pct  # bench/stats.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
DB_NAME = "registry_bench"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
# Approvals enqueue reconcile tasks on commit: they go to a Redis database of their own (no worker
# consumes them; it is flushed at the end), never to the one other sessions' workers listen on.
BROKER_DB = 13
BROKER_URL = f"redis://127.0.0.1:6379/{BROKER_DB}"
LINEAGE_VERSIONS = 50  # load test: versions with an ingested training run, where lineage queries start
ALL_BENCHMARKS = ("registration", "reads", "lineage", "audit", "review", "rollback", "load")
# Sync workers for the service: as many as there are cores, plus one to take the CPU while another waits
# for PostgreSQL. More bought no throughput here (PostgreSQL and the client share the cores) and cost
# each request colder caches and ~110 MB per worker (bench/README.md, "Workers").
DEFAULT_WORKERS = (os.cpu_count() or 1) + 1
NAMESPACE = "bench"
REG_MODEL = "reg"  # registration target (starts empty)
BIG_MODEL = "big"  # 100,000 bulk-inserted versions: get, alias, list/filter

FILTERS = {
    "metric+status": "metric=auc%3E%3D0.9&status=registered",
    "tag": "tag=stage%3Aprod",
    "first page": "",
}
EXTRA_FILTERS = {  # not goals: show how a selective filter behaves without a supporting index
    "rare metric (0.2%)": "metric=auc%3E%3D0.999",
    "tag with no match": "tag=stage%3Anone",
}


# --------------------------------------------------------------------------------------------
# processes: everything we start is tracked and stopped on exit, error or signal
# --------------------------------------------------------------------------------------------

_children: list[subprocess.Popen] = []


def _stop_children() -> None:
    for proc in reversed(_children):
        if proc.poll() is not None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # own session: the gunicorn master and its workers
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    _children.clear()


def _on_signal(signum, frame):
    _stop_children()
    sys.exit(128 + signum)


def spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    _children.append(proc)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def lat_summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99), "max_ms": max(ms)}


def cpu_busy(seconds: float = 1.0) -> float:
    """Machine-wide CPU busy % (all cores) over `seconds`, from /proc/stat."""

    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    t1, i1 = sample()
    time.sleep(seconds)
    t2, i2 = sample()
    return round(100 * (1 - (i2 - i1) / max(t2 - t1, 1)), 1)


def settle(cfg) -> dict:
    """Before a measurement: wait (at most cfg.settle seconds) until the machine is quiet, i.e. other
    sessions' tests leave the CPUs less than cfg.busy_below % busy. Returns the background load seen."""
    deadline = time.time() + cfg.settle
    busy = cpu_busy()
    while busy >= cfg.busy_below and time.time() < deadline:
        busy = cpu_busy(2.0)
    return {"background_cpu_busy_pct": busy, "loadavg_1m": round(os.getloadavg()[0], 2)}


def median_of(reps: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in reps)


# --------------------------------------------------------------------------------------------
# HTTP load: one keep-alive connection per client thread, client-side latency
# --------------------------------------------------------------------------------------------


class Api:
    def __init__(self, port: int, token: str):
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def call(self, conn, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn.request(method, path, body=body, headers=self.headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def once(self, method: str, path: str, payload=None, expect=(200, 201)) -> dict:
        conn = self.connect()
        try:
            status, body = self.call(conn, method, path, json.dumps(payload).encode() if payload is not None else None)
        finally:
            conn.close()
        if status not in expect:
            raise RuntimeError(f"{method} {path} -> {status}: {body[:500]!r}")
        return json.loads(body)


def run_load(api: Api, work: list[list[tuple[str, str, bytes | None]]], expect: int) -> dict:
    """work[i] is client i's request list. All clients start together; returns latencies and wall time."""
    clients = len(work)
    barrier = threading.Barrier(clients + 1)
    lat: list[list[float]] = [[] for _ in range(clients)]
    starts, ends = [0.0] * clients, [0.0] * clients
    errors: list[str] = []

    def client(i: int) -> None:
        conn = api.connect()
        try:
            api.call(conn, "GET", f"/api/v1/models/{NAMESPACE}/{REG_MODEL}")  # warm the connection and worker
            barrier.wait()
            starts[i] = time.perf_counter()
            out = lat[i]
            for method, path, body in work[i]:
                t0 = time.perf_counter_ns()
                status, data = api.call(conn, method, path, body)
                out.append((time.perf_counter_ns() - t0) / 1e6)
                if status != expect and len(errors) < 20:
                    errors.append(f"{method} {path} -> {status}: {data[:300]!r}")
            ends[i] = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - reported below, the run fails loudly
            errors.append(f"client {i}: {exc!r}")
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g.:\n  " + "\n  ".join(errors[:5]))
    all_ms = [x for per in lat for x in per]
    wall = max(ends) - min(starts)
    return {"requests": len(all_ms), "wall_s": wall, "per_s": len(all_ms) / wall, **lat_summary(all_ms)}


# --------------------------------------------------------------------------------------------
# server-side time: gunicorn access log with %(D)s (microseconds from request start to response end)
# --------------------------------------------------------------------------------------------

ACCESS_FORMAT = "%(m)s %(U)s %(s)s %(D)s"


class AccessLog:
    def __init__(self, path: Path):
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def server_ms(self, since: int, method: str, path_re: str) -> dict | None:
        time.sleep(0.2)  # let the workers' log handlers flush
        pattern = re.compile(path_re)
        values = []
        with self.path.open("rb") as f:
            f.seek(since)
            for raw in f:
                parts = raw.decode("utf-8", "replace").split()
                if len(parts) == 4 and parts[0] == method and pattern.search(parts[1]):
                    values.append(int(parts[3]) / 1000)
        if not values:
            return None
        return {"n": len(values), "p50_ms": pct(values, 50), "p95_ms": pct(values, 95), "p99_ms": pct(values, 99)}


# --------------------------------------------------------------------------------------------
# setup: database, service, user and token
# --------------------------------------------------------------------------------------------


def django_env(data_dir: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DATABASE_", "CELERY_", "SECRET_KEY", "TEST_DATABASE"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        SECURE_SSL_REDIRECT="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=DATABASE_URL,
        CELERY_BROKER_URL=BROKER_URL,
        DATA_DIR=str(data_dir),
        ARTIFACT_STORAGE="local",  # one machine: its disk, chosen (core.E003 refuses it left to the default)
        PYTHONUNBUFFERED="1",
    )
    return env


def manage(env: dict, *args: str) -> str:
    out = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args[:2])} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def recreate_database() -> None:
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def start_gunicorn(env: dict, port: int, args, log_dir: Path) -> subprocess.Popen:
    cmd = [
        str(VENV_BIN / "gunicorn") if (VENV_BIN / "gunicorn").exists() else "gunicorn",
        "config.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(args.workers),
        "--worker-class",
        args.worker_class,
        "--threads",
        str(args.threads),
        "--keep-alive",
        "60",
        "--backlog",
        "1024",
        "--timeout",
        "600",
        "--access-logfile",
        str(log_dir / "access.log"),
        "--access-logformat",
        ACCESS_FORMAT,
        "--error-logfile",
        str(log_dir / "gunicorn.log"),
    ]
    proc = spawn(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = (log_dir / "gunicorn.log").read_text()[-3000:]
            raise RuntimeError(f"gunicorn exited ({proc.returncode}):\n{tail}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200 and len(worker_pids(proc.pid)) >= args.workers:
                conn.close()
                return proc
            conn.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer /healthz within 60 s")


def serve_checkout(
    tree: Path,
    db: str,
    data_dir: Path,
    server,
    *,
    user: str,
    scopes: str,
    group: str = "",
    extra_env: dict | None = None,
) -> tuple[int, str]:
    """A checkout of the code (A/B scripts: bench/ab.py, bench/ingest_large.py) served by its own gunicorn on its
    own new database `db`, with `data_dir` (its access.log has gunicorn's request times): migrated, static collected,
    roles ensured, a token for `user` (in `group`, if given) with `scopes`. Returns the port and the token."""
    global ROOT
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
    data_dir.mkdir()
    env = {**django_env(data_dir), "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}", **(extra_env or {})}

    def manage(*argv: str) -> str:
        out = subprocess.run(
            [PYTHON, "manage.py", *argv], cwd=tree, env=env, capture_output=True, text=True, timeout=600
        )
        if out.returncode:
            raise RuntimeError(f"{tree}: manage.py {argv[0]} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    manage("migrate", "--noinput")
    manage("collectstatic", "--noinput")
    manage("ensure_roles")
    token = manage("create_api_token", user, "--scopes", scopes, "--create-user").strip().splitlines()[-1].strip()
    if group:
        manage(
            "shell",
            "-c",
            "from django.contrib.auth.models import Group, User; "
            f"User.objects.get(username={user!r}).groups.add(Group.objects.get(name={group!r}))",
        )
    port = free_port()
    old_root, ROOT = ROOT, tree  # start_gunicorn runs in ROOT
    try:
        start_gunicorn(env, port, server, data_dir)
    finally:
        ROOT = old_root
    return port, token


def worker_pids(master: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    except OSError:
        return []


def create_user_and_token(env: dict) -> str:
    manage(env, "ensure_roles")
    out = manage(env, "create_api_token", "bench", "--scopes", "read,models:write,versions:write", "--create-user")
    token = out.strip().splitlines()[-1].strip()
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth.models import Group, User; "
        "User.objects.get(username='bench').groups.add(Group.objects.get(name='model-owners'))",
    )
    return token


# --------------------------------------------------------------------------------------------
# payloads and bulk data
# --------------------------------------------------------------------------------------------


def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def files_for(key: str, i: int) -> list[dict]:
    h = hashlib.sha256(f"{key}:{i}".encode()).hexdigest()
    config, tokenizer = (hashlib.sha256(f"{p}{h}".encode()).hexdigest() for p in "ct")
    return sorted(
        [
            {"path": "config.json", "size": 700 + i % 97, "sha256": config},
            {"path": "model.safetensors", "size": 400_000_000 + i, "sha256": h},
            {"path": "tokenizer.json", "size": 2_000_000 + i % 1000, "sha256": tokenizer},
        ],
        key=lambda f: f["path"],
    )


def registration_body(key: str, i: int, rng: random.Random) -> bytes:
    commit = hashlib.sha1(f"{key}:{i}".encode()).hexdigest()  # noqa: S324 - a fake git commit id
    return json.dumps(
        {
            "artifact_uri": f"s3://bench-artifacts/{key}/{i}/",
            "manifest": {"files": files_for(key, i)},
            "framework": "pytorch",
            "task": "text-classification",
            "params": {"learning_rate": 3e-5, "epochs": 3, "batch_size": 32, "seed": i},
            "metrics": {"auc": round(rng.uniform(0.5, 1.0), 4), "loss": {"value": rng.random(), "split": "eval"}},
            "source": {
                "repository": "https://github.com/example/classifier",
                "commit": commit,
                "branch": "main",
                "ci_run_url": f"https://ci.example.com/runs/{key}-{i}",
            },
            "tags": {"stage": "dev", "team": "search"},
        }
    ).encode()


def bulk_insert_versions(count: int, seed: int = 7) -> dict:
    """COPY `count` versions into the big model. Distribution: status 90% registered / 8% deprecated /
    2% archived; auc uniform in [0.5, 1); tags stage=prod 1%, staging 9%, dev 90%."""
    rng = random.Random(seed)  # noqa: S311 - benchmark data, not security
    t0 = time.perf_counter()
    with psycopg.connect(dbname=DB_NAME, **PG) as conn:
        model_id, user_id = conn.execute(
            "SELECT m.id, u.id FROM registry_registeredmodel m, auth_user u "
            "WHERE m.namespace = %s AND m.name = %s AND u.username = 'bench'",
            (NAMESPACE, BIG_MODEL),
        ).fetchone()
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=count)
        cols = (
            "model_id, number, digest, manifest, artifact_uri, framework, task, params, metrics, metric_sources, "
            "source, created_by_id, created_at, tags, status"
        )
        with conn.cursor() as cur, cur.copy(f"COPY registry_modelversion ({cols}) FROM STDIN") as copy:
            for n in range(1, count + 1):
                files = files_for("big", n)
                manifest = {"files": files}
                digest = "sha256:" + hashlib.sha256(canonical(manifest)).hexdigest()
                r = rng.random()
                status = "registered" if r < 0.90 else ("deprecated" if r < 0.98 else "archived")
                s = rng.random()
                stage = "prod" if s < 0.01 else ("staging" if s < 0.10 else "dev")
                copy.write_row(
                    (
                        model_id,
                        n,
                        digest,
                        json.dumps(manifest),
                        f"s3://bench-artifacts/big/{n}/",
                        "pytorch",
                        "text-classification",
                        json.dumps({"learning_rate": 3e-5, "epochs": 3, "seed": n}),
                        json.dumps({"auc": round(rng.uniform(0.5, 1.0), 4), "loss": round(rng.random(), 4)}),
                        json.dumps({"loss": {"split": "eval"}}),
                        json.dumps(
                            {
                                "repository": "https://github.com/example/classifier",
                                "commit": hashlib.sha1(f"big:{n}".encode()).hexdigest(),  # noqa: S324
                                "branch": "main",
                            }
                        ),
                        user_id,
                        start + dt.timedelta(minutes=n),
                        json.dumps({"stage": stage, "team": "search"}),
                        status,
                    )
                )
        conn.execute("UPDATE registry_registeredmodel SET latest_number = %s WHERE id = %s", (count, model_id))
        conn.commit()
    with psycopg.connect(dbname=DB_NAME, autocommit=True, **PG) as conn:
        conn.execute("VACUUM ANALYZE registry_modelversion")
    return {"versions": count, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# pgbench reference
# --------------------------------------------------------------------------------------------


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    raise RuntimeError("pgbench not found: apt-get install -y postgresql-contrib (or postgresql-client)")


def preflight(only: set[str]) -> None:
    """Look for the outside tools the selected benchmarks need before any of them runs: a missing one found
    by the rollback step, 20 minutes in, used to lose every figure taken before it."""
    pgbench_binary()
    if "rollback" in only:
        from rollback_bench import haproxy_binary

        haproxy_binary()


def pgbench_prepare(script: Path) -> None:
    with psycopg.connect(dbname=DB_NAME, autocommit=True, **PG) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_raw_insert "
            "(id bigserial PRIMARY KEY, payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )
    script.write_text("INSERT INTO bench_raw_insert (payload) VALUES ('sha256:0123456789abcdef');\n")


def pgbench(script: Path, clients: int, seconds: int) -> dict:
    cmd = [pgbench_binary(), "-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"], "-n", "-f", str(script)]
    cmd += ["-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)), "-T", str(seconds), DB_NAME]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr}")
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout)
    latency = re.search(r"latency average = ([0-9.]+) ms", out.stdout)
    if not tps:
        raise RuntimeError(f"cannot parse pgbench output:\n{out.stdout}")
    return {"tps": float(tps[1]), "latency_avg_ms": float(latency[1]) if latency else None}


# --------------------------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------------------------


def registration_work(key: str, clients: int, per_client: int, rng: random.Random) -> list[list[tuple]]:
    path = f"/api/v1/models/{NAMESPACE}/{REG_MODEL}/versions/"
    return [
        [("POST", path, registration_body(f"{key}-c{c}", i, rng)) for i in range(per_client)] for c in range(clients)
    ]


def bench_registration(api, log, cfg, script: Path, rng) -> dict:
    reps = {1: [], 8: []}
    refs = {1: [], 8: []}
    for rep in range(cfg.reps):
        for clients in (1, 8):
            ref = {**settle(cfg), **pgbench(script, clients, cfg.pgbench_seconds)}
            refs[clients].append(ref)
            per_client = cfg.reg_total[clients] // clients
            work = registration_work(f"r{rep}-{clients}", clients, per_client, rng)
            quiet = settle(cfg)
            mark = log.mark()
            res = {**run_load(api, work, expect=201), **quiet}
            res["server"] = log.server_ms(mark, "POST", r"/versions/$")
            res["raw_insert_tps"] = ref["tps"]
            res["pct_of_raw"] = 100 * res["per_s"] / ref["tps"]
            reps[clients].append(res)
            print(
                f"  rep {rep + 1}: {clients} client(s): {res['per_s']:.0f} versions/s, p50 {res['p50_ms']:.2f} ms, "
                f"p95 {res['p95_ms']:.2f} ms | pgbench {ref['tps']:.0f} tps -> {res['pct_of_raw']:.2f}% "
                f"(background CPU {ref['background_cpu_busy_pct']:.0f}%/{res['background_cpu_busy_pct']:.0f}%)",
                flush=True,
            )
    out = {}
    for clients in (1, 8):
        r = reps[clients]
        out[f"{clients}_client"] = {
            "versions_per_s": median_of(r, "per_s"),
            "p50_ms": median_of(r, "p50_ms"),
            "p95_ms": median_of(r, "p95_ms"),
            "p99_ms": median_of(r, "p99_ms"),
            "server_p50_ms": statistics.median(x["server"]["p50_ms"] for x in r if x["server"]),
            "server_p95_ms": statistics.median(x["server"]["p95_ms"] for x in r if x["server"]),
            "raw_insert_tps": statistics.median(x["tps"] for x in refs[clients]),
            "pct_of_raw": median_of(r, "pct_of_raw"),
            "requests_per_rep": r[0]["requests"],
            "reps": r,
            "pgbench_reps": refs[clients],
        }
    return out


def bench_reads(api, log, cfg, name: str, paths: list[str], path_re: str) -> dict:
    reps = []
    for rep in range(cfg.reps):
        quiet = settle(cfg)
        mark = log.mark()
        res = {**run_load(api, [[("GET", p, None) for p in paths]], expect=200), **quiet}
        res["server"] = log.server_ms(mark, "GET", path_re)
        reps.append(res)
        print(
            f"  rep {rep + 1}: {name}: p50 {res['p50_ms']:.2f} ms, p95 {res['p95_ms']:.2f} ms "
            f"(background CPU {res['background_cpu_busy_pct']:.0f}%)",
            flush=True,
        )
    return {
        "p50_ms": median_of(reps, "p50_ms"),
        "p95_ms": median_of(reps, "p95_ms"),
        "p99_ms": median_of(reps, "p99_ms"),
        "server_p50_ms": statistics.median(x["server"]["p50_ms"] for x in reps if x["server"]),
        "server_p95_ms": statistics.median(x["server"]["p95_ms"] for x in reps if x["server"]),
        "requests_per_rep": len(paths),
        "reps": reps,
    }


# --------------------------------------------------------------------------------------------
# profile: one more 8-client registration pass under py-spy, plus PostgreSQL wait sampling
# --------------------------------------------------------------------------------------------


def pg_wait_sampler(stop: threading.Event, samples: Counter) -> None:
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        while not stop.is_set():
            rows = conn.execute(
                "SELECT state, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '') FROM pg_stat_activity "
                "WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (DB_NAME,),
            ).fetchall()
            samples["_ticks"] += 1
            for state, wtype, wevent in rows:
                if state == "active":
                    samples[f"active: {wtype}{':' + wevent if wevent else ''}"] += 1
                else:
                    samples[f"{state}"] += 1
            stop.wait(0.02)


def pyspy_binary() -> str | None:
    return str(VENV_BIN / "py-spy") if (VENV_BIN / "py-spy").exists() else shutil.which("py-spy")


def profiled_pass(api, gunicorn: subprocess.Popen, cfg, rng, out: Path, fmt: str, idle: bool, tag: str) -> dict:
    cmd = [pyspy_binary(), "record", "--pid", str(gunicorn.pid), "--subprocesses", "--rate", "200"]
    cmd += ["--format", fmt, "-o", str(out)] + (["--idle"] if idle else [])
    spy = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(2.0)  # py-spy attaches to the master and every worker
    if spy.poll() is not None:
        raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode()[-2000:]}")
    stop, waits = threading.Event(), Counter()
    sampler = threading.Thread(target=pg_wait_sampler, args=(stop, waits), daemon=True)
    sampler.start()
    res = run_load(api, registration_work(tag, 8, cfg.reg_total[8] // 8, rng), expect=201)
    stop.set()
    sampler.join()
    os.kill(spy.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(spy.pid, signal.SIGKILL)
    _children.remove(spy)
    ticks = waits.pop("_ticks", 1)
    res["pg_backends_avg"] = {k: round(v / ticks, 2) for k, v in waits.most_common()}
    return res


FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
PROJECT_FILE = re.compile(r"^(accounts|audit|core|registry|lineage|governance|config)/")


def _frame(raw: str) -> tuple[str, str, str]:
    """'Class.func (/abs/path/site-packages/pkg/mod.py:12)' -> ('Class.func', 'pkg/mod.py', '12')."""
    m = FRAME.match(raw.strip())
    if not m:
        return raw.strip(), "", ""
    path = m["file"]
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return m["func"], path, m["line"] or ""


# (label, function name (last part of the qualified name), file): inclusive share of request time
KEY_FRAMES = [
    ("SQL statements (Django cursor execute: send, wait, fetch)", "_execute", "django/db/backends/utils.py"),
    (
        "psycopg waiting, every round trip: server, network, CPU queue",
        "wait",
        "psycopg/connection.py",
    ),
    ("COMMIT", "commit", "django/db/backends/base/base.py"),
    ("connection health check (socket poll; SELECT 1 only if it is readable)", "is_usable", "core/postgres/base.py"),
    ("token authentication", "authenticate", "accounts/authentication.py"),
    ("object permission checks (access.require)", "require", "accounts/access.py"),
    ("  the one permission query (access.held_codenames)", "held_codenames", "accounts/access.py"),
    ("input validation (serializer is_valid)", "is_valid", "rest_framework/serializers.py"),
    ("model look-up with the user's codenames (selectors.model_at)", "model_at", "registry/selectors.py"),
    ("version_register (service, incl. its SQL)", "version_register", "registry/services.py"),
    ("  its one statement: number bump, version, audit event", "_insert_numbered", "registry/services.py"),
    ("output serialization (serializer .data)", "data", "rest_framework/serializers.py"),
    ("SQL compilation (ORM as_sql)", "as_sql", "django/db/models/sql/compiler.py"),
    ("gunicorn access log", "access", "gunicorn/glogging.py"),
]


def summarize_raw(path: Path, top: int = 20) -> dict:
    """Collapsed stacks (py-spy --format raw) -> inclusive share of key frames, top leaf frames and
    the deepest project line on the stack, counting only samples inside request handling."""
    total = 0
    key: Counter = Counter()
    leaf: Counter = Counter()
    own_line: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";") if not f.startswith("process ")]
        if not any(fn.endswith("handle_request") and "gunicorn/workers/" in fl for fn, fl, _ in frames):
            continue  # idle master, keep-alive poller, idle threads: not a request
        n = int(count)
        total += n
        for i, (_, func, file) in enumerate(KEY_FRAMES):
            if any(fn.split(".")[-1] == func and fl == file for fn, fl, _ in frames):
                key[i] += n
        fn, fl, _ = frames[-1]
        leaf[f"{fn} ({fl})"] += n
        mine = [f for f in frames if PROJECT_FILE.match(f[1])]
        if mine:
            own_line[f"{mine[-1][0]} ({mine[-1][1]}:{mine[-1][2]})"] += n
    if not total:
        return {"samples_in_requests": 0}

    def share(n: int) -> float:
        return round(100 * n / total, 1)

    return {
        "samples_in_requests": total,
        "key_frames_pct": {label: share(key[i]) for i, (label, _, _) in enumerate(KEY_FRAMES)},
        "top_leaf_pct": [(f, share(n)) for f, n in leaf.most_common(top)],
        "deepest_project_line_pct": [(f, share(n)) for f, n in own_line.most_common(top)],
    }


def bench_profile(api, gunicorn, cfg, rng) -> dict:
    if not pyspy_binary():
        return {"skipped": "py-spy not installed (.venv/bin/pip install py-spy)"}
    svg, cpu_raw, wall_raw = RESULTS / "profile.svg", RESULTS / "profile_cpu.txt", RESULTS / "profile_wall.txt"
    print("  on-CPU flame graph ...", flush=True)
    p1 = profiled_pass(api, gunicorn, cfg, rng, svg, "flamegraph", False, "prof-svg")
    print("  on-CPU collapsed stacks ...", flush=True)
    p2 = profiled_pass(api, gunicorn, cfg, rng, cpu_raw, "raw", False, "prof-cpu")
    print("  wall clock (with idle) collapsed stacks ...", flush=True)
    p3 = profiled_pass(api, gunicorn, cfg, rng, wall_raw, "raw", True, "prof-wall")
    result = {
        "note": "8-client registration passes under py-spy (200 Hz, all workers); sampling slows the service",
        "passes": [{k: v for k, v in p.items() if k != "reps"} for p in (p1, p2, p3)],
        "cpu": summarize_raw(cpu_raw),
        "wall": summarize_raw(wall_raw),
    }
    (RESULTS / "profile_top.txt").write_text(profile_text(result, p3["pg_backends_avg"]))
    return result


def profile_text(result: dict, pg_backends_avg: dict) -> str:
    lines = [f"py-spy profile of 8-client registration ({dt.date.today().isoformat()})", ""]
    for kind in ("cpu", "wall"):
        s = result[kind]
        title = "on-CPU" if kind == "cpu" else "wall clock (on-CPU + waiting)"
        lines += [f"== {title}: {s['samples_in_requests']} samples inside request handling", ""]
        if not s["samples_in_requests"]:
            continue
        lines += ["key frames (inclusive share of request time):"]
        lines += [f"  {v:5.1f}%  {k}" for k, v in s["key_frames_pct"].items()]
        lines += ["", "top leaf frames:"] + [f"  {v:5.1f}%  {f}" for f, v in s["top_leaf_pct"]]
        lines += ["", "deepest project line on the stack (where the time is spent, by call site):"]
        lines += [f"  {v:5.1f}%  {f}" for f, v in s["deepest_project_line_pct"]] + [""]
    lines += ["PostgreSQL backends of registry_bench during the wall-clock pass (average count per state):"]
    lines += [f"  {v:5.2f}  {k}" for k, v in pg_backends_avg.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the other benchmarks of issue 7: lineage, audit, review queue, rollback, load
# --------------------------------------------------------------------------------------------


def run_json(cmd: list[str], env: dict | None = None, timeout: int = 3600) -> dict:
    """Run a benchmark script in its own process; its last stdout line is the JSON result."""
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[1:3])} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_lineage(cfg) -> dict:
    """bench/lineage.py (its own database, registry_bench_lineage): load once, measure cfg.reps times."""
    size = ["--pipelines", "20", "--queries", "50", "--exports", "5"] if cfg.quick else ["--queries", "200"]
    reps = []
    for rep in range(cfg.reps):
        out = RESULTS / f"lineage_rep{rep + 1}.json"
        settle(cfg)
        cmd = [PYTHON, str(ROOT / "bench" / "lineage.py"), *size, "--json", str(out)] + (["--reuse"] if rep else [])
        subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=3600)
        reps.append(json.loads(out.read_text()))
        out.unlink()
        first = reps[-1]["traversals"][0]
        print(f"  rep {rep + 1}: {first['case']}: p50 {first['p50_ms']} ms, p95 {first['p95_ms']} ms", flush=True)
    cases = {}
    for i, case in enumerate(reps[0]["traversals"]):
        rows = [r["traversals"][i] for r in reps]
        cases[case["case"]] = {
            "p50_ms": statistics.median(r["p50_ms"] for r in rows),
            "p95_ms": statistics.median(r["p95_ms"] for r in rows),
            "p99_ms": statistics.median(r["p99_ms"] for r in rows) if "p99_ms" in case else None,
            "queries": case.get("queries"),
            "reps": [{"p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"]} for r in rows],
        }
    return {"shape": reps[0].get("shape"), "load": reps[0].get("load"), "cases": cases, "exports": reps[-1]["exports"]}


def bench_audit(cfg, env: dict, port: int, gunicorn: subprocess.Popen, work_dir: Path) -> dict:
    import audit_bench

    auditor = manage(
        env, "create_api_token", "bench-auditor", "--scopes", "read,audit:read", "--create-user", "--roles", "auditors"
    )
    token = auditor.strip().splitlines()[-1].strip()
    appends = []
    for rep in range(cfg.reps):
        quiet = settle(cfg)
        res = {
            **run_json([PYTHON, str(ROOT / "bench" / "audit_bench.py"), "append", "8", str(cfg.audit_per_writer)], env),
            **quiet,
        }
        appends.append(res)
        print(
            f"  rep {rep + 1}: append, 8 writers: {res['events_per_s']:.0f} events/s, p95 {res['p95_ms']:.1f} ms",
            flush=True,
        )
    intact = manage(env, "audit_verify").strip()
    print(f"  chain after the concurrent appends: {intact}", flush=True)
    print(f"  bulk: appending {cfg.audit_events:,} chained events with COPY", flush=True)
    bulk = audit_bench.bulk_events(DB_NAME, PG, cfg.audit_events)
    exports = []
    for rep in range(cfg.reps):
        settle(cfg)
        http_file, cli_file = work_dir / "audit-export.ndjson", work_dir / "audit-export-command.ndjson"
        res = audit_bench.export_and_verify(port, token, worker_pids(gunicorn.pid), http_file)
        settle(cfg)
        cli = audit_bench.export_command(env, cli_file, http_file)
        res.update({f"command_{k}": v for k, v in cli.items()})
        http_file.unlink()
        cli_file.unlink()
        exports.append(res)
        print(
            f"  rep {rep + 1}: export {res['events']:,} events: {res['export_events_per_s']:,.0f}/s, worker peak RSS "
            f"{res['export_worker_peak_rss_mb']:.0f} MB; verify {res['verify_events_per_s']:,.0f}/s, peak RSS "
            f"{res['verify_peak_rss_mb']:.0f} MB; audit_export command {cli['events_per_s']:,.0f}/s, peak RSS "
            f"{cli['peak_rss_mb']:.0f} MB, same bytes as HTTP: {cli['same_bytes_as_http']}",
            flush=True,
        )
    keys = [
        "export_events_per_s",
        "export_worker_peak_rss_mb",
        "verify_events_per_s",
        "verify_peak_rss_mb",
        "command_events_per_s",
        "command_peak_rss_mb",
    ]
    return {
        "append": {
            "events_per_s": median_of(appends, "events_per_s"),
            "p50_ms": median_of(appends, "p50_ms"),
            "p95_ms": median_of(appends, "p95_ms"),
            "chain_check": intact,
            "reps": appends,
        },
        "bulk": bulk,
        "export_verify": {**{k: median_of(exports, k) for k in keys}, "events": exports[0]["events"], "reps": exports},
    }


def bench_review(cfg, env: dict) -> dict:
    sizes = "100,1000" if cfg.quick else "100,10000"
    requests = 20 if cfg.quick else 100
    settle(cfg)
    return run_json([PYTHON, str(ROOT / "bench" / "review_bench.py"), sizes, str(requests), str(cfg.reps)], env)


def start_worker(env: dict, work_dir: Path) -> subprocess.Popen:
    """A real Celery worker on the bench broker (its own Redis database) and the bench database."""
    celery = str(VENV_BIN / "celery") if (VENV_BIN / "celery").exists() else "celery"
    cmd = [celery, "-A", "config", "worker", "-P", "solo", "-l", "info", "-n", f"bench-{os.getpid()}@%h"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    log = (work_dir / "celery.log").open("wb")
    return spawn(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def bench_rollback(cfg, env: dict, port: int, work_dir: Path) -> dict:
    """Through the product (API request -> Celery worker -> adapter -> HAProxy), plus the adapter alone."""
    flush_broker()  # approvals of the load test queued reconciles of target `load`; not this worker's job
    worker = start_worker(env, work_dir)
    script = str(ROOT / "bench" / "rollback_bench.py")
    out = {}
    try:
        settle(cfg)
        res = run_json([PYTHON, script, "product", str(port), str(cfg.rollbacks * cfg.reps), "10"], env, timeout=900)
        print(
            f"  via API + worker, {res['rollbacks']} rollbacks: p50 {res['p50_ms']:.1f} ms, "
            f"p95 {res['p95_ms']:.1f} ms, "
            f"client requests {res['client_requests_ok']} ok / {res['client_requests_failed']} failed",
            flush=True,
        )
        out["product"] = res
    finally:
        _children.remove(worker)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    reps = []
    for rep in range(cfg.reps):
        settle(cfg)
        res = run_json([PYTHON, script, str(cfg.rollbacks), "10"], timeout=600)
        reps.append(res)
        print(
            f"  adapter only, rep {rep + 1}: p50 {res['p50_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms, client requests "
            f"{res['client_requests_ok']} ok / {res['client_requests_failed']} failed",
            flush=True,
        )
    out["adapter"] = {
        "p50_ms": median_of(reps, "p50_ms"),
        "p95_ms": median_of(reps, "p95_ms"),
        "client_requests_failed": sum(r["client_requests_failed"] for r in reps),
        "client_requests_ok": sum(r["client_requests_ok"] for r in reps),
        "reps": reps,
    }
    return out


def ol_event(run_id: str, job: str, inputs: list[str], outputs: list[str]) -> dict:
    def ds(name):
        return {"namespace": "s3://bench-lake", "name": name, "facets": {}}

    return {
        "eventType": "COMPLETE",
        "eventTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "producer": "https://github.com/example/bench",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": run_id, "facets": {}},
        "job": {"namespace": "bench", "name": job, "facets": {}},
        "inputs": [ds(n) for n in inputs],
        "outputs": [ds(n) for n in outputs],
    }


def load_setup(env: dict, port: int, pool: int, rng) -> dict:
    """Users, tokens, model bench/load with lineage, target `load` and `pool` pending promotion requests."""
    owner = (
        manage(
            env,
            "create_api_token",
            "bench",
            "--name",
            "load",
            "--scopes",
            "read,models:write,versions:write,promotions:write,lineage:write",
        )
        .strip()
        .splitlines()[-1]
        .strip()
    )
    reviewer = (
        manage(
            env,
            "create_api_token",
            "bench-load-reviewer",
            "--scopes",
            "read,approvals:write",
            "--create-user",
            "--roles",
            "reviewers",
        )
        .strip()
        .splitlines()[-1]
        .strip()
    )
    admin = (
        manage(env, "create_api_token", "bench-load-admin", "--scopes", "read,deployments:write", "--create-user")
        .strip()
        .splitlines()[-1]
        .strip()
    )
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.filter(username='bench-load-admin').update(is_superuser=True, is_staff=True)",
    )
    api, admin_api = Api(port, owner), Api(port, admin)
    api.once("POST", "/api/v1/models/", {"namespace": NAMESPACE, "name": "load"}, expect=(201,))
    admin_api.once(
        "POST",
        "/api/v1/targets/",
        {
            "name": "load",
            "kind": "self_hosted",
            "stage": "production",
            "config": {"backend": "load"},
            "policy": {"approvals_required": 1, "approver_groups": ["reviewers"], "requester_can_approve": False},
        },
        expect=(201,),
    )
    # lineage: raw -> prep -> features; features + labels -> train_i -> model-files-i -> version i (one training run
    # per version, as CI does). The graph queries start at these versions.
    prep = str(uuid_mod.uuid4())
    api.once(
        "POST",
        "/api/v1/lineage",
        ol_event(prep, "prep", ["raw/clicks", "raw/accounts"], ["features"]),
        expect=(200, 201),
    )
    base = f"/api/v1/models/{NAMESPACE}/load"

    def body(i: int, run_id: str) -> bytes:
        payload = json.loads(registration_body("load-pool", i, rng))
        payload["run_id"] = run_id
        return json.dumps(payload).encode()

    for i in range(LINEAGE_VERSIONS):
        train = str(uuid_mod.uuid4())
        event = ol_event(train, "train", ["features", "labels"], [f"model-files-{i}"])
        api.once("POST", "/api/v1/lineage", event, expect=(200, 201))
        api.once("POST", f"{base}/versions/", json.loads(body(i, train)), expect=(201,))
    # the pool of versions to promote: each names its own (not ingested) training run
    per = -(-pool // 8)
    work = [
        [("POST", f"{base}/versions/", body(LINEAGE_VERSIONS + c * per + i, str(uuid_mod.uuid4()))) for i in range(per)]
        for c in range(8)
    ]
    run_load(api, work, expect=201)
    api.once("PUT", f"{base}/aliases/champion", {"version": 1})
    promote = [
        [
            (
                "POST",
                "/api/v1/promotions/",
                json.dumps(
                    {"model": f"{NAMESPACE}/load", "version": LINEAGE_VERSIONS + c * per + i + 1, "target": "load"}
                ).encode(),
            )
            for i in range(per)
        ]
        for c in range(8)
    ]
    run_load(api, promote, expect=201)
    with psycopg.connect(dbname=DB_NAME, **PG) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT p.id FROM governance_promotionrequest p "
                "JOIN governance_deploymenttarget t ON t.id = p.target_id WHERE t.name = 'load' AND p.state = 'pending'"
            ).fetchall()
        ]
    return {
        "owner_token": owner,
        "reviewer_token": reviewer,
        "promotion_ids": ids,
        "lineage_versions": list(range(1, LINEAGE_VERSIONS + 1)),
        "model": f"{NAMESPACE}/load",
    }


def bench_load(cfg, env: dict, port: int, work_dir: Path, rng) -> dict:
    # approvals are 10 % of the mix; sized for up to 3 requests/s per client (about 2 in the fifth session, when
    # a pool sized for 1 ran out and the rest of the approval picks resolved the alias instead)
    pool_needed = int(cfg.load_clients * cfg.load_seconds * 3.0 * 0.10) * cfg.reps + 200
    print(
        f"  set-up: model bench/load with lineage, target `load`, {pool_needed} pending promotion requests", flush=True
    )
    setup = load_setup(env, port, pool_needed, rng)
    reps = []
    ids = setup["promotion_ids"]
    for rep in range(cfg.reps):
        share = ids[rep :: cfg.reps]
        config = {
            **setup,
            "promotion_ids": share,
            "port": port,
            "clients": cfg.load_clients,
            "seconds": cfg.load_seconds,
        }
        path = work_dir / "load.json"
        path.write_text(json.dumps(config))
        quiet = settle(cfg)
        res = {
            **run_json([PYTHON, str(ROOT / "bench" / "load.py"), str(path)], timeout=cfg.load_seconds + 300),
            **quiet,
        }
        reps.append(res)
        print(
            f"  rep {rep + 1}: {res['clients']} clients x {res['seconds']:.0f} s: {res['requests_ok']} ok, "
            f"{res['requests_failed']} failed, {res['requests_per_s']:.0f} req/s, p95 {res['all']['p95_ms']:.0f} ms",
            flush=True,
        )
    actions = {}
    for name in reps[0]["actions"]:
        rows = [r["actions"][name] for r in reps]
        actions[name] = {
            "ok": sum(r["ok"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "p50_ms": statistics.median(r["p50_ms"] for r in rows),
            "p95_ms": statistics.median(r["p95_ms"] for r in rows),
            "p99_ms": statistics.median(r["p99_ms"] for r in rows),
        }
    return {
        "clients": cfg.load_clients,
        "seconds": cfg.load_seconds,
        "requests_per_s": median_of(reps, "requests_per_s"),
        "requests_ok": sum(r["requests_ok"] for r in reps),
        "requests_failed": sum(r["requests_failed"] for r in reps),
        "p50_ms": statistics.median(r["all"]["p50_ms"] for r in reps),
        "p95_ms": statistics.median(r["all"]["p95_ms"] for r in reps),
        "actions": actions,
        "reps": reps,
    }


def flush_broker() -> None:
    """Drop the reconcile tasks the approvals queued (our own Redis database only)."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), timeout=5) as s:
        s.sendall(f"*2\r\n$6\r\nSELECT\r\n${len(str(BROKER_DB))}\r\n{BROKER_DB}\r\n*1\r\n$7\r\nFLUSHDB\r\n".encode())
        s.recv(100)


# --------------------------------------------------------------------------------------------
# machine and main
# --------------------------------------------------------------------------------------------


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
    with psycopg.connect(dbname="postgres", **PG) as conn:
        pg_version = conn.execute("SELECT version()").fetchone()[0]
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('synchronous_commit', 'fsync', 'shared_buffers', 'max_connections', 'wal_sync_method')"
            ).fetchall()
        )
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "postgresql": pg_version,
        "postgresql_settings": settings,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "round_trip": round_trips(),
    }


def probe_queries(env: dict, token: str) -> dict:
    probe = subprocess.run(
        [PYTHON, str(ROOT / "bench" / "probe.py"), token],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if probe.returncode != 0:
        raise RuntimeError(f"probe failed:\n{probe.stdout}\n{probe.stderr}")
    return json.loads(probe.stdout)


def write_results(output: Path, results: dict) -> None:
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten: {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}", flush=True)


def print_table(results: dict) -> None:
    reg, reads = results.get("registration") or {}, results.get("reads") or {}
    rows = [("benchmark", "figure", "client", "server", "goal")]

    def ms(x):
        return f"{x:.2f} ms" if x is not None else "-"

    for c in ("1", "8") if reg else ():
        r = reg[f"{c}_client"]
        rows.append((f"register, {c} client(s)", "versions/s", f"{r['versions_per_s']:.0f}", "", ""))
        rows.append(("", "raw INSERT tps (pgbench)", f"{r['raw_insert_tps']:.0f}", "", ""))
        rows.append(("", "% of raw", f"{r['pct_of_raw']:.2f}%", "", ">= 3%" if c == "8" else ""))
        rows.append(("", "p50", ms(r["p50_ms"]), ms(r["server_p50_ms"]), "< 3 ms" if c == "1" else ""))
        rows.append(("", "p95", ms(r["p95_ms"]), ms(r["server_p95_ms"]), "< 50 ms" if c == "8" else ""))
        rows.append(("", "p99", ms(r["p99_ms"]), "", ""))
    for name, r in reads.items():
        goal = "< 5 ms (server)" if name in ("version get", "alias resolve") else "< 30 ms"
        if name.startswith("list: ") and name[6:] in EXTRA_FILTERS:
            goal = "(extra)"
        rows.append((name, "p50", ms(r["p50_ms"]), ms(r["server_p50_ms"]), ""))
        rows.append(("", "p95", ms(r["p95_ms"]), ms(r["server_p95_ms"]), goal))
    if "review" in results:
        for r in results["review"].values():
            for label in ("first page", "last page", "model page, first", "model page, last"):
                x = r[label]
                if label.startswith("model"):
                    what = f"model page, {r['versions']} versions, {label.removeprefix('model page, ')} page"
                else:
                    what = f"review queue, {r['pending']} pending, {label}"
                rows.append(
                    (
                        what,
                        "p50 / p95",
                        f"{x['p50_ms']:.1f} / {x['p95_ms']:.1f} ms",
                        "",
                        f"SQL {x['sql_statements']}",
                    )
                )
    if "load" in results:
        r = results["load"]
        rows.append(
            (
                f"load, {r['clients']} clients x {r['seconds']} s",
                "req/s, failed",
                f"{r['requests_per_s']:.0f}, {r['requests_failed']}",
                "",
                "0 errors",
            )
        )
        for name, a in r["actions"].items():
            rows.append(
                (
                    f"  {name}",
                    "p50 / p95",
                    f"{a['p50_ms']:.0f} / {a['p95_ms']:.0f} ms",
                    "",
                    f"{a['ok']} ok {a['errors']} err",
                )
            )
    if "audit" in results:
        a, e = results["audit"]["append"], results["audit"]["export_verify"]
        rows.append(
            (
                "audit append, 8 writers",
                "events/s, p95",
                f"{a['events_per_s']:.0f}, {a['p95_ms']:.1f} ms",
                "",
                a["chain_check"][:40],
            )
        )
        rows.append(
            (
                f"audit export {e['events']:,}",
                "events/s, RSS",
                f"{e['export_events_per_s']:,.0f}, {e['export_worker_peak_rss_mb']:.0f} MB",
                "",
                ">= 200,000/s, < 100 MB",
            )
        )
        rows.append(
            (
                f"audit export {e['events']:,} (audit_export)",
                "events/s, RSS",
                f"{e['command_events_per_s']:,.0f}, {e['command_peak_rss_mb']:.0f} MB",
                "",
                ">= 200,000/s, < 100 MB",
            )
        )
        rows.append(
            (
                f"audit verify {e['events']:,}",
                "events/s, RSS",
                f"{e['verify_events_per_s']:,.0f}, {e['verify_peak_rss_mb']:.0f} MB",
                "",
                ">= 200,000/s, < 100 MB",
            )
        )
    for kind in ("product", "adapter") if "rollback" in results else ():
        r = results["rollback"][kind]
        rows.append(
            (
                f"rollback ({'API + worker' if kind == 'product' else 'adapter only'})",
                "p50 / p95",
                f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} ms",
                "",
                f"< 1 s; failed {r['client_requests_failed']}",
            )
        )
    if "lineage" in results:
        for case, r in results["lineage"]["cases"].items():
            rows.append(
                (
                    f"lineage: {case[:60]}",
                    "p50 / p95",
                    f"{r['p50_ms']} / {r['p95_ms']} ms",
                    "",
                    "< 50 ms" if case.startswith("upstream depth 20 from a model version (superuser)") else "",
                )
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    for i, row in enumerate(rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and one repetition (smoke run)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3, quick 1)")
    parser.add_argument("--versions", type=int, default=100_000, help="versions bulk-inserted for list/get")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"gunicorn workers (default cores + 1 = {DEFAULT_WORKERS})"
    )
    # The defaults are gunicorn.conf.py's, the production set-up.
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (gthread only; default 4)")
    parser.add_argument("--worker-class", default="gthread", help="gthread (default) or sync")
    parser.add_argument("--profile", dest="profile", action="store_true", default=None)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="before each measurement wait up to this many seconds for other load to drop (default 60, quick 0)",
    )
    parser.add_argument("--busy-below", type=float, default=25.0, help="'quiet' = machine CPU busy below this %%")
    parser.add_argument(
        "--only",
        default=",".join(ALL_BENCHMARKS),
        help=f"comma-separated subset of: {', '.join(ALL_BENCHMARKS)} (default all)",
    )
    parser.add_argument("--load-seconds", type=int, default=None, help="load test duration (default 60, quick 15)")
    parser.add_argument("--load-clients", type=int, default=100, help="load test concurrent clients (default 100)")
    parser.add_argument(
        "--audit-events", type=int, default=None, help="events exported (default 1,000,000, quick 100,000)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    if args.worker_class == "sync":
        args.threads = 1  # gunicorn turns sync workers with --threads > 1 into gthread workers

    cfg = argparse.Namespace(
        reps=args.reps or (1 if args.quick else 3),
        reg_total={1: 100, 8: 400} if args.quick else {1: 1000, 8: 2000},
        pgbench_seconds=3 if args.quick else 10,
        reads=300 if args.quick else 2000,
        lists=100 if args.quick else 500,
        settle=args.settle if args.settle is not None else (0 if args.quick else 60),
        busy_below=args.busy_below,
        quick=args.quick,
        audit_per_writer=100 if args.quick else 500,
        audit_events=args.audit_events or (100_000 if args.quick else 1_000_000),
        rollbacks=10 if args.quick else 30,
        load_clients=args.load_clients,
        load_seconds=args.load_seconds or (15 if args.quick else 60),
    )
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(ALL_BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL_BENCHMARKS)}")
    profile = args.profile if args.profile is not None else not args.quick
    try:
        preflight(only)
    except RuntimeError as exc:
        parser.error(str(exc))

    atexit.register(_stop_children)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)  # noqa: S311 - benchmark data, not security
    started = dt.datetime.now(dt.UTC)
    work_dir = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    # Filled in as each benchmark ends and written even when a later one fails, marked incomplete.
    results = {
        "date": started.date().isoformat(),
        "started_at": started.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "repetitions": cfg.reps,
    }
    try:
        env = django_env(work_dir / "data")
        print(f"database {DB_NAME}: drop, create, migrate", flush=True)
        recreate_database()
        manage(env, "migrate", "--noinput")
        manage(env, "collectstatic", "--noinput")  # production settings serve hashed static names (UI pages)
        token = create_user_and_token(env)
        port = free_port()
        gunicorn = start_gunicorn(env, port, args, work_dir)
        results["server"] = server = {
            "command": f"gunicorn config.wsgi:application --workers {args.workers} --worker-class "
            f"{args.worker_class} --threads {args.threads} --keep-alive 60",
            "keep_alive": args.worker_class != "sync",
            "settings": "DJANGO_DEBUG=0, SECURE_SSL_REDIRECT=0, DATABASE_CONN_MAX_AGE=60 (default)",
        }
        print(f"service: {server['command']} on 127.0.0.1:{port}", flush=True)
        api = Api(port, token)
        log = AccessLog(work_dir / "access.log")
        for name in (REG_MODEL, BIG_MODEL):
            api.once("POST", "/api/v1/models/", {"namespace": NAMESPACE, "name": name}, expect=(201,))

        script = work_dir / "insert.sql"
        pgbench_prepare(script)
        if "registration" in only:
            print(f"1+2. registration vs pgbench ({cfg.reps} reps)", flush=True)
            results["registration"] = bench_registration(api, log, cfg, script, rng)

        if "reads" in only:
            print(f"bulk insert of {args.versions} versions into {NAMESPACE}/{BIG_MODEL}", flush=True)
            results["bulk_insert"] = bulk = bulk_insert_versions(args.versions)
            print(f"  {bulk['seconds']:.1f} s", flush=True)
            base = f"/api/v1/models/{NAMESPACE}/{BIG_MODEL}"
            api.once("PUT", f"{base}/aliases/champion", {"version": args.versions - 1})

            print("3. version get and alias resolution", flush=True)
            results["reads"] = reads = {}
            numbers = [rng.randint(1, args.versions) for _ in range(cfg.reads)]
            reads["version get"] = bench_reads(
                api, log, cfg, "version get", [f"{base}/versions/{n}" for n in numbers], r"/versions/\d+$"
            )
            reads["alias resolve"] = bench_reads(
                api, log, cfg, "alias resolve", [f"{base}/aliases/champion"] * cfg.reads, r"/aliases/champion$"
            )
            print(f"4. list/filter with {args.versions} versions", flush=True)
            for label, query in {**FILTERS, **EXTRA_FILTERS}.items():
                path = f"{base}/versions/" + (f"?{query}" if query else "")
                n = cfg.lists if label in FILTERS else max(20, cfg.lists // 10)
                reads[f"list: {label}"] = bench_reads(api, log, cfg, f"list: {label}", [path] * n, r"/versions/$")

            print("query counts and plans (in-process probe)", flush=True)
            results["queries"] = probe_queries(env, token)

        if "review" in only:
            print("5. review queue page (in-process, full Django stack)", flush=True)
            results["review"] = bench_review(cfg, env)
        if "load" in only:
            print(f"6. load test: {cfg.load_clients} clients x {cfg.load_seconds} s ({cfg.reps} reps)", flush=True)
            results["load"] = bench_load(cfg, env, port, work_dir, rng)
        if "audit" in only:
            print("7. audit: append with 8 writers; export + verify", flush=True)
            results["audit"] = bench_audit(cfg, env, port, gunicorn, work_dir)
        if "rollback" in only:
            print("8. rollback on the self-hosted target through HAProxy", flush=True)
            results["rollback"] = bench_rollback(cfg, env, port, work_dir)
        if "lineage" in only:
            print("9. lineage traversal (bench/lineage.py, its own database)", flush=True)
            results["lineage"] = bench_lineage(cfg)

        results["machine"] = machine()
        if profile:
            print("profile (py-spy) of an 8-client registration pass", flush=True)
            results["profile"] = bench_profile(api, gunicorn, cfg, rng)

        errors_logged = (work_dir / "gunicorn.log").read_text()
        results["gunicorn_errors"] = [ln for ln in errors_logged.splitlines() if "Traceback" in ln or "ERROR" in ln][
            :20
        ]
        print()
        print_table(results)
        write_results(args.output, results)
        return 0
    except BaseException as exc:
        # Beside the output, not over it: an aborted run must not replace the last complete figures.
        results["incomplete"] = f"stopped by {type(exc).__name__}: {exc}"
        write_results(args.output.with_suffix(".incomplete.json"), results)
        raise
    finally:
        _stop_children()
        flush_broker()
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
