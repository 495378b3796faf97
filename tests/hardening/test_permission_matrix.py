"""Persona x operation permission matrix: every operation of the OpenAPI schema, exactly the documented access.

The operations come from the generated schema, so an endpoint added without a row here fails
`test_every_schema_operation_has_a_matrix_row`. Each row sends one request (with real path
parameters: see tests/hardening/conftest.py) as each of the six personas, every persona against
the same freshly seeded world (each request runs in a savepoint that is rolled back), and expects
exactly one status per persona. docs/permissions.md is this table in words.

Statuses: 404 where the persona may not see the object (its existence stays hidden, and the body
does not name it); 403 where it may see it but not act; 2xx where it may act. A few allowed actions
end in a documented state refusal instead of a 2xx (409), marked `state` below: the permission
check has passed, the state of the world refuses (e.g. rollback with no earlier release).
"""

import hashlib
import json
import uuid
from dataclasses import dataclass, field

from drf_spectacular.generators import SchemaGenerator

from tests.hardening.conftest import FULL_CARD, MODEL, POLICY, rolled_back
from tests.registry.helpers import register_body, s3_manifest

PERSONAS = ["admin", "owner", "reviewer", "auditor", "ci_bot", "outsider"]
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
NEW_BLOB = b"matrix bytes"
NEW_SHA = hashlib.sha256(NEW_BLOB).hexdigest()
RUN_ID = "0d4b5a8e-7f3c-4c4e-9a51-2f6c1b7e9d10"


def expect(admin, owner, reviewer, auditor, ci_bot, outsider) -> dict[str, int]:
    return dict(zip(PERSONAS, (admin, owner, reviewer, auditor, ci_bot, outsider), strict=True))


# The access classes of docs/permissions.md
def model_read(ok=200):  # model visible to its owners, reviewers, auditors, admins
    return expect(ok, ok, ok, ok, 404, 404)


def model_write(ok):  # register / manage on the model: its owners and admins
    return expect(ok, ok, 403, 403, 404, 404)


def target_read(ok=200):  # every role sees deployment targets; outsiders see none
    return expect(ok, ok, ok, ok, ok, 404)


def target_admin(ok):  # manage / deploy on a target: platform admins
    return expect(ok, 403, 403, 403, 403, 404)


def everyone(ok):
    return expect(ok, ok, ok, ok, ok, ok)


def admin_only(ok):  # platform configuration without per-object visibility (webhooks, targets)
    return expect(ok, 403, 403, 403, 403, 403)


@dataclass
class Row:
    path: str
    expected: dict[str, int]
    body: object = None
    content_type: str = "application/json"
    query: dict = field(default_factory=dict)
    state: str = ""  # why an allowed request ends in a non-2xx (the permission check passed)


def _lineage_event() -> dict:
    return {
        "eventType": "COMPLETE",
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": "https://example.com/trainer",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": RUN_ID, "facets": {}},
        "job": {"namespace": "ml", "name": "train-churn", "facets": {}},
        "inputs": [{"namespace": "s3://data", "name": "crm/2025", "facets": {}}],
        "outputs": [],
    }


def matrix(world) -> dict[str, Row]:
    """Key: "METHOD /schema/path/template". Paths are concrete (trailing slashes as the schema has them)."""
    t = "/api/v1/targets/prod"
    p = f"/api/v1/promotions/{world.promotion_id}"
    w = f"/api/v1/webhooks/{world.webhook_id}"
    v = f"{MODEL}/versions/1"
    node = "model:acme/churn:1"
    return {
        # --- accounts
        "GET /api/v1/me": Row("/api/v1/me", everyone(200)),
        "GET /api/v1/tokens/": Row("/api/v1/tokens/", everyone(200)),
        "POST /api/v1/tokens/": Row("/api/v1/tokens/", everyone(201), {"name": "ci", "scopes": ["read"]}),
        # The owner's spare token: its user and admins may see (and revoke) it; to anyone else it doesn't exist.
        "POST /api/v1/tokens/{token_id}/revoke": Row(
            f"/api/v1/tokens/{world.spare_token_ids['owner']}/revoke",
            expect(200, 200, 404, 404, 404, 404),
            {"reason": "rotated"},
        ),
        # --- audit
        "GET /api/v1/audit/events": Row("/api/v1/audit/events", expect(200, 403, 403, 200, 403, 403)),
        "GET /api/v1/audit/head": Row("/api/v1/audit/head", expect(200, 403, 403, 200, 403, 403)),
        # --- registry: models
        "GET /api/v1/models/": Row("/api/v1/models/", everyone(200)),
        "POST /api/v1/models/": Row(
            "/api/v1/models/", expect(201, 201, 403, 403, 201, 403), {"namespace": "acme", "name": "fraud"}
        ),
        "GET /api/v1/models/{namespace}/{name}/": Row(f"{MODEL}/", model_read()),
        "PATCH /api/v1/models/{namespace}/{name}/": Row(f"{MODEL}/", model_write(200), {"description": "churn"}),
        "GET /api/v1/models/{namespace}/{name}/aliases/": Row(f"{MODEL}/aliases/", model_read()),
        "GET /api/v1/models/{namespace}/{name}/aliases/{alias}": Row(f"{MODEL}/aliases/champion", model_read()),
        "DELETE /api/v1/models/{namespace}/{name}/aliases/{alias}": Row(f"{MODEL}/aliases/champion", model_write(204)),
        "PUT /api/v1/models/{namespace}/{name}/aliases/{alias}": Row(
            f"{MODEL}/aliases/champion", model_write(200), {"version": 2}
        ),
        "PUT /api/v1/models/{namespace}/{name}/artifacts/{digest}": Row(
            f"{MODEL}/artifacts/sha256:{NEW_SHA}",
            model_write((201, 200)),  # blobs live outside the database: the first writer stores, the rest find it
            NEW_BLOB,
            "application/octet-stream",
        ),
        "POST /api/v1/models/{namespace}/{name}/uploads/": Row(
            f"{MODEL}/uploads/",
            model_write(409),
            {"sha256": NEW_SHA, "size": len(NEW_BLOB)},
            state="presigned uploads need ARTIFACT_STORAGE=s3 (409 presign_unsupported on local storage)",
        ),
        "POST /api/v1/models/{namespace}/{name}/uploads/{upload_id}/complete/": Row(
            f"{MODEL}/uploads/{uuid.UUID(int=1)}/complete/",
            model_write(409),
            state="presigned uploads need ARTIFACT_STORAGE=s3 (409 presign_unsupported on local storage)",
        ),
        # --- registry: versions, cards, signatures
        "GET /api/v1/models/{namespace}/{name}/versions/": Row(f"{MODEL}/versions/", model_read()),
        "POST /api/v1/models/{namespace}/{name}/versions/": Row(
            f"{MODEL}/versions/", model_write(201), register_body(s3_manifest(b"v3"), metrics={"auc": 0.9})
        ),
        "GET /api/v1/models/{namespace}/{name}/versions/{number}/": Row(f"{v}/", model_read()),
        "PATCH /api/v1/models/{namespace}/{name}/versions/{number}/": Row(
            f"{v}/", model_write(200), {"tags": {"reviewed": "yes"}}
        ),
        "GET /api/v1/models/{namespace}/{name}/versions/{number}/card/": Row(f"{v}/card/", model_read()),
        "POST /api/v1/models/{namespace}/{name}/versions/{number}/card/": Row(
            f"{v}/card/", model_write(201), {"content": {**FULL_CARD, "model_details": "v1, revised"}}
        ),
        "GET /api/v1/models/{namespace}/{name}/versions/{number}/card/revisions/": Row(
            f"{v}/card/revisions/", model_read()
        ),
        "GET /api/v1/models/{namespace}/{name}/versions/{number}/signature/": Row(f"{v}/signature/", model_read()),
        "POST /api/v1/models/{namespace}/{name}/versions/{number}/signature/": Row(
            f"{v}/signature/",
            model_write(200),
            world.extra["bundle"],  # v1's latest bundle again: that record
        ),
        # --- governance: targets and policies
        "GET /api/v1/targets/": Row("/api/v1/targets/", everyone(200)),
        "POST /api/v1/targets/": Row(
            "/api/v1/targets/",
            admin_only(201),
            {
                "name": "staging",
                "kind": "self_hosted",
                "stage": "staging",
                "config": {"backend": "staging"},
                "policy": POLICY,
            },
        ),
        "GET /api/v1/targets/{name}/": Row(f"{t}/", target_read()),
        "GET /api/v1/targets/{name}/policy/": Row(f"{t}/policy/", target_read()),
        "PUT /api/v1/targets/{name}/policy/": Row(f"{t}/policy/", target_admin(200), POLICY),
        # A model's override needs the target and the model visible; setting it needs manage on the target.
        "GET /api/v1/targets/{name}/policies/{namespace}/{model_name}/": Row(
            f"{t}/policies/acme/churn/", expect(200, 200, 200, 200, 404, 404)
        ),
        "PUT /api/v1/targets/{name}/policies/{namespace}/{model_name}/": Row(
            f"{t}/policies/acme/churn/", target_admin(200), POLICY
        ),
        "GET /api/v1/targets/{name}/releases/": Row(f"{t}/releases/", target_read()),
        "GET /api/v1/targets/{name}/served-at/": Row(
            f"{t}/served-at/", target_read(), query={"at": "2026-01-01T00:00:00Z"}
        ),
        "POST /api/v1/targets/{name}/rollback/": Row(
            f"{t}/rollback/",
            target_admin(409),
            {"reason": "bad canary"},
            state="prod has no earlier release that served (409 nothing_to_roll_back_to)",
        ),
        # --- governance: promotions (model acme/churn x target prod; owner requested it)
        "GET /api/v1/promotions/": Row("/api/v1/promotions/", everyone(200)),
        "POST /api/v1/promotions/": Row(
            "/api/v1/promotions/", model_write(201), {"model": "acme/churn", "version": 2, "target": "prod"}
        ),
        "POST /api/v1/promotions/dry-run/": Row(
            "/api/v1/promotions/dry-run/", model_read(), {"model": "acme/churn", "version": 1, "target": "prod"}
        ),
        "GET /api/v1/promotions/{id}/": Row(f"{p}/", model_read()),
        # Reviewing is for the policy's approver groups (reviewers), never the requester; admins get no exemption.
        "POST /api/v1/promotions/{id}/approve/": Row(
            f"{p}/approve/", expect(403, 403, 200, 403, 404, 404), {"comment": "ok"}
        ),
        "POST /api/v1/promotions/{id}/reject/": Row(
            f"{p}/reject/", expect(403, 403, 200, 403, 404, 404), {"comment": "needs eval"}
        ),
        # Cancelling is for the requester and the model's managers.
        "POST /api/v1/promotions/{id}/cancel/": Row(f"{p}/cancel/", model_write(200), {"reason": "not now"}),
        # --- lineage (datasets, jobs, runs: every reader; model version nodes follow the model)
        "POST /api/v1/lineage/": Row("/api/v1/lineage/", everyone(201), _lineage_event()),
        "GET /api/v1/lineage/graph/": Row("/api/v1/lineage/graph/", model_read(), query={"nodeId": node}),
        "GET /api/v1/lineage/export/": Row(
            "/api/v1/lineage/export/", model_read(), query={"nodeId": node, "format": "openlineage"}
        ),
        "GET /api/v1/lineage/trail/": Row("/api/v1/lineage/trail/", model_read(), query={"nodeId": node}),
        "POST /api/v1/lineage/links/": Row(
            "/api/v1/lineage/links/", model_write(201), {"nodeId": node, "runId": RUN_ID}
        ),
        # --- webhooks: platform configuration, admins only
        "GET /api/v1/webhooks/": Row("/api/v1/webhooks/", admin_only(200)),
        "POST /api/v1/webhooks/": Row(
            "/api/v1/webhooks/",
            admin_only(201),
            {"name": "siem", "url": "http://127.0.0.1:9/siem", "event_types": ["*"]},
        ),
        "GET /api/v1/webhooks/{id}/": Row(f"{w}/", admin_only(200)),
        "PATCH /api/v1/webhooks/{id}/": Row(f"{w}/", admin_only(200), {"active": False}),
        "DELETE /api/v1/webhooks/{id}/": Row(f"{w}/", admin_only(204)),
        "GET /api/v1/webhooks/{id}/deliveries/": Row(f"{w}/deliveries/", admin_only(200)),
        "POST /api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver/": Row(
            f"{w}/deliveries/{world.failed_delivery_id}/redeliver/", admin_only(202)
        ),
        "POST /api/v1/webhooks/{id}/rotate-secret/": Row(
            f"{w}/rotate-secret/", admin_only(200), {"grace_period_seconds": 3600}
        ),
    }


def schema_operations() -> list[str]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method in item
        if method in HTTP_METHODS
    )


def test_every_schema_operation_has_a_matrix_row(db):
    class Stub:
        promotion_id = cancelled_promotion_id = webhook_id = failed_delivery_id = foreign_token_id = 1
        spare_token_ids = {"owner": 1}
        extra = {"bundle": {}}

    operations = schema_operations()
    rows = matrix(Stub())
    assert len(operations) >= 50
    assert sorted(rows) == operations, {
        "operations without a matrix row": sorted(set(operations) - set(rows)),
        "rows for no operation": sorted(set(rows) - set(operations)),
    }
    for key, row in rows.items():
        assert set(row.expected) == set(PERSONAS), key
        for persona, status in row.expected.items():
            assert set(allowed(status)) <= {200, 201, 202, 204, 403, 404} or row.state, (key, persona, status)


def send(client, method: str, row: Row):
    kwargs = {}
    if method == "get":
        return client.get(row.path, row.query)
    if row.body is not None:
        if row.content_type == "application/json":
            kwargs = {"data": row.body, "format": "json"}
        else:
            kwargs = {"data": row.body, "content_type": row.content_type}
    path = row.path + ("?" + "&".join(f"{k}={v}" for k, v in row.query.items()) if row.query else "")
    return getattr(client, method)(path, **kwargs)


def allowed(expected) -> tuple[int, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def _mentions_hidden_name(row: Row) -> bool:
    return "acme/churn" in json.dumps([row.query, row.body if isinstance(row.body, dict) else None])


def test_persona_access(signed_world):
    """Every row as every persona, each request in a savepoint rolled back: all see the same world."""
    world = signed_world
    problems = []
    for operation, row in matrix(world).items():
        method = operation.split(" ", 1)[0].lower()
        for persona in PERSONAS:
            with rolled_back():
                response = send(world.personas[persona].client(), method, row)
                status = response.status_code
                body = b"".join(response) if response.streaming else response.content
            expected = row.expected[persona]
            if status not in allowed(expected):
                problems.append(f"{operation} as {persona}: expected {expected}, got {status}: {body[:300]!r}")
            elif status >= 400:
                assert json.loads(body)["error"]["code"], (operation, persona, body[:300])
                # Hidden: the body does not reveal the object, unless the request itself named it (then
                # the same words come back whether or not it exists).
                if status == 404 and not _mentions_hidden_name(row):
                    assert b"acme/churn" not in body, (operation, persona, body[:300])
    assert not problems, f"{len(problems)} cells differ from the documented matrix:\n" + "\n".join(problems)
