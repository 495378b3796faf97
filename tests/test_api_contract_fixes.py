"""The API's contract at its edges: a query parameter given twice, the version tag filter's syntax, operation
descriptions, JSON errors Django raises itself (DEBUG off), the 406 in the schema, and query times without an
offset from UTC."""

import inspect
import io
import json
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, RequestFactory
from django.urls import get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.api.base import GovernedAPIView
from core.api import BaseAPIView
from registry.api.views import ModelScopedView
from tests.registry.helpers import register_body, s3_manifest

BASE = "/api/v1/models/acme/churn"
OPENAPI_JSON = "application/vnd.oai.openapi+json"


@pytest.fixture
def owner(personas):
    """acme/churn with versions 1 (deprecated, stage=dev), 2 (team=growth) and 3 (k8s:ns=prod, stage=a=b, k=v=x)."""
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    for i, tags in enumerate([{"stage": "dev"}, {"team": "growth"}, {"k8s:ns": "prod", "stage": "a=b", "k=v": "x"}]):
        body = register_body(s3_manifest(f"v{i}".encode()), tags=tags)
        assert client.post(f"{BASE}/versions/", body, format="json").status_code == 201
    assert client.patch(f"{BASE}/versions/1", {"status": "deprecated"}, format="json").status_code == 200
    return client


def numbers(client, query: dict) -> list[int]:
    response = client.get(f"{BASE}/versions/", query)
    assert response.status_code == 200, response.json()
    return [v["number"] for v in response.json()["results"]]


def invalid(response, parameter: str) -> str:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and parameter in error["message"], error
    return error["message"]


# --- 1. a parameter that takes one value, given twice, is a 400 naming it (it was the last one, silently) -------


@pytest.mark.parametrize(
    "query, parameter",
    [
        ("?status=deprecated&status=registered", "status"),
        ("?page_size=1&page_size=2", "page_size"),
        ("?cursor=a&cursor=b", "cursor"),
        ("?created_after=2026-01-01T00:00:00Z&created_after=2027-01-01T00:00:00Z", "created_after"),
    ],
)
def test_a_single_value_parameter_given_twice_is_a_400_naming_it(owner, query, parameter):
    message = invalid(owner.get(f"{BASE}/versions/{query}"), parameter)
    assert "Given 2 times" in message and "send it once" in message


def test_a_list_parameter_still_takes_several_values(owner):
    assert numbers(owner, {"tag": ["stage", "k8s"]}) == []  # both must hold
    assert numbers(owner, {"tag": ["stage", '"k8s:ns"']}) == [3]


def test_the_audit_export_refuses_two_actors(personas):
    auditor = personas["auditor"].client()
    invalid(auditor.get("/api/v1/audit/events?actor=admin&actor=ci_bot"), "actor")
    assert auditor.get("/api/v1/audit/events?actor=admin").status_code == 200


# --- 2. the tag filter: key=value as registry-cli --tag writes it, key:value kept, keys holding ":" -----------


def test_tag_key_equals_value_as_the_cli_writes_it(owner):
    assert numbers(owner, {"tag": "team=growth"}) == [2]  # was read as the key "team=growth": nothing
    assert numbers(owner, {"tag": "stage=a=b"}) == [3]  # split at the first "="
    assert numbers(owner, {"tag": "team=other"}) == []


def test_tag_key_colon_value_keeps_working(owner):
    assert numbers(owner, {"tag": "team:growth"}) == [2]
    assert numbers(owner, {"tag": "stage:dev"}) == [1]
    assert numbers(owner, {"tag": "team"}) == [2]


def test_a_key_holding_a_colon_or_equals_is_a_json_string(owner):
    assert numbers(owner, {"tag": '"k8s:ns"=prod'}) == [3]
    assert numbers(owner, {"tag": '"k8s:ns":prod'}) == [3]
    assert numbers(owner, {"tag": '"k8s:ns"'}) == [3]
    assert numbers(owner, {"tag": '"k=v"=x'}) == [3]
    assert numbers(owner, {"tag": '"k8s:ns"=dev'}) == []


@pytest.mark.parametrize(
    "tag, advice",
    [
        ("k8s:ns=prod", '"k8s:ns"=prod'),  # key k8s:ns, or key k8s with value ns=prod
        ("stage:a=b", "stage=a=b"),
        ('"k8s:ns', "JSON string"),
        ('"k8s:ns"prod', "JSON string"),
        ("=growth", "1 to"),
    ],
)
def test_a_tag_filter_read_two_ways_or_none_is_a_400_with_the_forms(owner, tag, advice):
    message = invalid(owner.get(f"{BASE}/versions/", {"tag": tag}), "tag")
    assert advice in message
    assert "key=value" in message and "key:value" in message


# --- 3. descriptions: a view's own docstring, never its bases' --------------------------------------------------


@pytest.fixture
def schema(db) -> dict:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT=OPENAPI_JSON)
    assert response.status_code == 200
    return response.json()


def operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield path, method, operation


def test_no_operation_is_described_by_a_base_views_docstring(schema):
    bases = [inspect.cleandoc(cls.__doc__).split("\n")[0] for cls in (BaseAPIView, GovernedAPIView, ModelScopedView)]
    described = {
        (path, method): op.get("description", "") for path, method, op in operations(schema) if op.get("description")
    }
    leaked = [key for key, text in described.items() if any(base in text for base in bases)]
    assert not leaked, leaked
    # a view's own docstring still describes it
    card = described[("/api/v1/models/{namespace}/{name}/versions/{number}/card/", "get")]
    assert card.startswith("A version's model card")


# --- 4. errors Django answers itself, with DEBUG off: JSON under /api/, HTML elsewhere ------------------------


def test_a_disallowed_host_under_api_is_the_json_400(settings, db):
    settings.DEBUG = False
    response = Client().get("/api/v1/me", HTTP_HOST="evil.example.com")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "bad_request" and "Host header" in error["message"]
    page = Client().get("/", HTTP_HOST="evil.example.com")
    assert page.status_code == 400 and page["Content-Type"].startswith("text/html")


def test_a_permission_denied_outside_drf_is_json_under_api(settings):
    settings.DEBUG = False
    handler = get_resolver().resolve_error_handler(403)  # as Django calls it for a PermissionDenied in a view
    api = handler(RequestFactory().get("/api/v1/anything"), exception=PermissionDenied())
    assert api.status_code == 403 and api["Content-Type"].startswith("application/json")
    assert b'"code": "forbidden"' in api.content
    page = handler(RequestFactory().get("/models/"), exception=PermissionDenied())
    assert page.status_code == 403 and page["Content-Type"].startswith("text/html")


# --- 5. the 406 of content negotiation is in the schema -----------------------------------------------------


def test_the_406_is_documented_where_it_is_answered(schema, owner, personas):
    paths = schema["paths"]
    version = paths["/api/v1/models/{namespace}/{name}/versions/{number}/"]["get"]["responses"]
    assert version["406"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    response = owner.get(f"{BASE}/versions/1", HTTP_ACCEPT="application/xml")
    assert response.status_code == 406 and response.json()["error"]["code"] == "not_acceptable"
    assert "406" in paths["/api/v1/me"]["get"]["responses"]
    assert "406" in paths["/api/v1/tokens/"]["post"]["responses"]
    # the audit export picks its media type by `format`: it never answers 406, nor documents one
    assert "406" not in paths["/api/v1/audit/events"]["get"]["responses"]
    export = personas["auditor"].client().get("/api/v1/audit/events", HTTP_ACCEPT="application/xml")
    assert export.status_code == 200


# --- 6. query times must name their offset from UTC --------------------------------------------------------


@pytest.mark.parametrize(
    "url, parameter",
    [
        (f"{BASE}/versions/?created_after=2026-12-07T23:00:00", "created_after"),
        (f"{BASE}/versions/?created_before=2026-12-07", "created_before"),  # a bare date: midnight where?
        ("/api/v1/audit/events?since=2026-12-07", "since"),
        ("/api/v1/audit/events?until=2026-12-07T23:00:00.5", "until"),
        ("/api/v1/lineage/graph?nodeId=model:acme/churn:1&as_of=2026-12-07T23:00:00", "as_of"),
    ],
)
def test_a_query_time_without_an_offset_is_a_400(owner, personas, url, parameter):
    message = invalid(personas["admin"].client().get(url), parameter)
    assert "add Z (UTC) or ±HH:MM" in message and "%2B" not in message


def test_a_plus_sent_unencoded_is_told_to_be_percent_encoded(owner):
    hour_ago = (timezone.now() - timedelta(hours=1)).astimezone(timezone.get_fixed_timezone(60))
    written = hour_ago.strftime("%Y-%m-%dT%H:%M:%S+01:00")
    message = invalid(owner.get(f"{BASE}/versions/?created_after={written}"), "created_after")  # "+" read as " "
    assert "percent-encode it as %2B" in message
    assert numbers(owner, {"created_after": written}) == [3, 2, 1]  # encoded by the client: %2B
    assert owner.get(f"{BASE}/versions/?created_after={quote(written)}").status_code == 200
    spaced = invalid(owner.get(f"{BASE}/versions/?created_after=2026-12-07%2023:00:00"), "created_after")
    assert "add Z (UTC)" in spaced and "%2B" in spaced


def test_times_with_an_offset_still_read(owner):
    hour_ago = timezone.now() - timedelta(hours=1)
    for written in (hour_ago.strftime("%Y-%m-%dT%H:%M:%SZ"), hour_ago.isoformat(), hour_ago.astimezone().isoformat()):
        assert numbers(owner, {"created_after": written}) == [3, 2, 1], written
    assert numbers(owner, {"created_before": hour_ago.strftime("%Y-%m-%dT%H:%M:%S-05:00")}) == [3, 2, 1]


def test_the_audit_export_command_refuses_a_time_without_an_offset(db):
    with pytest.raises(CommandError, match=r"--since: Give the time's offset from UTC"):
        call_command("audit_export", since="2026-12-07T23:00:00", stdout=io.StringIO(), stderr=io.StringIO())


def test_the_schema_answers_the_format_asked_for(client):
    """`?format=json` answered YAML: the project's `format` is not DRF's renderer switch (URL_FORMAT_OVERRIDE)."""
    as_json = client.get("/api/schema/?format=json")
    assert as_json.status_code == 200 and as_json["Content-Type"].startswith("application/vnd.oai.openapi+json")
    assert json.loads(as_json.content)["openapi"].startswith("3.")
    as_yaml = client.get("/api/schema/?format=yaml")
    assert as_yaml["Content-Type"].startswith("application/vnd.oai.openapi") and as_yaml.content.startswith(b"openapi:")
    assert client.get("/api/schema/").content.startswith(b"openapi:")  # YAML unless asked otherwise
    refused = client.get("/api/schema/?format=xml")
    assert refused.status_code == 400 and "json, yaml" in refused.json()["error"]["message"]


def test_every_201_says_where_the_new_resource_is_read(personas):
    """Location (RFC 9110, 10.2.2) on each 201 of a POST, a path that reads the resource; a 200 for one that
    existed already names none."""
    from governance.models import DeploymentTarget
    from tests.governance.conftest import FULL_CARD

    admin, owner = personas["admin"].client(), personas["owner"].client()

    def created(client, path, body):
        answer = client.post(path, body, format="json")
        assert answer.status_code == 201, answer.json()
        where = answer["Location"]
        assert where.startswith("/api/v1/"), where
        read = client.get(where)
        assert read.status_code == 200, (where, read.json())
        return where, read

    where, _ = created(owner, "/api/v1/models/", {"namespace": "acme", "name": "churn"})
    assert where == "/api/v1/models/acme/churn"
    body = register_body(s3_manifest(b"located"))
    where, read = created(owner, f"{BASE}/versions/", body)
    assert where == f"{BASE}/versions/1" and read.json()["number"] == 1
    assert "Location" not in owner.post(f"{BASE}/versions/", body, format="json")  # 200: it existed
    where, read = created(owner, f"{BASE}/versions/1/card", {"content": FULL_CARD})
    assert where == f"{BASE}/versions/1/card?revision=1" and read.json()["revision"] == 1
    target = {
        "name": "stg",
        "kind": "self_hosted",
        "stage": "staging",
        "config": {},
        "policy": {"approvals_required": 1},
    }
    where, _ = created(admin, "/api/v1/targets/", target)
    assert where == "/api/v1/targets/stg" and DeploymentTarget.objects.filter(name="stg").exists()
    where, read = created(owner, "/api/v1/promotions/", {"model": "acme/churn", "version": 1, "target": "stg"})
    assert where == f"/api/v1/promotions/{read.json()['id']}"
    hook = {"name": "ci", "url": "http://127.0.0.1:9/hook", "event_types": ["*"]}
    where, read = created(admin, "/api/v1/webhooks/", hook)
    assert where == f"/api/v1/webhooks/{read.json()['id']}" and "secret" not in read.json()
