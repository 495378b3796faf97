"""One behaviour for every API route, checked over the whole URL conf so new endpoints are covered on their own:

- an unknown route under /api/ is the JSON not_found error whatever DEBUG is (Django's HTML debug page was not);
- every route answers with or without a trailing slash (the schema lists one spelling, the canonical one);
- a query parameter a route does not take is a 400 naming it, and the error's list of allowed parameters is
  exactly what the OpenAPI schema documents for that operation;
- cursor-paginated lists (webhooks among them) take and document cursor and page_size.
"""

import re

import pytest
from django.test import override_settings
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from core.api import BaseAPIView
from tests.hardening.conftest import build_world, memory_broker
from tests.test_errors import error_of

V1 = "/api/v1/"
BOGUS = "fromat"  # the reviewer's typo of ?format=huggingface
SAMPLE_KWARGS = {  # a value for each path parameter of the API: any object, real or not, will do
    "namespace": "acme",
    "name": "churn",
    "model_name": "churn",
    "number": "1",
    "alias": "champion",
    "digest": "sha256:" + "0" * 64,
    "upload_id": "u1",
    "pk": "1",
    "token_id": "1",
    "delivery_id": "1",
}
SKIPPED_METHODS = {"OPTIONS", "HEAD", "TRACE", "CONNECT"}


def _api_routes(patterns=None, prefix: str = "") -> list[tuple[str | None, URLPattern]]:
    """(route name, pattern) of every DRF route under /api/, straight from the URL resolver."""
    routes = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            routes += _api_routes(pattern.url_patterns, route)
        elif route.startswith("api/") and hasattr(pattern.callback, "cls"):
            routes.append((pattern.name, pattern))
    return routes


API_ROUTES = sorted({name: pattern for name, pattern in _api_routes()}.items(), key=lambda item: str(item[0]))
V1_ROUTES = [(name, pattern) for name, pattern in API_ROUTES if name and name.startswith("api-")]


def _methods(pattern: URLPattern) -> list[str]:
    view = pattern.callback.cls
    return sorted(m.upper() for m in view.http_method_names if hasattr(view, m) and m.upper() not in SKIPPED_METHODS)


def _path(name: str, pattern: URLPattern) -> str:
    regex = pattern.pattern.regex
    return reverse(name, kwargs={key: SAMPLE_KWARGS[key] for key in regex.groupindex})


def _toggled(path: str) -> str:
    return path[:-1] if path.endswith("/") else path + "/"


def _operation(schema: dict, path: str, method: str) -> dict:
    """The schema's operation for a concrete path (either spelling): the matching template with fewest parameters."""
    matches = [
        template
        for template in schema["paths"]
        if re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template.rstrip("/"))), path.rstrip("/"))
    ]
    assert matches, f"{path} is not in the OpenAPI schema"
    template = min(matches, key=lambda t: t.count("{"))
    return schema["paths"][template][method.lower()]


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        return SchemaGenerator().get_schema(request=None, public=True)


@pytest.fixture
def admin(personas) -> APIClient:
    return personas["admin"].client()


def test_the_route_list_is_complete():
    assert None not in dict(API_ROUTES), "every API route needs a name: the tests below reach routes by reverse()"
    names = {name for name, _ in V1_ROUTES}
    assert len(V1_ROUTES) >= 35, names
    assert {"api-me", "api-tokens", "api-card", "api-webhooks", "api-audit-events", "api-lineage-graph"} <= names


@pytest.mark.parametrize(("name", "pattern"), V1_ROUTES, ids=[name for name, _ in V1_ROUTES])
def test_every_api_view_takes_the_shared_base(name, pattern):
    """The base view is where unknown query parameters are refused: a view that skips it would skip that."""
    assert issubclass(pattern.callback.cls, BaseAPIView), pattern.callback.cls


# --- 1. unknown routes: JSON whatever DEBUG is ---------------------------------------------------------------

UNKNOWN_ROUTES = [
    ("GET", "/api/v1/nonexistent"),
    ("GET", "/api/v1/nonexistent/"),
    ("GET", "/api/v1/models/acme/churn/versions/abc"),
    ("GET", "/api/v1/models/acme/churn/versions/1/nope"),
    ("POST", "/api/v1/tokens/6/nope/"),
    ("DELETE", "/api/v1/promotions/x/"),
    ("GET", "/api/nope"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
@pytest.mark.parametrize(("method", "path"), UNKNOWN_ROUTES)
def test_an_unknown_api_route_is_the_json_404(method, path, debug):
    client = APIClient(enforce_csrf_checks=True)  # a POST without a CSRF token is still the 404, not a 403 page
    with override_settings(DEBUG=debug):
        response = client.generic(method, path)
    error = error_of(response, 404, "not_found")
    assert error["message"] == f"No route matches {path}."


@pytest.mark.django_db
def test_an_unknown_route_outside_the_api_is_left_to_django():
    with override_settings(DEBUG=True):
        response = APIClient().get("/no/such/page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


# --- 1b. the optional trailing slash ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "pattern"), API_ROUTES, ids=[str(name) for name, _ in API_ROUTES])
def test_every_api_route_takes_an_optional_trailing_slash(name, pattern):
    path = _path(name, pattern)
    canonical, toggled = resolve(path), resolve(_toggled(path))
    assert canonical.url_name == name
    assert (toggled.func.cls, toggled.url_name, toggled.kwargs) == (canonical.func.cls, name, canonical.kwargs)


def test_reverse_gives_the_canonical_spelling():
    assert reverse("api-me") == "/api/v1/me"
    assert reverse("api-alias", kwargs={"namespace": "a", "name": "b", "alias": "c"}) == "/api/v1/models/a/b/aliases/c"
    assert reverse("api-models") == "/api/v1/models"
    assert reverse("schema") == "/api/schema/"


def test_the_schema_lists_each_operation_once(schema):
    paths = set(schema["paths"])
    assert not {p for p in paths if _toggled(p) in paths}, "a route is listed with and without its trailing slash"
    for path in ["/api/v1/me", "/api/v1/tokens/{token_id}/revoke", "/api/v1/models/{namespace}/{name}/aliases/{alias}"]:
        assert path in paths
    operation_ids = [op["operationId"] for item in schema["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


@pytest.mark.django_db
@pytest.mark.usefixtures(memory_broker.__name__)
def test_the_trailing_slash_reaches_the_same_endpoint(personas):
    world = build_world(personas)
    owner, admin = personas["owner"].client(), personas["admin"].client()
    alias = owner.get("/api/v1/models/acme/churn/aliases/champion/")
    assert alias.status_code == 200, alias.content
    assert alias.json()["alias"] == "champion"
    assert owner.get("/api/v1/me/").json()["username"] == "owner"
    assert admin.get("/api/v1/audit/head/").status_code == 200
    token_id = world.spare_token_ids["owner"]
    revoked = owner.post(f"/api/v1/tokens/{token_id}/revoke/", {}, format="json")
    assert revoked.status_code == 200, revoked.content
    assert revoked.json()["revoked_at"] is not None
    assert APIClient().get("/api/schema").status_code == 200


# --- 2. unknown query parameters -------------------------------------------------------------------------


V1_OPERATIONS = [(name, pattern, method) for name, pattern in V1_ROUTES for method in _methods(pattern)]


@pytest.mark.parametrize(
    ("name", "pattern", "method"), V1_OPERATIONS, ids=[f"{method} {name}" for name, _, method in V1_OPERATIONS]
)
def test_an_unknown_query_parameter_is_a_400_naming_it(admin, schema, name, pattern, method):
    path = _path(name, pattern)
    response = admin.generic(method, f"{path}?{BOGUS}=huggingface&other_typo=1")
    error = error_of(response, 400, "invalid")
    assert set(error["detail"]) == {BOGUS, "other_typo"}
    assert BOGUS in error["message"]
    [message] = error["detail"][BOGUS]
    allowed = re.fullmatch(r"Unknown query parameter\. (?:Allowed: (.*)|This operation takes none)\.", message)
    assert allowed, message
    accepted = set(allowed[1].split(", ")) if allowed[1] else set()
    documented = {p["name"] for p in _operation(schema, path, method).get("parameters", []) if p["in"] == "query"}
    assert accepted == documented  # the schema documents exactly what the view takes


@pytest.mark.django_db
@pytest.mark.usefixtures(memory_broker.__name__)
def test_a_typo_in_the_card_format_is_refused_not_ignored(personas):
    build_world(personas)
    owner = personas["owner"].client()
    card = "/api/v1/models/acme/churn/versions/1/card"
    error = error_of(owner.get(f"{card}?fromat=huggingface"), 400, "invalid")
    assert "fromat" in error["message"]
    assert "Allowed: format, revision." in error["message"]
    readme = owner.get(f"{card}?format=huggingface")
    assert readme.status_code == 200
    assert readme["Content-Type"].startswith("text/markdown")
    versions = owner.get("/api/v1/models/acme/churn/versions/?status=registered&page_size=1")
    assert versions.status_code == 200, versions.content  # what a view takes is still taken


def test_known_query_parameters_are_documented_where_a_view_reads_them(schema):
    def query(path, method="get"):
        return {p["name"] for p in schema["paths"][path][method].get("parameters", []) if p["in"] == "query"}

    assert query("/api/v1/models/{namespace}/{name}/versions/{number}/card/") == {"format", "revision"}
    assert query("/api/v1/audit/events") >= {"format", "since", "after_seq"}
    assert query("/api/v1/models/") == {"cursor", "page_size"}
    assert query("/api/v1/targets/{name}/releases/") == {"cursor", "page_size"}
    assert query("/api/v1/me") == set()
    assert query("/api/v1/models/", "post") == set()


# --- 3. webhooks paginate like the other lists -------------------------------------------------------------


@pytest.mark.django_db
def test_the_webhook_list_is_cursor_paginated(admin, schema):
    for number in range(3):
        body = {"name": f"hook-{number}", "url": "https://hooks.example.com/x", "event_types": ["*"]}
        assert admin.post("/api/v1/webhooks/", body, format="json").status_code == 201
    first = admin.get("/api/v1/webhooks/?page_size=2").json()
    assert [h["name"] for h in first["results"]] == ["hook-2", "hook-1"]
    assert first["previous"] is None and first["next"]
    second = admin.get(first["next"]).json()
    assert [h["name"] for h in second["results"]] == ["hook-0"]
    assert second["next"] is None
    error = error_of(admin.get("/api/v1/webhooks/?page_size=0"), 400, "invalid")
    assert "page_size" in error["detail"]

    parameters = {p["name"]: p for p in schema["paths"]["/api/v1/webhooks/"]["get"]["parameters"]}
    assert set(parameters) == {"cursor", "page_size"}
    assert parameters["page_size"]["schema"]["type"] == "integer"
