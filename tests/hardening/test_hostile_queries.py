"""Hostile query-string values, one parameter at a time, against every API operation that takes a query and
against every web page: a 4xx (or the page), never a 5xx.

schemathesis draws query values from the schema's types, so it never sent what once broke these: a digit
that int() refuses ("²" passes str.isdigit), a number beyond a double (1e400), a Django lookup spelled into a
key (auc__gt), a forged pagination cursor whose position is not a number, a NUL, a lone surrogate. Each value
goes on top of a baseline query that reaches the code behind the parameter (a real nodeId, say), as the
admin persona, who may see every object, so no permission check stops the request early.
"""

import base64
from urllib.parse import quote

import pytest
from django.test import Client

from tests.hardening.conftest import build_world
from tests.hardening.test_schemathesis import OPENAPI_JSON, real_path_parameters


def _utf8(value: str) -> str:
    """Percent-encoded UTF-8; a lone surrogate goes out as the (invalid) bytes a client could send."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


HOSTILE = [
    "\x00",
    "\ud800",
    "\u00b2",  # a digit to str.isdigit, not to int()
    "\u0663",  # ARABIC-INDIC DIGIT THREE: a decimal digit int() takes
    "1e400",
    "-1e400",
    "-1",
    "99999999999999999999",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00",
    "a" * 5000,
]
# Shaped values for parameters with a syntax of their own: each hostile value in each position that matters.
SHAPED = {
    "metric": [f"{name}>={value}" for name in ("auc", "auc__gt", "auc__bogus", "\x00") for value in ("0.5", *HOSTILE)],
    "tag": [f"{key}:{value}" for key in ("stage", "stage__contains", "\x00") for value in ("prod", *HOSTILE)],
    "cursor": [  # DRF's cursor: base64 of a query string, o (offset), r (reverse) and p (position)
        base64.b64encode(f"{field}={_utf8(value)}".encode()).decode()
        for field in ("p", "o", "r", "o=1&p")
        for value in HOSTILE
    ],
    "nodeId": [
        f"{prefix}{value}"
        for prefix in ("model:acme/churn:", "model:", "release:prod:", "release:", "dataset:", "job:", "run:", "")
        for value in HOSTILE
    ],
}
# What a required parameter needs for the request to get past it to the others.
BASELINE = {"nodeId": "model:acme/churn:1", "format": "csv", "at": "2026-01-01T00:00:00Z"}
# Web pages and their query parameters (the forms and links of templates/).
PAGES = {
    "/": ["page", "q"],
    "/reviews/": ["after", "before", "page", "target", "model"],
    "/promotions/{promotion}/": ["page"],
    "/targets/": ["page"],
    "/targets/prod/": ["page", "releases_page"],
    "/models/acme/churn/": ["page", "versions_page"],
    "/models/acme/churn/versions/1/": ["revision", "files_page", "promotions_page"],
    "/lineage/": ["nodeId", "depth", "direction", "granularity", "as_of"],
}
PAGE_BASELINE = {"/lineage/": {"nodeId": "model:acme/churn:1"}}


# Each request commits on its own, as in production: a database error in one cannot abort the next one's
# transaction and pass for the next parameter's failure.
pytestmark = pytest.mark.django_db(transaction=True)


def values_for(parameter: str) -> list[str]:
    return SHAPED.get(parameter, []) + HOSTILE


def query_string(query: dict) -> str:
    return "&".join(f"{_utf8(key)}={_utf8(value)}" for key, value in query.items())


def attempts(client: Client, path: str, parameters: list[str], baseline: dict, headers=None):
    """(url, status or exception) for each hostile value of each parameter."""
    for parameter in parameters:
        for value in values_for(parameter):
            url = f"{path}?{query_string({**baseline, parameter: value})}"
            try:
                yield url, client.get(url, headers=headers).status_code
            except Exception as exc:  # noqa: BLE001 - reported with the URL that raised it
                yield url, f"{type(exc).__name__}: {exc}"


def failures_of(results) -> list[str]:
    return [f"{status} {url[:200]}" for url, status in results if not isinstance(status, int) or status >= 500]


@pytest.fixture
def world(personas, memory_broker):
    return build_world(personas)


def test_api_query_parameters(world, personas):
    client = Client()
    headers = {"Authorization": f"Bearer {personas['admin'].token}"}
    schema = client.get("/api/schema/", headers={"Accept": OPENAPI_JSON}).json()
    results, operations = [], 0
    for template, methods in schema["paths"].items():
        query = [p for p in methods.get("get", {}).get("parameters", []) if p["in"] == "query"]
        parameters = [p["name"] for p in query]
        if not parameters:
            continue
        operations += 1
        path = template
        for name, value in (real_path_parameters(template, world) or [{}])[0].items():
            path = path.replace(f"{{{name}}}", quote(str(value), safe=""))
        baseline = {p["name"]: BASELINE[p["name"]] for p in query if p.get("required")}
        assert client.get(f"{path}?{query_string(baseline)}", headers=headers).status_code == 200, path
        results += attempts(client, path, parameters, baseline, headers)
    assert operations >= 10, operations  # every listing, lineage, audit and card read
    assert not failures_of(results), "\n".join(failures_of(results))
    statuses = {status for _, status in results}
    assert statuses & {400, 404} and 200 in statuses, statuses  # refusals, and values that were fine


def test_web_page_query_parameters(world, personas):
    client = Client()
    client.force_login(personas["admin"].user)
    results = []
    for template, parameters in PAGES.items():
        path = template.format(promotion=world.promotion_id)
        baseline = PAGE_BASELINE.get(template, {})
        assert client.get(f"{path}?{query_string(baseline)}").status_code == 200, path
        results += attempts(client, path, parameters, baseline)
    assert not failures_of(results), "\n".join(failures_of(results))
