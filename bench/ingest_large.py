"""Large OpenLineage events over real HTTP: how long one POST /api/v1/lineage takes, by size.

    .venv/bin/python bench/ingest_large.py [--sizes 400,1000] [--rounds 3] [--columns 30] [--output FILE]
    .venv/bin/python bench/ingest_large.py --base /tmp/base      # A/B: a checkout of the code before, interleaved

Each event is a COMPLETE RunEvent of N inputs and N outputs, every dataset with a `schema` facet of C columns and
a `columnLineage` facet mapping each column (what openlineage-spark sends for a wide job; N=1000, C=30 is 12.3 MB).
Each POST names new datasets, so every facet is stored (the most work an event of that size can make). One
gunicorn per checkout as bench/run.py starts it (production settings, a database of its own), with one sync worker:
one event at a time, as an OpenLineage client sends them. Timed on the client (the openlineage-python HTTP
transport's default timeout is 5 s) and by gunicorn (server side). With --base, the two checkouts take turns,
A B B A ..., so both see the same machine (bench/ab.py); the figures are medians over the rounds.
"""

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import run  # bench/run.py: processes, settings, gunicorn

PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.40.0/integration/spark"


def dataset(name: str, columns: int) -> dict:
    return {
        "namespace": "s3://lake",
        "name": name,
        "facets": {
            "schema": {
                "_producer": PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-1-1/SchemaDatasetFacet.json",
                "fields": [{"name": f"col_{i}", "type": "VARCHAR"} for i in range(columns)],
            },
            "columnLineage": {
                "_producer": PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-2-0/ColumnLineageDatasetFacet.json",
                "fields": {
                    f"col_{i}": {
                        "inputFields": [
                            {
                                "namespace": "s3://lake",
                                "name": "src",
                                "field": f"col_{i}",
                                "transformations": [{"type": "DIRECT", "subtype": "IDENTITY"}],
                            }
                        ]
                    }
                    for i in range(columns)
                },
            },
        },
    }


def event(tag: str, size: int, columns: int) -> bytes:
    body = {
        "eventType": "COMPLETE",
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": str(uuid.uuid4()), "facets": {}},
        "job": {"namespace": "spark", "name": f"wide.{tag}", "facets": {}},
        "inputs": [dataset(f"{tag}/in/{i}", columns) for i in range(size)],
        "outputs": [dataset(f"{tag}/out/{i}", columns) for i in range(size)],
    }
    return json.dumps(body).encode()


def prepare(tree: Path, name: str, work: Path, broker_url: str) -> dict:
    data_dir = work / name
    server = argparse.Namespace(workers=1, worker_class="sync", threads=1)
    port, token = run.serve_checkout(
        tree,
        f"registry_ingest_{name.lower()}",
        data_dir,
        server,
        user="ingest",
        scopes="lineage:write",
        extra_env={"CELERY_BROKER_URL": broker_url},
    )
    return {
        "tree": str(tree),
        "port": port,
        "token": token,
        "log": run.AccessLog(data_dir / "access.log"),
    }


def post(side: dict, body: bytes) -> tuple[float, float]:
    """One POST on a fresh connection: (client seconds, gunicorn's seconds)."""
    mark = side["log"].mark()
    conn = http.client.HTTPConnection("127.0.0.1", side["port"], timeout=600)
    started = time.perf_counter()
    conn.request(
        "POST",
        "/api/v1/lineage",
        body,
        {"Content-Type": "application/json", "Authorization": f"Bearer {side['token']}"},
    )
    response = conn.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 201:
        raise RuntimeError(f"{side['tree']}: HTTP {response.status}: {answer[:300]!r}")
    server = side["log"].server_ms(mark, "POST", r"/api/v1/lineage$")
    return elapsed, server["p50_ms"] / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=run.ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--base", type=Path, help="a checkout to compare with (A), taking turns with --tree (B)")
    parser.add_argument("--sizes", default="400,1000", help="inputs (= outputs) per event, comma-separated")
    parser.add_argument("--columns", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker-url", default=run.BROKER_URL, help="where audit tasks go (no worker consumes them)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    trees = {"A": args.base, "B": args.tree} if args.base else {"B": args.tree}
    times: dict[str, dict[int, list]] = {name: {size: [] for size in sizes} for name in trees}
    with tempfile.TemporaryDirectory(prefix="registry-ingest-") as tmp:
        try:
            sides = {name: prepare(tree.resolve(), name, Path(tmp), args.broker_url) for name, tree in trees.items()}
            for name, side in sides.items():  # the worker's imports, connection and caches
                post(side, event(f"warm{name}", 5, args.columns))
            for n in range(args.rounds):
                order = list(sides) if n % 2 == 0 else list(sides)[::-1]
                for size in sizes:
                    for name in order:
                        body = event(f"r{n}s{size}{name}", size, args.columns)  # new datasets: every facet stored
                        client, server = post(sides[name], body)
                        times[name][size].append({"client_s": client, "server_s": server, "bytes": len(body)})
                        print(f"round {n + 1} {name} {size}/{size} ({len(body) / 1e6:.1f} MB): {client:.2f} s")
        finally:
            run._stop_children()
    summary = {
        name: {
            "tree": str(trees[name]),
            **{
                f"{size}x{size}": {
                    "bytes": reps[0]["bytes"],
                    "client_s_median": statistics.median(r["client_s"] for r in reps),
                    "server_s_median": statistics.median(r["server_s"] for r in reps),
                    "client_s": [round(r["client_s"], 3) for r in reps],
                }
                for size, reps in times[name].items()
            },
        }
        for name in trees
    }
    for name, result in summary.items():
        for case, r in result.items():
            if case != "tree":
                print(f"{name} {case}: client {r['client_s_median']:.2f} s, server {r['server_s_median']:.2f} s")
    if args.output:
        args.output.write_text(json.dumps({"machine": run.machine(), "columns": args.columns, **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
