"""A/B of two checkouts on this machine, interleaved: registration (or version get) throughput and latency.

This machine's speed drifts by tens of percent within minutes (bench/README.md), so two full runs of
bench/run.py at different times cannot compare two versions of the code. This script serves both
checkouts at once (one gunicorn each, on a database each, same settings as run.py) and alternates
short passes between them, A B B A A B ..., so both see the same machine; it reports each side's
median and the per-round ratio B/A.

    git worktree add /tmp/base <commit>  &&  ln -s "$PWD/.venv" /tmp/base/.venv
    .venv/bin/python bench/ab.py /tmp/base .  [--rounds 8] [--clients 8] [--requests 1200]
    .venv/bin/python bench/ab.py /tmp/base . --what get --clients 1 --requests 600   # version gets
    .venv/bin/python bench/ab.py . . --workers 5 --workers-b 2      # one checkout, two server set-ups

Each checkout is imported from its own directory (gunicorn runs there), with this checkout's venv.
"""

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import run  # bench/run.py: processes, payloads, the load client

NAMES = ("A", "B")
WARM_PER_CLIENT = 20  # registrations per client before the first pass; `get` passes read these versions


def prepare(tree: Path, name: str, work: Path, args) -> dict:
    data_dir = work / name
    workers = args.workers_b if name == "B" and args.workers_b else args.workers
    server = argparse.Namespace(**{**vars(args), "workers": workers})
    port, token = run.serve_checkout(
        tree,
        f"registry_ab_{name.lower()}",
        data_dir,
        server,
        user="bench",
        scopes="read,models:write,versions:write",
        group="model-owners",
    )
    api = run.Api(port, token)
    api.once("POST", "/api/v1/models/", {"namespace": run.NAMESPACE, "name": run.REG_MODEL})
    return {
        "tree": str(tree),
        "workers": workers,
        "api": api,
        "log": run.AccessLog(data_dir / "access.log"),
        "passes": [],
    }


def pass_work(args, key: str, rng: random.Random) -> tuple[list, int, str, str]:
    """One pass's requests per client, the expected status, and the access-log method and path to time."""
    per_client = args.requests // args.clients
    if args.what == "get":
        base = f"/api/v1/models/{run.NAMESPACE}/{run.REG_MODEL}/versions"
        last = WARM_PER_CLIENT * args.clients  # versions 1..last exist on both sides (warm-up)
        work = [
            [("GET", f"{base}/{rng.randint(1, last)}", None) for _ in range(per_client)] for _ in range(args.clients)
        ]
        return work, 200, "GET", r"/versions/\d+$"
    return run.registration_work(key, args.clients, per_client, rng), 201, "POST", r"/versions/$"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="checkout A (the baseline)")
    parser.add_argument("b", type=Path, help="checkout B")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1200, help="requests per pass (all clients)")
    parser.add_argument("--what", choices=("register", "get"), default="register", help="what each pass does")
    parser.add_argument("--workers", type=int, default=run.DEFAULT_WORKERS)
    parser.add_argument("--workers-b", type=int, help="B's gunicorn workers, if not --workers (compare set-ups)")
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    rng = random.Random(7)  # noqa: S311 - payload values, not secrets
    with tempfile.TemporaryDirectory(prefix="registry-ab-") as tmp:
        try:
            sides = {
                name: prepare(tree.resolve(), name, Path(tmp), args)
                for name, tree in zip(NAMES, (args.a, args.b), strict=True)
            }
            for name, side in sides.items():  # connections, workers' caches, the first versions
                warm = run.registration_work(f"warm-{name}", args.clients, WARM_PER_CLIENT, rng)
                run.run_load(side["api"], warm, expect=201)
            for n in range(args.rounds):
                order = NAMES if n % 2 == 0 else NAMES[::-1]  # A B, B A, ...: neither side always goes first
                for name in order:
                    side = sides[name]
                    work, expect, method, path_re = pass_work(args, f"{name}{n}", rng)
                    mark = side["log"].mark()
                    res = run.run_load(side["api"], work, expect=expect)
                    res["server"] = side["log"].server_ms(mark, method, path_re)
                    side["passes"].append(res)
                    print(
                        f"round {n + 1} {name}: {res['per_s']:.0f}/s, p50 {res['p50_ms']:.1f} ms, "
                        f"server p50 {res['server']['p50_ms']:.2f} ms, p95 {res['server']['p95_ms']:.2f} ms",
                        flush=True,
                    )
        finally:
            run._stop_children()
    summary = {}
    for name, side in sides.items():
        passes = side["passes"]
        summary[name] = {
            "tree": side["tree"],
            "workers": side["workers"],
            "per_s": statistics.median(p["per_s"] for p in passes),
            "p50_ms": statistics.median(p["p50_ms"] for p in passes),
            "server_p50_ms": statistics.median(p["server"]["p50_ms"] for p in passes),
            "server_p95_ms": statistics.median(p["server"]["p95_ms"] for p in passes),
            "passes": passes,
        }
    ratios = [b["per_s"] / a["per_s"] for a, b in zip(sides["A"]["passes"], sides["B"]["passes"], strict=True)]
    summary["B/A per round"] = ratios
    sides_text = " | ".join(
        f"{n} {summary[n]['per_s']:.0f}/s (p50 {summary[n]['p50_ms']:.1f} ms, server p50 "
        f"{summary[n]['server_p50_ms']:.2f} p95 {summary[n]['server_p95_ms']:.2f})"
        for n in NAMES
    )
    print(
        f"\n{args.what}: {sides_text} | B/A median {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
