"""Hostile JSON values, one at a time, in every field of every write operation's valid body: a 4xx that
changed nothing (wrote no audit event), or the write; never a 5xx; and nothing accepted breaks a later read.

Each body is the permission matrix's (a request that succeeds as a persona allowed to make it); each leaf of
it, in turn, becomes each hostile value, and each dict gets each hostile extra key. schemathesis draws values
from the schema's types and sizes; these are the ones that break code behind the schema: integers beyond
PostgreSQL's integer and bigint, a digit int() refuses, text longer than a column, the wrong JSON type, a
key spelled as a Django lookup. (NUL, lone surrogates and numbers beyond a double are refused for every body
by core.parsers; tests/test_errors.py and test_tokens.py cover them.) Every request runs in a savepoint
that is rolled back, so each starts from the same world.
"""

import json

from django.db import transaction
from django.db.models import Max
from django.test import Client

from audit.models import AuditEvent
from lineage.exports import FORMATS
from tests.hardening.conftest import rolled_back
from tests.hardening.test_hostile_queries import PAGE_BASELINE, PAGES
from tests.hardening.test_permission_matrix import PERSONAS, RUN_ID, Row, allowed, matrix, send

HOSTILE_VALUES = [
    2**31,  # one past PostgreSQL's integer
    2**63,  # one past bigint
    -(2**63) - 1,
    10**30,
    -1,
    0,
    0.5,
    "\u00b2",  # a digit to str.isdigit, not to int()
    "",
    "x" * 5000,  # longer than any name or text column
    "9999-12-31T23:59:59-05:00",  # year 10000 once in UTC
    "0001-01-01T00:00:00+05:00",  # year 0 once in UTC
    True,
    None,
    [],
    {},
]
HOSTILE_KEYS = ["", "x" * 5000, "auc__gt", "\u00b2", "$ref"]


def mutations(body):
    """(where, mutated body) for each hostile value at each leaf and each hostile key in each dict."""
    if isinstance(body, dict):
        for key in HOSTILE_KEYS:
            if key not in body:
                yield f"key {key[:20]!r}", {**body, key: 1}
        items = list(body.items())
    elif isinstance(body, list):
        items = list(enumerate(body))
    else:
        for value in HOSTILE_VALUES:
            if value != body:
                yield repr(value)[:40], value
        return
    for key, child in items:
        for where, mutated in mutations(child):
            copy = dict(body) if isinstance(body, dict) else list(body)
            copy[key] = mutated
            yield f"{key}.{where}" if where[0] != "k" else f"{key} {where}", copy


def allowed_persona(row) -> str:
    """The first persona for whom the row's request gets past the permission checks."""
    return next(p for p in PERSONAS if any(s < 400 for s in allowed(row.expected[p])) or row.state)


def last_audit_seq() -> int:
    return AuditEvent.objects.aggregate(seq=Max("seq"))["seq"] or 0


def attempt(client, method, row, body, roll_back=True):
    """(status, response body) of the row's request with `body`, or (the exception, b"") if it raised. Every
    change is audited, so a refused request that wrote an audit event changed something: reported as a failure."""
    row.body, original = body, row.body
    try:
        with rolled_back() if roll_back else transaction.atomic():
            before = last_audit_seq()
            response = send(client, method, row)
            content = b"".join(response) if response.streaming else response.content
            wrote = last_audit_seq() != before
    except Exception as exc:  # noqa: BLE001 - reported with the request that raised it
        return f"{type(exc).__name__}: {exc}", b""
    finally:
        row.body = original
    if response.status_code >= 400 and wrote:
        return f"{response.status_code}, yet it wrote an audit event", content
    return response.status_code, content


def read_everything(world) -> list[str]:
    """Every read of the API (the matrix's GETs) and every web page, as the admin, who sees all: the failures."""
    failures = []
    reads = {operation: row for operation, row in matrix(world).items() if operation.startswith("GET ")}
    for node in (f"run:{RUN_ID}", "job:ml:train-churn", "dataset:s3://data:crm/2025"):  # the ingested event's
        reads[f"graph of {node}"] = Row("/api/v1/lineage/graph/", {}, query={"nodeId": node})
        for form in FORMATS:
            reads[f"{form} export of {node}"] = Row(
                "/api/v1/lineage/export/", {}, query={"nodeId": node, "format": form}
            )
    for operation, row in reads.items():
        status, body = attempt(world.personas["admin"].client(), "get", row, None, roll_back=False)
        if status != 200:
            failures.append(f"read {operation}: {status} {body[:200]!r}")
    browser = Client()
    browser.force_login(world.personas["admin"].user)
    for template in PAGES:
        path = template.format(promotion=world.promotion_id)
        try:
            status = browser.get(path, PAGE_BASELINE.get(template, {})).status_code
        except Exception as exc:  # noqa: BLE001
            status = f"{type(exc).__name__}: {exc}"
        if status != 200:
            failures.append(f"page {path}: {status}")
    return failures


def test_hostile_values_in_every_write_body(signed_world):
    """Each hostile body from the same world (rolled back); then every accepted one again, kept, and every read
    of the API and every page must still work: nothing accepted may break a later read (an eventTime in year
    10000 was stored, then failed every export of its run)."""
    world = signed_world
    failures, accepted, sent, refused = [], [], 0, 0
    for operation, row in matrix(world).items():
        method = operation.split(" ", 1)[0].lower()
        if method == "get" or row.content_type != "application/json" or not isinstance(row.body, dict | list):
            continue
        persona = allowed_persona(row)
        client = world.personas[persona].client()
        status, body = attempt(client, method, row, row.body)
        assert status in allowed(row.expected[persona]), (operation, status, body[:300])  # the baseline works
        for where, mutated in mutations(row.body):
            status, body = attempt(client, method, row, mutated)
            sent += 1
            if not isinstance(status, int) or status >= 500:
                failures.append(f"{operation} as {persona}, {where}: {status} {body[:200]!r}")
            elif status >= 400:
                refused += 1
                assert json.loads(body)["error"]["message"], (operation, where, body[:300])
            else:
                accepted.append((operation, client, method, row, mutated, where))
    assert not failures, f"{len(failures)} of {sent} hostile bodies failed:\n" + "\n".join(failures)
    assert sent > 1000 and refused > sent // 2, (sent, refused)

    for operation, client, method, row, mutated, where in accepted:  # kept this time (some now meet a 409)
        status, body = attempt(client, method, row, mutated, roll_back=False)
        if not isinstance(status, int) or status >= 500:
            failures.append(f"kept {operation}, {where}: {status} {body[:200]!r}")
    failures += read_everything(world)
    assert not failures, f"{len(accepted)} accepted bodies kept, then:\n" + "\n".join(failures)
