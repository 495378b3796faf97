#!/usr/bin/env python
"""Lineage benchmark: a synthetic million-node graph, upstream depth-20 traversals, export throughput.

    .venv/bin/python bench/lineage.py [--runs 400000] [--queries 200] [--reuse] [--json out.json]

Creates (or, with --reuse, keeps) the PostgreSQL database `registry_bench_lineage`, migrates it
with the project's migrations and bulk-loads a synthetic lineage graph with COPY (psycopg),
indexes dropped during the load and rebuilt after, then VACUUM ANALYZE. Then, in this process,
through the project's own code (lineage.graph.walk: one recursive-CTE statement per traversal):

  1. upstream depth-20 traversals from model versions and from dataset versions: p50/p95/p99
     latency, nodes returned, truncated share; as the superuser (no permission filter), as a user
     who may view 10 models (the permission filter is part of the statement), and with as_of;
  2. export throughput (OpenLineage NDJSON, CSV, PROV-JSON) of upstream subgraphs: nodes/s, MB/s.

The graph: P pipelines x S stages (jobs) x D days. Each day every stage runs once; a run reads the
day's outputs of 4 to 7 earlier stages of its pipeline (stage 0 reads the day's raw source), its
own output of the previous day (incremental tables), and with 30% chance another pipeline's
stage-0 output (shared reference data); it writes its stage's dataset and, for half the stages,
a side dataset. The last stage of every pipeline registers a model version every 10th day
(ModelVersion.run_id = that run). Defaults: 200 x 20 x 100 = 400,000 runs, 620,000 dataset
versions and 2,000 model versions (1.02M nodes) and ~3.0M edges.
"""

# ruff: noqa: S311, S608 - seeded pseudo-random data; SQL built from this file's own table names

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "registry_bench_lineage"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
T_DSV, T_RUN, T_MODEL = 1, 2, 3
INPUT, OUTPUT = 1, 2
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- database ------------------------------------------------------------------------------------


def create_database(reuse: bool) -> bool:
    """Returns True when the graph must be loaded."""
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if exists and reuse:
            return False
        if exists:
            conn.execute(f'DROP DATABASE "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return True


def setup_django() -> None:
    os.environ["DATABASE_URL"] = f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{DB_NAME}"
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


# --- the synthetic graph -----------------------------------------------------------------------


class Generator:
    def __init__(self, pipelines: int, stages: int, days: int, seed: int = 7):
        self.P, self.S, self.D = pipelines, stages, days
        self.rng = random.Random(seed)
        self.side = {s: s % 2 == 1 for s in range(stages)}  # odd stages also write a side dataset
        # ids, assigned densely
        self.dataset_id = {}  # (p, s, kind) -> id; kind "main" | "side" | "raw"
        for p in range(pipelines):
            self.dataset_id[(p, -1, "raw")] = len(self.dataset_id) + 1
            for s in range(stages):
                self.dataset_id[(p, s, "main")] = len(self.dataset_id) + 1
                if self.side[s]:
                    self.dataset_id[(p, s, "side")] = len(self.dataset_id) + 1
        self.inputs = {}  # (p, s) -> earlier stages read
        for p in range(pipelines):
            for s in range(1, stages):
                k = min(s, self.rng.choice((4, 5, 6, 7)))
                self.inputs[(p, s)] = sorted(self.rng.sample(range(s), k))

    def job_id(self, p: int, s: int) -> int:
        return p * self.S + s + 1

    def run_id(self, p: int, s: int, d: int) -> int:
        return (d * self.P + p) * self.S + s + 1

    def run_uuid(self, run_id: int) -> uuid.UUID:
        return uuid.UUID(int=run_id)

    def dsv_id(self, dataset: int, d: int) -> int:
        return d * len(self.dataset_id) + dataset

    def when(self, d: int, s: int) -> datetime:
        return EPOCH + timedelta(days=d, minutes=s)


def _ts(value: datetime) -> str:
    return value.isoformat()


def _copy(cur, table: str, columns: list[str], rows) -> int:
    count = 0
    buffer = io.StringIO()
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            buffer.write("\t".join(r"\N" if v is None else str(v) for v in row))
            buffer.write("\n")
            count += 1
            if count % 50_000 == 0:
                copy.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()
        copy.write(buffer.getvalue())
    return count


def load(gen: Generator) -> dict:
    """COPY the graph in; returns counts."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    conn = psycopg.connect(dbname=db["NAME"], **PG)
    cur = conn.cursor()
    P, S, D = gen.P, gen.S, gen.D
    counts = {}

    # Secondary indexes off during the load, rebuilt after (the unique constraint too).
    cur.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'lineage_%%' AND indexname NOT LIKE '%%_pkey'"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = indexname)"
    )
    indexes = cur.fetchall()
    cur.execute(
        "SELECT conname, conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'u' AND conrelid::regclass::text LIKE 'lineage_%%'"
    )
    uniques = cur.fetchall()
    for name, table, _ in uniques:
        cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cur.execute(f'DROP INDEX IF EXISTS "{name}"')

    t0 = time.perf_counter()
    counts["jobs"] = _copy(
        cur,
        "lineage_job",
        ["id", "namespace", "name", "recorded_at"],
        ((gen.job_id(p, s), f"pipeline-{p:03d}", f"stage-{s:02d}", _ts(EPOCH)) for p in range(P) for s in range(S)),
    )
    names = {v: k for k, v in gen.dataset_id.items()}
    counts["datasets"] = _copy(
        cur,
        "lineage_dataset",
        ["id", "namespace", "name", "recorded_at"],
        (
            (i, "s3://bench-lake", f"p{p:03d}/{'raw' if kind == 'raw' else f's{s:02d}-{kind}'}", _ts(EPOCH))
            for i, (p, s, kind) in names.items()
        ),
    )

    def versions():
        for d in range(D):
            for i, (p, s, kind) in names.items():
                if kind == "raw":
                    version = "sha256:" + hashlib.sha256(f"raw {p} {d}".encode()).hexdigest()
                    yield gen.dsv_id(i, d), i, version, version, _ts(gen.when(d, 0)), _ts(gen.when(d, 0))
                else:
                    run = gen.run_uuid(gen.run_id(p, s, d))
                    yield gen.dsv_id(i, d), i, f"run:{run}", "", _ts(gen.when(d, s)), _ts(gen.when(d, s))

    counts["dataset_versions"] = _copy(
        cur,
        "lineage_datasetversion",
        ["id", "dataset_id", "version", "digest", "created_at", "recorded_at"],
        versions(),
    )
    counts["runs"] = _copy(
        cur,
        "lineage_run",
        ["id", "run_uuid", "job_id", "recorded_at"],
        (
            (gen.run_id(p, s, d), gen.run_uuid(gen.run_id(p, s, d)), gen.job_id(p, s), _ts(gen.when(d, s)))
            for d in range(D)
            for p in range(P)
            for s in range(S)
        ),
    )
    counts["events"] = _copy(
        cur,
        "lineage_lineageevent",
        [
            "id",
            "kind",
            "event_type",
            "event_time",
            "producer",
            "schema_url",
            "run_id",
            "job_id",
            "payload_sha256",
            "recorded_at",
        ],
        (
            (
                gen.run_id(p, s, d),
                "RunEvent",
                "COMPLETE",
                _ts(gen.when(d, s)),
                "https://bench.invalid/producer",
                "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
                gen.run_id(p, s, d),
                gen.job_id(p, s),
                "0" * 64,
                _ts(gen.when(d, s)),
            )
            for d in range(D)
            for p in range(P)
            for s in range(S)
        ),
    )
    schema = json.dumps(
        {
            "_producer": "https://bench.invalid",
            "_schemaURL": "https://bench.invalid/s",
            "fields": [{"name": f"c{i}", "type": "INT"} for i in range(8)],
        }
    )
    counts["facets"] = _copy(
        cur,
        "lineage_facet",
        ["id", "subject_type", "subject_id", "role", "name", "value", "run_id", "event_id", "recorded_at"],
        ((i, 5, i, 0, "schema", schema, None, 1, _ts(EPOCH)) for i in names),
    )

    def edges():
        rng = random.Random(11)
        for d in range(D):
            for p in range(P):
                for s in range(S):
                    run = gen.run_id(p, s, d)
                    when = _ts(gen.when(d, s))
                    sources = (
                        [gen.dataset_id[(p, -1, "raw")]]
                        if s == 0
                        else [gen.dataset_id[(p, x, "main")] for x in gen.inputs[(p, s)]]
                    )
                    reads = [gen.dsv_id(i, d) for i in sources]
                    if d > 0:
                        reads.append(gen.dsv_id(gen.dataset_id[(p, s, "main")], d - 1))
                    if s > 0 and rng.random() < 0.3:
                        other = rng.randrange(P)
                        if other != p:
                            reads.append(gen.dsv_id(gen.dataset_id[(other, 0, "main")], d))
                    for dsv in reads:
                        yield T_DSV, dsv, T_RUN, run, INPUT, when
                    yield T_RUN, run, T_DSV, gen.dsv_id(gen.dataset_id[(p, s, "main")], d), OUTPUT, when
                    if gen.side[s]:
                        yield T_RUN, run, T_DSV, gen.dsv_id(gen.dataset_id[(p, s, "side")], d), OUTPUT, when

    counts["edges"] = _copy(
        cur, "lineage_edge", ["src_type", "src_id", "dst_type", "dst_id", "kind", "recorded_at"], edges()
    )

    # Model versions: the last stage of every pipeline registers one every 10th day.
    cur.execute(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff,"
        " is_active, date_joined) VALUES ('!', true, 'bench-admin', '', '', '', true, true, now()),"
        " ('!', false, 'bench-viewer', '', '', '', false, true, now())"
    )
    _copy(
        cur,
        "registry_registeredmodel",
        ["id", "namespace", "name", "description", "created_at", "latest_number"],
        ((p + 1, "bench", f"model-{p:03d}", "", _ts(EPOCH), D // 10) for p in range(P)),
    )
    manifest = json.dumps({"files": [{"path": "model.bin", "size": 1, "sha256": "0" * 64}]})
    counts["model_versions"] = _copy(
        cur,
        "registry_modelversion",
        [
            "id",
            "model_id",
            "number",
            "digest",
            "manifest",
            "artifact_uri",
            "framework",
            "task",
            "params",
            "metrics",
            "metric_sources",
            "source",
            "run_id",
            "created_at",
            "tags",
            "status",
        ],
        (
            (
                p * D + d + 1,
                p + 1,
                d // 10 + 1,
                "sha256:" + hashlib.sha256(f"model {p} {d}".encode()).hexdigest(),
                manifest,
                f"s3://bench/model-{p}/{d}",
                "",
                "",
                "{}",
                "{}",
                "{}",
                "{}",
                gen.run_uuid(gen.run_id(p, S - 1, d)),
                _ts(gen.when(d, S)),
                "{}",
                "registered",
            )
            for p in range(P)
            for d in range(9, D, 10)
        ),
    )
    for table in (
        "lineage_job",
        "lineage_dataset",
        "lineage_datasetversion",
        "lineage_run",
        "lineage_lineageevent",
        "lineage_facet",
        "lineage_edge",
        "registry_registeredmodel",
        "registry_modelversion",
    ):
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    conn.commit()
    load_s = time.perf_counter() - t0
    log(f"COPY done in {load_s:.1f}s: {counts}")

    t1 = time.perf_counter()
    for _, definition in indexes:
        cur.execute(definition)
    for name, table, definition in uniques:
        cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    conn.commit()
    index_s = time.perf_counter() - t1
    log(f"indexes rebuilt in {index_s:.1f}s")
    conn.autocommit = True
    t2 = time.perf_counter()
    cur.execute("VACUUM ANALYZE")
    vacuum_s = time.perf_counter() - t2
    size = cur.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
    edge_size = cur.execute("SELECT pg_size_pretty(pg_total_relation_size('lineage_edge'))").fetchone()[0]
    conn.close()
    log(f"VACUUM ANALYZE in {vacuum_s:.1f}s; database {size}, lineage_edge with indexes {edge_size}")
    counts["nodes"] = counts["dataset_versions"] + counts["runs"] + counts["model_versions"]
    return {
        "counts": counts,
        "copy_s": round(load_s, 1),
        "index_s": round(index_s, 1),
        "vacuum_s": round(vacuum_s, 1),
        "database_size": size,
        "edge_table_size": edge_size,
    }


# --- measurements --------------------------------------------------------------------------------


def measure_walks(label: str, user, starts, *, depth: int, as_of=None, direction: str = "upstream") -> dict:
    from lineage import graph

    seen = graph.visibility(user)
    latencies, sizes, truncated, budget_hit = [], [], 0, 0
    for start in starts:
        t0 = time.perf_counter()
        result = graph.walk(user=user, start=start, direction=direction, depth=depth, as_of=as_of, seen=seen)
        latencies.append((time.perf_counter() - t0) * 1000)
        sizes.append(len(result.nodes))
        truncated += result.truncated
        budget_hit += result.rows >= graph.DEFAULT_BUDGET
    row = {
        "case": label,
        "queries": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1),
        "nodes_p50": int(percentile(sizes, 50)),
        "nodes_max": max(sizes),
        "truncated_share": round(truncated / len(latencies), 2),
        "budget_hit_share": round(budget_hit / len(latencies), 2),
    }
    log(f"{label}: {row}")
    return row


def measure_graph_calls(user, node_ids: list[str], *, depth: int) -> dict:
    """What GET /graph does minus HTTP: resolve the node id, permissions, walk, shape the JSON body."""
    from django.contrib.auth import get_user_model

    from lineage import selectors

    latencies, sizes = [], []
    for node_id in node_ids:
        fresh = get_user_model().objects.get(pk=user.pk)  # a new request: empty permission cache
        t0 = time.perf_counter()
        body = selectors.graph(
            user=fresh, query=selectors.GraphQuery(node_id=node_id, direction="upstream", depth=depth)
        )
        json.dumps(body)
        latencies.append((time.perf_counter() - t0) * 1000)
        sizes.append(len(body["nodes"]))
    row = {
        "case": "GET /graph minus HTTP: resolve, permissions, walk, JSON body (user viewing 10 models)",
        "queries": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1),
        "nodes_p50": int(percentile(sizes, 50)),
        "nodes_max": max(sizes),
    }
    log(f"{row['case']}: {row}")
    return row


def measure_exports(user, starts, *, depth: int) -> list[dict]:
    from lineage import exports, graph

    rows = []
    results = [graph.walk(user=user, start=s, direction="upstream", depth=depth) for s in starts]
    nodes = sum(len(r.nodes) for r in results)
    for fmt in ("openlineage", "csv", "prov-json"):
        t0 = time.perf_counter()
        size = 0
        for result in results:
            for chunk in exports.export(result, fmt):
                size += len(chunk)
        elapsed = time.perf_counter() - t0
        row = {
            "format": fmt,
            "subgraphs": len(results),
            "nodes": nodes,
            "bytes": size,
            "seconds": round(elapsed, 2),
            "nodes_per_s": round(nodes / elapsed),
            "mb_per_s": round(size / elapsed / 1e6, 2),
        }
        log(f"export {fmt}: {row}")
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=200)
    parser.add_argument("--stages", type=int, default=20)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200, help="traversals per case")
    parser.add_argument("--exports", type=int, default=30, help="subgraphs exported per format")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="keep an already loaded database")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    fresh = create_database(args.reuse)
    setup_django()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from guardian.shortcuts import assign_perm

    from lineage import nodes
    from registry.models import ModelVersion, RegisteredModel

    gen = Generator(args.pipelines, args.stages, args.days)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "shape": {"pipelines": gen.P, "stages": gen.S, "days": gen.D},
    }
    if fresh:
        log("migrating")
        call_command("migrate", verbosity=0)
        report["load"] = load(gen)
    else:
        log("reusing the loaded database")

    User = get_user_model()
    admin = User.objects.get(username="bench-admin")
    viewer = User.objects.get(username="bench-viewer")
    for model in RegisteredModel.objects.order_by("id")[:10]:
        assign_perm("registry.view_registeredmodel", viewer, model)
    with psycopg.connect(dbname=DB_NAME, **PG) as conn:
        report["server"] = {
            "postgres": conn.execute("SHOW server_version").fetchone()[0],
            "shared_buffers": conn.execute("SHOW shared_buffers").fetchone()[0],
        }

    rng = random.Random(3)
    versions = list(ModelVersion.objects.select_related("model").order_by("id"))
    model_starts = [
        nodes.resolve(nodes.model_id(v.model.namespace, v.model.name, v.number), admin)
        for v in rng.sample(versions, min(args.queries, len(versions)))
    ]
    visible = [v for v in versions if v.model_id <= 10]
    viewer_ids = [
        nodes.model_id(v.model.namespace, v.model.name, v.number)
        for v in rng.sample(visible, min(args.queries, len(visible)))
    ]
    viewer_starts = [nodes.resolve(node_id, viewer) for node_id in viewer_ids]
    dsv_starts = []
    for _ in range(args.queries):
        p, s, d = rng.randrange(gen.P), rng.randrange(gen.S), rng.randrange(gen.D // 2, gen.D)
        dsv = gen.dsv_id(gen.dataset_id[(p, s, "main")], d)
        dsv_starts.append(
            nodes.Start(
                f"dsv {dsv}", "datasetVersion", dsv, f"SELECT {T_DSV} AS t, %(start_pk)s AS id", {"start_pk": dsv}
            )
        )

    # Warm-up (plans, caches), not measured.
    measure_walks("warm-up", admin, model_starts[:20], depth=args.depth)
    report["traversals"] = [
        measure_walks("upstream depth 20 from a model version (superuser)", admin, model_starts, depth=args.depth),
        measure_walks(
            "upstream depth 20 from a model version (user viewing 10 models)", viewer, viewer_starts, depth=args.depth
        ),
        measure_walks("upstream depth 20 from a dataset version (superuser)", admin, dsv_starts, depth=args.depth),
        measure_walks(
            "upstream depth 20 from a model version, with as_of (every fact qualifies)",
            admin,
            model_starts,
            depth=args.depth,
            as_of=EPOCH + timedelta(days=gen.D),
        ),
    ]
    sources = []
    for _ in range(max(1, args.queries // 10)):
        p, d = rng.randrange(gen.P), rng.randrange(gen.D // 2)
        dsv = gen.dsv_id(gen.dataset_id[(p, -1, "raw")], d)
        sources.append(
            nodes.Start(
                f"dsv {dsv}", "datasetVersion", dsv, f"SELECT {T_DSV} AS t, %(start_pk)s AS id", {"start_pk": dsv}
            )
        )
    report["traversals"].append(
        measure_walks(
            "downstream depth 20 from a raw source version (fan-out across pipelines)",
            admin,
            sources,
            depth=args.depth,
            direction="downstream",
        )
    )
    report["traversals"].append(measure_graph_calls(viewer, viewer_ids, depth=args.depth))
    report["exports"] = measure_exports(admin, model_starts[: args.exports], depth=args.depth)
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
