"""In-process probe for bench/run.py: SQL queries per request and plans of the list queries.

Run by run.py against the benchmark database (same environment as the service):

    python bench/probe.py <api token>  -> JSON on stdout

For each benchmarked endpoint it issues one request through Django's test client, counts the SQL
statements, keeps their text, and runs EXPLAIN (ANALYZE, BUFFERS) on the version list query.
"""

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

BASE = "/api/v1/models/bench/big"
LIST_QUERIES = {
    "list: metric+status": "?metric=auc%3E%3D0.9&status=registered",
    "list: tag": "?tag=stage%3Aprod",
    "list: first page": "",
    "list: rare metric (0.2%)": "?metric=auc%3E%3D0.999",
    "list: tag with no match": "?tag=stage%3Anone",
}


def main() -> int:
    token = sys.argv[1]
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {token}")
    requests = {
        "version get": ("get", f"{BASE}/versions/500", None),
        "alias resolve": ("get", f"{BASE}/aliases/champion", None),
        **{name: ("get", f"{BASE}/versions/{q}", None) for name, q in LIST_QUERIES.items()},
        "register": (
            "post",
            "/api/v1/models/bench/reg/versions/",
            {
                "artifact_uri": "s3://bench-artifacts/probe/",
                "manifest": {"files": [{"path": "model.bin", "size": 1, "sha256": "ab" * 32}]},
                "metrics": {"auc": 0.9},
            },
        ),
    }
    out = {}
    for name, (method, path, body) in requests.items():
        client.get(f"{BASE}/versions/1")  # warm caches (connection, permissions, URL resolver)
        with CaptureQueriesContext(connection) as captured:
            t0 = time.perf_counter()
            if method == "get":
                response = client.get(path)
            else:
                response = client.post(path, data=json.dumps(body), content_type="application/json")
            elapsed = (time.perf_counter() - t0) * 1000
        sqls = [q["sql"] for q in captured.captured_queries]
        entry = {
            "status": response.status_code,
            "queries": len(sqls),
            "in_process_ms": round(elapsed, 2),
            "sql": [s[:400] for s in sqls],
        }
        if name.startswith("list: "):
            main_sql = next(s for s in sqls if 'FROM "registry_modelversion"' in s and "LIMIT" in s)
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + main_sql)
                entry["plan"] = [row[0] for row in cursor.fetchall()]
        out[name] = entry
    json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
