"""SQL statements per request on the hot API paths (what CI pipelines and deployers call most): a fixed
number whatever the data, and none of them a lazy load of something the response does not show."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.registry.helpers import register_body, s3_manifest
from tests.wire import wire_trace

BASE = "/api/v1/models/acme/churn"


@pytest.fixture
def owner(personas):
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    for i in range(3):
        body = register_body(s3_manifest(f"w{i}".encode()), metrics={"auc": 0.9})
        assert client.post(f"{BASE}/versions/", body, format="json").status_code == 201
    assert client.put(f"{BASE}/aliases/champion", {"version": 2}, format="json").status_code == 201
    return client


def statements(client, method: str, path: str, body=None, status: int = 200) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = getattr(client, method)(path, body, format="json") if body else getattr(client, method)(path)
    assert response.status_code == status, response.content
    return [q["sql"] for q in captured.captured_queries]


# The token look-up (with its user), then the request's own reads and writes. Under a model path the
# model, version or alias is read together with the user's codenames on the model (no permission query
# of its own); the model detail view reads owner group and creator through the ORM, then asks.
@pytest.mark.parametrize(
    ("method", "path", "body", "status", "count"),
    [
        ("get", f"{BASE}/versions/2", None, 200, 2),  # + the version with its model, creator, codenames
        ("get", f"{BASE}/aliases/champion", None, 200, 2),  # + the alias with version, model, editor, codenames
        ("get", BASE, None, 200, 3),  # + the model with its owner group and creator, the permission query
        ("get", f"{BASE}/versions/?metric=auc>=0.5", None, 200, 3),  # + the model with codenames, the page
        # + the model with codenames; one statement bumps the number (model row lock), inserts the version
        # and appends its audit event; inside the test's transaction a savepoint and release around it (the
        # digest's unique constraint decides a repeat), served in autocommit none (next test)
        ("post", f"{BASE}/versions/", register_body(s3_manifest(b"new"), metrics={"auc": 0.8}), 201, 5),
    ],
)
def test_hot_paths_run_a_fixed_number_of_statements(owner, method, path, body, status, count):
    statements(owner, "get", f"{BASE}/versions/1")  # the token's last_used_at is written at most once a minute
    sql = statements(owner, method, path, body, status)
    assert len(sql) == count, "\n".join(sql)
    assert not [q for q in sql if 'FROM "auth_group"' in q], "a lazy load of the model's owner group"


@pytest.mark.django_db(transaction=True)
def test_a_registration_served_in_autocommit_is_one_statement_without_a_savepoint(personas):
    """As the service runs it (no enclosing transaction): the registration's statement is its own
    transaction, so neither BEGIN/COMMIT nor a savepoint costs a round trip; a repeated digest fails that
    statement alone and the connection goes on (the existing version is returned)."""
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    body = register_body(s3_manifest(b"auto"), metrics={"auc": 0.8})
    statements(client, "get", BASE)  # the token's last_used_at is written at most once a minute
    with wire_trace() as wire:
        sql = statements(client, "post", f"{BASE}/versions/", body, status=201)
    assert len(sql) == 3, "\n".join(sql)
    assert sql[-1].startswith("WITH bumped AS"), sql[-1]
    assert "WITH bumped AS" in wire.text
    assert not re.search(r"\b(BEGIN|COMMIT|SAVEPOINT)\b", wire.text), wire.text  # what psycopg sent itself
    with wire_trace() as wire:
        statements(client, "post", f"{BASE}/versions/", body, status=200)
    assert "WITH bumped AS" in wire.text and "registry_version_unique_digest" in wire.text, wire.text
    assert not re.search(r"\b(BEGIN|COMMIT|SAVEPOINT)\b", wire.text), wire.text
    assert client.get(f"{BASE}/versions/1").json()["number"] == 1


def test_the_hot_statements_are_prepared_on_the_server(owner):
    """Parameters are bound server-side and psycopg prepares a statement once it has run 5 times on a
    connection (settings: DATABASE_PREPARED_STATEMENTS), so the token and version look-ups skip parsing
    and, with a generic plan, planning."""
    for number in (1, 2, 3, 1, 2, 3, 1, 2):
        statements(owner, "get", f"{BASE}/versions/{number}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert [p for p in prepared if "token_hash" in p], prepared
    assert [p for p in prepared if "registry_modelversion" in p and "$1" in p], prepared
