"""Hostile JSON values, one at a time, in every field of every write operation's valid body: a 4xx or the
write, never a 5xx.

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

from tests.hardening.test_permission_matrix import PERSONAS, Rollback, allowed, matrix, send

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


def send_and_roll_back(client, method, row):
    try:
        with transaction.atomic():
            response = send(client, method, row)
            body = b"".join(response) if response.streaming else response.content
            raise Rollback
    except Rollback:
        return response.status_code, body


def test_hostile_values_in_every_write_body(signed_world):
    world = signed_world
    failures, sent, refused = [], 0, 0
    for operation, row in matrix(world).items():
        method = operation.split(" ", 1)[0].lower()
        if method == "get" or row.content_type != "application/json" or not isinstance(row.body, dict | list):
            continue
        persona = allowed_persona(row)
        client = world.personas[persona].client()
        status, body = send_and_roll_back(client, method, row)
        assert status in allowed(row.expected[persona]), (operation, status, body[:300])  # the baseline works
        for where, mutated in mutations(row.body):
            row.body, original = mutated, row.body
            try:
                status, body = send_and_roll_back(client, method, row)
            except Exception as exc:  # noqa: BLE001 - reported with the mutation that raised it
                status, body = f"{type(exc).__name__}: {exc}", b""
            finally:
                row.body = original
            sent += 1
            if not isinstance(status, int) or status >= 500:
                failures.append(f"{operation} as {persona}, {where}: {status} {body[:200]!r}")
            elif status >= 400:
                refused += 1
                assert json.loads(body)["error"]["message"], (operation, where, body[:300])
    assert not failures, f"{len(failures)} of {sent} hostile bodies failed:\n" + "\n".join(failures)
    assert sent > 1000 and refused > sent // 2, (sent, refused)
