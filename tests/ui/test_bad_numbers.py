"""Numbers in a page's query that int() cannot read (too many digits, non-ASCII digits) are bad values like
any other, never a 500."""

import pytest
from django.test import Client

HUGE = "1" * 5000  # over Python's 4,300-digit limit for int()


def as_user(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("revision", [HUGE, "²", "١", "99"])
def test_a_card_revision_that_is_not_a_known_number_shows_the_latest(seeded, revision):
    page = as_user(seeded["reviewer"].user).get("/models/acme/churn/versions/2/", {"revision": revision})
    assert page.status_code == 200
    assert b'Model card <span class="muted">(revision 1)</span>' in page.content


@pytest.mark.parametrize("depth", [HUGE, "²", "١", "101"])
def test_a_lineage_depth_that_is_not_a_small_number_is_400(seeded, depth):
    page = as_user(seeded["reviewer"].user).get("/lineage/", {"nodeId": "model:acme/churn:1", "depth": depth})
    assert page.status_code == 400 and b"depth must be a whole number from 0 to 100" in page.content
