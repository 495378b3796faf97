"""The service's public surface: the OpenAPI schema, Swagger UI and the health/readiness probes."""

import socket

import pytest
import yaml
from django.core.management import call_command
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from config.celery import app as celery_app

OPENAPI_JSON = "application/vnd.oai.openapi+json"


@pytest.fixture
def schema(db) -> dict:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT=OPENAPI_JSON)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith(OPENAPI_JSON)
    return response.json()


def test_schema_validates(schema):
    validate(schema)
    assert schema["openapi"].startswith("3.")


def test_schema_describes_the_api(schema):
    paths = schema["paths"]
    for path in ["/api/v1/me", "/api/v1/tokens/", "/api/v1/tokens/{token_id}/revoke", "/api/v1/audit/events"]:
        assert path in paths, sorted(paths)
    assert all(path.startswith("/api/v1/") for path in paths), sorted(paths)
    bearer_auth = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer_auth["type"], bearer_auth["scheme"]) == ("http", "bearer")
    assert {"bearerAuth": []} in paths["/api/v1/me"]["get"]["security"]
    export_params = {p["name"] for p in paths["/api/v1/audit/events"]["get"]["parameters"]}
    assert {"format", "since", "until", "subject_type", "subject_id", "actor", "after_seq"} <= export_params
    create = paths["/api/v1/tokens/"]["post"]
    assert "201" in create["responses"]


def test_an_artifact_upload_documents_its_411(schema):
    """A chunked upload is a 411 (docs/artifacts.md): a schema-driven client must find the status there."""
    [path] = [p for p in schema["paths"] if p.endswith("/artifacts/{digest}")]
    put = schema["paths"][path]["put"]["responses"]
    assert put["411"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_schema_as_yaml_matches_json(schema):
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    assert yaml.safe_load(response.content) == schema


def test_schema_generation_emits_no_warnings(db, capsys):
    GENERATOR_STATS.reset()
    generated = SchemaGenerator().get_schema(request=None, public=True)
    assert not GENERATOR_STATS, (
        f"warnings: {dict(GENERATOR_STATS._warn_cache)} errors: {dict(GENERATOR_STATS._error_cache)}"
    )
    validate(generated)
    assert "Warning" not in capsys.readouterr().err


def test_spectacular_command_fail_on_warn(db, tmp_path):
    GENERATOR_STATS.reset()
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(target))
    validate(yaml.safe_load(target.read_text()))


@pytest.mark.django_db
def test_swagger_ui_is_served():
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content
    script = APIClient().get("/api/docs/?script=")  # the page's own script, a file (the CSP allows no inline one)
    assert script.status_code == 200 and b"/api/schema/" in script.content


# --- probes ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz():
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_ok():
    response = APIClient().get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture
def unreachable_broker(monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it over conf.broker_url
    saved = celery_app.conf.broker_url
    celery_app.conf.broker_url = f"redis://127.0.0.1:{_closed_port()}/0"
    try:
        yield
    finally:
        celery_app.conf.broker_url = saved
    assert celery_app.conf.broker_url == saved


@pytest.mark.django_db
def test_readyz_503_when_the_broker_is_unreachable(unreachable_broker):
    response = APIClient().get("/readyz")
    assert response.status_code == 503, response.content
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error: ")
