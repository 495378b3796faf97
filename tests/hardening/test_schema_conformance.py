"""Regression tests for the schema mismatches schemathesis found (tests/hardening/test_schemathesis.py).

Each sends one real request to the live server and validates the response against
the generated OpenAPI schema with schemathesis' own checks (status code documented, Content-Type
documented, body conforms).
"""

import hashlib

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.hardening.conftest import FULL_CARD, MODEL, build_world

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def schema_dict(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        return SchemaGenerator().get_schema(request=None, public=True)


@pytest.fixture
def api(live_server, personas, memory_broker, schema_dict):
    schema = schemathesis.openapi.from_dict(schema_dict)
    world = build_world(personas)

    def call(method: str, template: str, persona: str = "admin", *, path=None, query=None, body=None, media=None):
        operation = schema[template][method]
        kwargs = {"path_parameters": path or {}, "query": query or {}}
        if body is not None:
            kwargs["body"] = body
            kwargs["media_type"] = media or "application/json"
        case = operation.Case(**kwargs)
        headers = {"Authorization": f"Bearer {world.personas[persona].token}"}
        response = case.call(base_url=live_server.url, headers=headers, timeout=60)
        case.validate_response(response, checks=CHECKS, headers=headers)
        return response

    call.world = world
    return call


MODEL_PATH = {"namespace": "acme", "name": "churn"}


def test_model_without_owner_group_conforms(api):
    # Bug: owner_group / created_by are null for a model without an owner group (or whose creator was
    # deleted), but the schema said string.
    response = api("GET", "/api/v1/models/{namespace}/{name}/", path=MODEL_PATH)
    assert response.status_code == 200
    assert response.json()["owner_group"] is None


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/api/v1/models/", {}),
        ("/api/v1/models/{namespace}/{name}/versions/", MODEL_PATH),
        ("/api/v1/promotions/", {}),
        ("/api/v1/targets/{name}/releases/", {"name": "prod"}),
        ("/api/v1/webhooks/", {}),
    ],
)
def test_paginated_lists_are_documented_as_pages(api, template, path):
    # Bug: cursor-paginated lists were documented as bare arrays; they answer {next, previous, results}.
    response = api("GET", template, path=path)
    assert response.status_code == 200
    assert set(response.json()) == {"next", "previous", "results"}


def test_webhook_deliveries_page_conforms(api):
    response = api("GET", "/api/v1/webhooks/{id}/deliveries/", path={"id": api.world.webhook_id})
    assert response.status_code == 200 and "results" in response.json()


@pytest.mark.parametrize("page_size", ["abc", "0", "-1", "501", ""])
def test_invalid_page_size_is_a_documented_400(api, page_size):
    # Bug: an invalid page_size was silently replaced by the default page size (200).
    response = api("GET", "/api/v1/models/", query={"page_size": page_size})
    assert response.status_code == 400
    assert response.json()["error"]["detail"] == {"page_size": ["page_size must be an integer from 1 to 500."]}


def test_valid_page_size_is_used(api):
    response = api("GET", "/api/v1/models/{namespace}/{name}/versions/", path=MODEL_PATH, query={"page_size": "1"})
    assert len(response.json()["results"]) == 1 and response.json()["next"]


@pytest.mark.parametrize(("fmt", "media"), [("ndjson", "application/x-ndjson"), ("csv", "text/csv")])
def test_audit_export_media_types_are_documented(api, fmt, media):
    # Bug: the export was documented as application/json; it streams NDJSON or CSV.
    response = api("GET", "/api/v1/audit/events", "auditor", query={"format": fmt})
    assert response.status_code == 200
    assert response.headers["content-type"][0].startswith(media)


def test_same_card_again_is_a_documented_200(api):
    # Bug: posting the card the latest revision already has answers 200 (nothing new), undocumented.
    path = {**MODEL_PATH, "number": 1}
    response = api(
        "POST",
        "/api/v1/models/{namespace}/{name}/versions/{number}/card/",
        "owner",
        path=path,
        body={"content": FULL_CARD},
    )
    assert response.status_code == 200
    assert response.json()["revision"] == 1


@pytest.mark.parametrize(
    ("method", "template", "persona", "path", "body", "status"),
    [
        ("GET", "/api/v1/models/{namespace}/{name}/", "outsider", MODEL_PATH, None, 404),
        ("PATCH", "/api/v1/models/{namespace}/{name}/", "reviewer", MODEL_PATH, {"description": "x"}, 403),
        ("PATCH", "/api/v1/models/{namespace}/{name}/", "owner", MODEL_PATH, {"nope": 1}, 400),
        ("POST", "/api/v1/targets/{name}/rollback/", "admin", {"name": "prod"}, {"reason": "r"}, 409),
        ("GET", "/api/v1/audit/head", "owner", {}, None, 403),
    ],
)
def test_error_responses_are_documented_with_the_error_body(api, method, template, persona, path, body, status):
    # Bug: no operation documented its 4xx responses or the {"error": {...}} body.
    response = api(method, template, persona, path=path, body=body)
    assert response.status_code == status
    assert set(response.json()["error"]) >= {"code", "message", "detail"}


def test_artifact_upload_conforms(api):
    blob = b"conformance bytes"
    digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
    response = api(
        "PUT",
        "/api/v1/models/{namespace}/{name}/artifacts/{digest}",
        "owner",
        path={**MODEL_PATH, "digest": digest},
        body=blob,
        media="application/octet-stream",
    )
    assert response.status_code == 201


def test_versions_list_is_a_page_of_versions(api):
    body = api("GET", "/api/v1/models/{namespace}/{name}/versions/", path=MODEL_PATH).json()
    assert [v["number"] for v in body["results"]] == [2, 1]
    assert body["results"][0]["model"] == "acme/churn" and f"{MODEL}" in "/api/v1/models/acme/churn"
