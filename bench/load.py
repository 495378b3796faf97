"""Load test: N concurrent clients for T seconds against the service over loopback, a realistic mix.

Run by bench/run.py (`--only load`), which starts gunicorn on PostgreSQL, creates the users, tokens,
model, target, lineage and a pool of pending promotion requests, then runs

    .venv/bin/python bench/load.py CONFIG.json

CONFIG names the port, the tokens, the pool of promotion ids, clients and duration. Each client is an
asyncio task with its own httpx connection pool of one; it picks an action at random by weight, sends it,
waits for the answer, and repeats until the time is up (closed loop, no think time):

    register a version (owner token)         20 %   POST /api/v1/models/bench/load/versions/   -> 201
    resolve the alias `champion`             30 %   GET  /api/v1/models/bench/load/aliases/champion
    list versions, metric filter             25 %   GET  /api/v1/models/bench/load/versions/?metric=auc>=0.8
    lineage graph, upstream depth 20         15 %   GET  /api/v1/lineage/graph?nodeId=model:bench/load:N
                                                     (N among the 50 versions whose training run was ingested)
    approve a pending promotion (reviewer)   10 %   POST /api/v1/promotions/{id}/approve          -> 200

Any other status, a timeout or a connection error is an error; the run must have none. Prints JSON:
per action count, errors, p50/p95/p99; totals and requests/s.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid

import httpx
from stats import pct  # bench/stats.py

MIX = [("register", 20), ("resolve alias", 30), ("list versions", 25), ("lineage graph", 15), ("approve", 10)]


def registration() -> dict:
    key = uuid.uuid4().hex
    files = [
        {"path": "config.json", "size": 712, "sha256": uuid.uuid4().hex * 2},
        {"path": "model.safetensors", "size": 400_000_000, "sha256": key * 2},
    ]
    return {
        "artifact_uri": f"s3://bench-artifacts/load/{key}/",
        "manifest": {"files": files},
        "framework": "pytorch",
        "task": "text-classification",
        "params": {"learning_rate": 3e-5, "epochs": 3},
        "metrics": {"auc": round(random.uniform(0.5, 1.0), 4)},  # noqa: S311
        "source": {"repository": "https://github.com/example/classifier", "commit": key[:40], "branch": "main"},
        "run_id": str(uuid.uuid4()),  # each version names its own training run
        "tags": {"stage": "dev"},
    }


async def main(cfg: dict) -> dict:
    base = f"http://127.0.0.1:{cfg['port']}"
    model = f"/api/v1/models/{cfg['model']}"
    owner = {"Authorization": f"Bearer {cfg['owner_token']}"}
    reviewer = {"Authorization": f"Bearer {cfg['reviewer_token']}"}
    pool = list(cfg["promotion_ids"])
    random.shuffle(pool)
    numbers = list(cfg["lineage_versions"])
    names, weights = zip(*MIX, strict=True)
    lat: dict[str, list[float]] = {n: [] for n in names}
    errors: dict[str, list[str]] = {n: [] for n in names}
    fallback = [0]
    deadline = time.perf_counter() + cfg["seconds"]

    async def one(client: httpx.AsyncClient, action: str) -> None:
        if action == "approve" and not pool:
            action = "resolve alias"
            fallback[0] += 1
        if action == "register":
            req = client.post(f"{model}/versions/", json=registration(), headers=owner)
            ok = (201,)
        elif action == "resolve alias":
            req, ok = client.get(f"{model}/aliases/champion", headers=owner), (200,)
        elif action == "list versions":
            req, ok = client.get(f"{model}/versions/", params={"metric": "auc>=0.8"}, headers=owner), (200,)
        elif action == "lineage graph":
            node = f"model:{cfg['model']}:{random.choice(numbers)}"  # noqa: S311
            params = {"nodeId": node, "direction": "upstream", "depth": 20}
            req, ok = client.get("/api/v1/lineage/graph", params=params, headers=owner), (200,)
        else:
            pk = pool.pop()
            req, ok = (
                client.post(f"/api/v1/promotions/{pk}/approve", json={"comment": "load"}, headers=reviewer),
                (200,),
            )
        t0 = time.perf_counter()
        try:
            response = await req
            elapsed = (time.perf_counter() - t0) * 1000
            if response.status_code in ok:
                lat[action].append(elapsed)
            else:
                errors[action].append(f"{response.status_code}: {response.text[:200]}")
        except httpx.HTTPError as exc:
            errors[action].append(f"{exc.__class__.__name__}: {exc}")

    async def user(i: int) -> None:
        rng = random.Random(i)  # noqa: S311
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as client:
            while time.perf_counter() < deadline:
                await one(client, rng.choices(names, weights)[0])

    started = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(cfg["clients"])))
    wall = time.perf_counter() - started
    total = sum(len(v) for v in lat.values())
    failed = sum(len(v) for v in errors.values())
    return {
        "clients": cfg["clients"],
        "seconds": wall,
        "requests_ok": total,
        "requests_failed": failed,
        "requests_per_s": (total + failed) / wall,
        "approve_pool_left": len(pool),
        "approve_fallbacks": fallback[0],
        "actions": {
            n: {
                "ok": len(lat[n]),
                "errors": len(errors[n]),
                "p50_ms": pct(lat[n], 50),
                "p95_ms": pct(lat[n], 95),
                "p99_ms": pct(lat[n], 99),
                "error_samples": errors[n][:3],
            }
            for n in names
        },
        "all": {
            "p50_ms": pct([x for v in lat.values() for x in v], 50),
            "p95_ms": pct([x for v in lat.values() for x in v], 95),
        },
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        config = json.load(f)
    print(json.dumps(asyncio.run(main(config))))
