"""Hostile values, one field at a time, in every web form the UI posts (review and its confirmation, cancel,
rollback, login): the page or a redirect with a message, never a 5xx.

Each form starts from what the page itself would post (the confirmation's hidden fields read off the page),
as the persona the form is for; every post runs in a savepoint that is rolled back, so each starts from the
same pending promotion. The values are those of test_hostile_queries (which also covers NUL and surrogates
reaching a form through core.middleware).
"""

import re

import pytest
from django.test import Client

from tests.hardening.conftest import build_world, rolled_back
from tests.hardening.test_hostile_queries import HOSTILE

FORM_HOSTILE = [*HOSTILE, "", " ", "0", "approve", "yes"]


@pytest.fixture
def world(personas, memory_broker):
    return build_world(personas)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post_and_roll_back(client, path, data) -> int:
    with rolled_back():
        return client.post(path, data).status_code


def confirmation(client, pk) -> dict:
    """The fields the confirmation page posts back for an approval."""
    page = client.post(f"/promotions/{pk}/review/", {"decision": "approve", "comment": "ok"})
    assert page.status_code == 200, page.content[:500]
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page.content.decode()))
    assert {"digest", "card_revision", "policy_version", "decision"} <= set(hidden), hidden
    return {**hidden, "comment": "ok", "confirm": "yes"}


def test_every_web_form(world, personas):
    pk = world.promotion_id
    reviewer = logged_in(personas["reviewer"].user)
    forms = [
        (reviewer, f"/promotions/{pk}/review/", {"decision": "approve", "comment": "ok"}),
        (reviewer, f"/promotions/{pk}/review/", confirmation(reviewer, pk)),
        (logged_in(personas["owner"].user), f"/promotions/{pk}/cancel/", {"reason": "not now"}),
        (logged_in(personas["admin"].user), "/targets/prod/rollback/", {"reason": "bad canary"}),
        (Client(), "/accounts/login/", {"username": "reviewer", "password": "wrong"}),
    ]
    failures, sent = [], 0
    for client, path, baseline in forms:
        assert post_and_roll_back(client, path, baseline) in (200, 302), path
        for field in baseline:
            for value in FORM_HOSTILE:
                data = {**baseline, field: value.encode("utf-8", "surrogatepass")}
                try:
                    status = post_and_roll_back(client, path, data)
                except Exception as exc:  # noqa: BLE001 - reported with the field and value that raised it
                    status = f"{type(exc).__name__}: {exc}"
                sent += 1
                if not isinstance(status, int) or status >= 500:
                    failures.append(f"{path} {field}={value[:30]!r}: {status}")
    assert not failures, f"{len(failures)} of {sent} hostile form posts failed:\n" + "\n".join(failures)
    assert sent > 200, sent
