"""Measure proposed fixes 1 and 2 from bench/README.md in-process, without changing project code.

    .venv/bin/python bench/proto_permissions.py current   # code as it is
    .venv/bin/python bench/proto_permissions.py patched   # with the fixes monkeypatched in

Runs against the `registry_bench` database a full `bench/run.py` leaves behind (models bench/big
with versions and alias `champion`, bench/reg, user `bench`). It creates one more API token and
registers a few hundred versions in bench/reg. Prints SQL statements per request and p50/p95.

Fix 1: one query for every codename the user holds on the object (model-wide or per object,
directly or through groups), memoized on the request's user. Fix 2: aliases select_related
updated_by.
"""

import atexit
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update(
    DJANGO_SETTINGS_MODULE="config.settings",
    DJANGO_DEBUG="0",
    SECRET_KEY="bench-proto-" + "x" * 40,
    SECURE_SSL_REDIRECT="0",
    ALLOWED_HOSTS="127.0.0.1",
    DATABASE_URL="postgres://postgres@127.0.0.1:5432/registry_bench",
    CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
    DATA_DIR=tempfile.mkdtemp(prefix="registry-bench-proto-"),
)
atexit.register(shutil.rmtree, os.environ["DATA_DIR"], True)

import django  # noqa: E402

django.setup()
logging.disable(logging.WARNING)

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from accounts import access, services  # noqa: E402
from registry import selectors  # noqa: E402
from registry.models import Alias  # noqa: E402

PERMS_SQL = """
SELECT p.codename FROM auth_permission p JOIN django_content_type ct ON ct.id = p.content_type_id
WHERE ct.app_label = %(app)s AND (
    p.id IN (SELECT permission_id FROM auth_user_user_permissions WHERE user_id = %(user)s)
 OR p.id IN (SELECT gp.permission_id FROM auth_group_permissions gp
             JOIN auth_user_groups ug ON ug.group_id = gp.group_id WHERE ug.user_id = %(user)s)
 OR p.id IN (SELECT permission_id FROM registry_registeredmodeluserobjectpermission
             WHERE user_id = %(user)s AND content_object_id = %(obj)s)
 OR p.id IN (SELECT gop.permission_id FROM registry_registeredmodelgroupobjectpermission gop
             JOIN auth_user_groups ug ON ug.group_id = gop.group_id
             WHERE ug.user_id = %(user)s AND gop.content_object_id = %(obj)s))
"""


def has_perm_one_query(user, codename: str, obj) -> bool:
    """Prototype only: covers RegisteredModel (the guardian tables are named for it)."""
    if not (user and user.is_active):
        return False
    if user.is_superuser:
        return True
    cache = user.__dict__.setdefault("_object_perm_cache", {})
    key = (obj._meta.label, obj.pk)
    if key not in cache:
        with connection.cursor() as cursor:
            cursor.execute(PERMS_SQL, {"app": obj._meta.app_label, "user": user.pk, "obj": obj.pk})
            cache[key] = {row[0] for row in cursor.fetchall()}
    return codename in cache[key]


def aliases_with_updated_by(*, model):
    return Alias.objects.filter(model=model).select_related("version", "updated_by").order_by("name")


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "current"
    if mode == "patched":
        access.has_perm = has_perm_one_query
        selectors.aliases = aliases_with_updated_by
    user = get_user_model().objects.get(username="bench")
    scopes = "read,models:write,versions:write"
    issued = services.token_create(actor="cli:bench-proto", user=user, name="proto", scopes=scopes)
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    statements = [0]

    def count(execute, sql, params, many, context):
        statements[0] += 1
        return execute(sql, params, many, context)

    def register(i: int):
        sha = hashlib.sha256(f"proto-{time.time_ns()}-{i}".encode()).hexdigest()
        body = {
            "artifact_uri": "s3://bench-artifacts/proto/",
            "manifest": {"files": [{"path": "model.bin", "size": 1, "sha256": sha}]},
            "metrics": {"auc": 0.9},
        }
        return client.post("/api/v1/models/bench/reg/versions/", data=json.dumps(body), content_type="application/json")

    cases = {
        "version get": lambda i: client.get("/api/v1/models/bench/big/versions/500"),
        "alias resolve": lambda i: client.get("/api/v1/models/bench/big/aliases/champion"),
        "list first page": lambda i: client.get("/api/v1/models/bench/big/versions/"),
        "register": register,
    }
    for name, call in cases.items():
        for i in range(20):
            call(i)
        times = []
        with connection.execute_wrapper(count):
            for i in range(300):
                statements[0] = 0
                t0 = time.perf_counter()
                response = call(100 + i)
                times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        print(
            f"{mode:8} {name:16} status {response.status_code} statements {statements[0]:2d} "
            f"p50 {times[150]:6.2f} ms p95 {times[285]:6.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
