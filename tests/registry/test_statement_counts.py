"""SQL statements per request on the hot API paths (what CI pipelines and deployers call most): a fixed
number whatever the data, and none of them a lazy load of something the response does not show."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.registry.helpers import register_body, s3_manifest

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
        # + the model with codenames; in the transaction, one statement bumps the number (model row lock),
        # inserts the version and appends its audit event; savepoint and release around it (the digest's
        # unique constraint decides a repeat)
        ("post", f"{BASE}/versions/", register_body(s3_manifest(b"new"), metrics={"auc": 0.8}), 201, 5),
    ],
)
def test_hot_paths_run_a_fixed_number_of_statements(owner, method, path, body, status, count):
    statements(owner, "get", f"{BASE}/versions/1")  # the token's last_used_at is written at most once a minute
    sql = statements(owner, method, path, body, status)
    assert len(sql) == count, "\n".join(sql)
    assert not [q for q in sql if 'FROM "auth_group"' in q], "a lazy load of the model's owner group"
