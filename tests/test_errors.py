"""Every error leaves the API as {"error": {"code", "message", "detail"}} with a 4xx for bad input."""

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import RequestDataTooBig
from django.test import override_settings
from rest_framework.test import APIClient

from accounts import scopes, services
from accounts.models import ApiToken
from core.api import exception_handler
from core.errors import PayloadTooLarge
from core.parsers import BoundedJSONParser
from tests.conftest import bearer

TOKENS = "/api/v1/tokens/"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"code", "message", "detail"} <= set(error)
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user(username="writer", password=None)


@pytest.fixture
def writer(user):
    """A client with a token holding every scope (lighter than the six personas)."""
    return bearer(services.token_create(actor="test", user=user, name="all", scopes=list(scopes.ALL)).plaintext)


def post_raw(client, body: str | bytes, content_type: str = "application/json"):
    return client.generic("POST", TOKENS, body, content_type=content_type)


@pytest.mark.parametrize("body", ['{"name": "x", "scopes": ["read"]', "{'name': 'x'}", "not json", '{"a": NaN'])
def test_malformed_json(writer, body):
    error = error_of(post_raw(writer, body), 400, "malformed_json")
    assert "JSON" in error["message"]
    assert not ApiToken.objects.filter(name="x").exists()


def test_invalid_utf8_is_malformed(writer):
    error_of(post_raw(writer, b'{"name": "\xff\xfe"}'), 400, "malformed_json")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x", "scopes": "read"}, "scopes"),
        ({"name": "x", "scopes": [1]}, "scopes"),
        ({"name": ["x"], "scopes": ["read"]}, "name"),
        ({"name": {"a": 1}, "scopes": ["read"]}, "name"),
        ({"name": "x", "scopes": ["read"], "expires_in_days": "soon"}, "expires_in_days"),
        ({"name": "x", "scopes": ["read"], "expires_in_days": 1.5}, "expires_in_days"),
        ({"name": "x", "scopes": ["read"], "expires_in_days": 0}, "expires_in_days"),
        ({"name": "x", "scopes": ["nope"]}, "scopes"),
        ({"scopes": ["read"]}, "name"),
    ],
)
def test_wrong_types_name_the_field(writer, payload, field):
    error = error_of(writer.post(TOKENS, payload, format="json"), 400, "invalid")
    assert field in error["message"]
    assert field in error["detail"]


@pytest.mark.parametrize("body", ["[]", "[1, 2]", '"text"', "42", "null", "true"])
def test_non_object_body_is_400(writer, body):
    error_of(post_raw(writer, body), 400, "invalid")


def test_unknown_field_is_named(writer):
    error = error_of(
        writer.post(TOKENS, {"name": "x", "scopes": ["read"], "is_superuser": True}, format="json"), 400, "invalid"
    )
    assert "is_superuser" in error["message"]
    assert "is_superuser" in error["detail"]
    assert "Allowed" in error["message"]


def test_oversize_body_is_413(writer):
    payload = {"name": "x" * 500, "scopes": ["read"]}
    with override_settings(MAX_JSON_BODY_BYTES=200):
        error = error_of(writer.post(TOKENS, payload, format="json"), 413, "payload_too_large")
    assert "200" in error["message"]
    assert error["detail"] == {"limit_bytes": 200}
    assert not ApiToken.objects.filter(name="x" * 500).exists()


def test_body_at_the_limit_is_parsed(writer):
    body = json.dumps({"name": "small", "scopes": ["read"]})
    with override_settings(MAX_JSON_BODY_BYTES=len(body)):
        response = post_raw(writer, body)
    assert response.status_code == 201, response.content


def test_json_bodies_have_one_limit_above_djangos_own(writer, settings):
    """A JSON body between Django's limit on a body it reads whole (DATA_UPLOAD_MAX_MEMORY_SIZE) and
    MAX_JSON_BODY_BYTES is parsed: DRF read a JSONParser's body through request.body, where Django's limit
    answered first, with a 413 that named no limit."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"name": "big", "scopes": ["read"], "padding": "x" * 2000})
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE < len(body) <= settings.MAX_JSON_BODY_BYTES
    error = error_of(post_raw(writer, body), 400, "invalid")  # parsed: the unknown field is named
    assert "padding" in error["detail"]


def test_a_json_body_longer_than_declared_is_413(settings, rf):
    """The parser reads at most one byte past the limit, whatever Content-Length says (under ASGI the body is
    not cut at the declared length)."""
    settings.MAX_JSON_BODY_BYTES = 100
    body = json.dumps({"name": "x" * 200}).encode()
    request = rf.post(TOKENS, b"{}", content_type="application/json")
    assert request.META["CONTENT_LENGTH"] == "2"
    with pytest.raises(PayloadTooLarge) as refused:
        BoundedJSONParser().parse(io.BytesIO(body), "application/json", {"request": request})
    assert refused.value.detail == {"limit_bytes": 100}
    assert "more than 100 bytes" in refused.value.message


def test_djangos_own_body_limit_is_a_413_naming_it(settings):
    """Django raises RequestDataTooBig when a body read whole (`request.body`, `request.POST`) passes
    DATA_UPLOAD_MAX_MEMORY_SIZE: the handler's 413 names that limit (it said only "too large")."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = exception_handler(RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE."), {})
    assert response.status_code == 413
    error = response.data["error"]
    assert (error["code"], error["detail"]) == ("payload_too_large", {"limit_bytes": 1000})
    assert "1000 bytes" in error["message"]
    assert f"may be up to {settings.MAX_JSON_BODY_BYTES} bytes" in error["message"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", [TOKENS, "/api/v1/me", "/api/v1/audit/events"])
def test_missing_auth_is_401(path):
    error = error_of(APIClient().get(path), 401, "not_authenticated")
    assert "credentials" in error["message"].lower()


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer mgr_nope_nope", " ", "Bearer \t"])
def test_bad_authorization_header_is_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/me")
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] in {"authentication_failed", "not_authenticated"}
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/nope/", "/api/v1/tokens/123/nope"])
def test_unknown_api_route_is_json_404(path):
    error = error_of(APIClient().get(path), 404, "not_found")
    assert path in error["message"]


def test_unknown_object_is_json_404(writer):
    error = error_of(writer.post("/api/v1/tokens/999999/revoke", {}, format="json"), 404, "not_found")
    assert "999999" in error["message"]


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_wrong_method_is_405_with_a_token(writer, method):
    error = error_of(getattr(writer, method)(TOKENS, {}, format="json"), 405, "method_not_allowed")
    assert method.upper() in error["message"]


def test_wrong_method_is_405_with_a_session(user):
    client = APIClient()
    client.force_login(user)
    error_of(client.delete("/api/v1/me"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_wrong_content_type_is_415(writer, content_type):
    error = error_of(post_raw(writer, "name=x&scopes=read", content_type), 415, "unsupported_media_type")
    assert content_type.split(";")[0] in error["message"]


def test_error_carries_the_request_id(writer):
    response = writer.generic("POST", TOKENS, "{", content_type="application/json", HTTP_X_REQUEST_ID="req-123")
    assert response["X-Request-ID"] == "req-123"
    assert response.json()["error"]["request_id"] == "req-123"


def test_bearer_helper_and_unknown_token(db):
    error = error_of(bearer("mgr_abc_" + "x" * 40).get("/api/v1/me"), 401, "authentication_failed")
    assert "Invalid API token" in error["message"]


def test_deeply_nested_json_is_400(writer):
    depth = 100_000
    error = error_of(post_raw(writer, "[" * depth + "]" * depth), 400, "malformed_json")
    assert "nested" in error["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{"name": "x\\ud800", "scopes": ["read"]}', "the text at name"),
        ('{"name": "x", "scopes": ["read", "\\udfff"]}', "the text at scopes[1]"),
        ('{"name": "x", "scopes": ["read"], "\\ud800key": 1}', "the text at \\ud800key"),
        ('"\\ud800"', "the text"),
        ('{"name": "x", "scopes": ["read"], "k\\u0000": 1}', "the text at k\\u0000"),
    ],
)
def test_text_that_cannot_be_stored_is_malformed_json_naming_where(writer, body, where):
    """A \\uD800-\\uDFFF escape that is not half of a pair decodes to no character, and PostgreSQL stores no
    NUL: nothing could keep or send either."""
    error = error_of(post_raw(writer, body), 400, "malformed_json")
    assert f"{where} holds a " in error["message"]
    assert ("NUL character" if "u0000" in body else "lone surrogate") in error["message"]
    assert not ApiToken.objects.filter(name__startswith="x").exists()


def test_an_escaped_surrogate_pair_is_one_character(writer):
    response = post_raw(writer, '{"name": "emoji \\ud83d\\ude00", "scopes": ["read"]}')
    assert response.status_code == 201, response.content
    assert ApiToken.objects.get(name__startswith="emoji").name == "emoji \U0001f600"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/a%00b/x/versions/1",
        "/api/v1/models/a/x%00/aliases/champion",
        "/api/v1/targets/prod%00/releases",
        "/api/v1/models/a/b%0a/",
    ],
)
def test_a_control_character_in_the_path_is_the_unknown_route_404(writer, path):
    """%00 reached PostgreSQL as a NUL in a name (a 500); no name holds a control character."""
    error = error_of(writer.get(path), 404, "not_found")
    assert error["message"].startswith("No route matches")


def test_a_control_character_in_a_web_page_path_is_the_web_uis_404_page(user):
    """Outside /api/ the same unknown route is the web UI's HTML page: a person reads it in a browser."""
    client = APIClient()
    client.force_login(user)
    response = client.get("/targets/prod%00/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")
    assert b"<h1>Not found</h1>" in response.content and b"\x00" not in response.content


@pytest.mark.parametrize("number", ["1e400", "-1e999", "1.5e309"])
def test_a_number_too_large_for_a_double_is_malformed_json(writer, number):
    """json.loads turns 1e400 into infinity, which no jsonb column can store (it was a 500 in free-form JSON)."""
    error = error_of(post_raw(writer, f'{{"name": "x", "scopes": ["read"], "n": {number}}}'), 400, "malformed_json")
    assert f"the number {number} is too large" in error["message"]
