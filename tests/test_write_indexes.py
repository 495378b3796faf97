"""Every index on a table is paid by each insert into it: the audit log and the version table, written by
every registration, carry only indexes something reads (audit 0006, registry 0006)."""

import pytest
from django.db import connection

from tests.registry.helpers import register_body, s3_manifest

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's catalog and planner")


def index_definitions(table: str) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table])
        return dict(cursor.fetchall())


def test_audit_log_has_no_pattern_ops_indexes(db):
    indexes = index_definitions("audit_auditevent")
    assert not [name for name, definition in indexes.items() if "pattern_ops" in definition]
    # what is read stays indexed: events by action (drift count, trail sections), hashes unique
    assert any(d.endswith("USING btree (action)") for d in indexes.values()), indexes
    assert any(d.startswith("CREATE UNIQUE INDEX") and d.endswith("USING btree (hash)") for d in indexes.values())


def test_versions_by_model_use_an_index_that_starts_with_the_model(db, personas):
    indexes = index_definitions("registry_modelversion")
    assert not [name for name, d in indexes.items() if d.endswith("USING btree (model_id)")], indexes
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "idx"}, format="json").status_code == 201
    body = register_body(s3_manifest(b"w"), metrics={"auc": 0.9})
    assert client.post("/api/v1/models/acme/idx/versions/", body, format="json").status_code == 201
    with connection.cursor() as cursor:
        # what a model's deletion asks (PROTECT), with sequential scans priced out: an index serves it
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            "EXPLAIN SELECT 1 FROM registry_modelversion WHERE model_id = "
            "(SELECT id FROM registry_registeredmodel WHERE name = 'idx')"
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index" in plan and "registry_version_" in plan, plan
