"""Pagination links change only their own page parameter and keep the rest of the query."""

import html
import re

from django.test import Client

from governance import services
from registry import services as registry
from registry.services import VersionContent
from tests.registry.helpers import file_entry
from tests.ui import builders


def as_user(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def link(page: str, rel: str) -> str:
    """The href of the first rel=next/prev link, as the browser reads it (entities decoded)."""
    return html.unescape(re.search(rf'<a href="([^"]*)" rel="{rel}">', page)[1])


def version_with_26_files_and_2_card_revisions(seeded):
    owner = seeded["owner"].user
    version, _ = registry.version_register(
        actor=owner,
        model=seeded["churn"],
        content=VersionContent(
            manifest={"files": [file_entry(f"model-{i:02d}.bin", f"file {i}".encode()) for i in range(26)]},
            artifact_uri="s3://bucket/models/x",
        ),
    )
    registry.card_revision_add(actor=owner, version=version, content={"model_details": "Card revision one."})
    registry.card_revision_add(actor=owner, version=version, content={"model_details": "Card revision two."})
    return f"/models/acme/churn/versions/{version.number}/"


def test_paging_files_keeps_the_card_revision(seeded):
    path = version_with_26_files_and_2_card_revisions(seeded)
    client = as_user(seeded["owner"].user)
    first = client.get(path, {"revision": "1"}).content.decode()
    assert "Card revision one." in first and "Page 1 of 2 (26 in all)" in first
    assert link(first, "next") == "?revision=1&files_page=2"

    second = client.get(path + link(first, "next")).content.decode()
    assert "Card revision one." in second and "Card revision two." not in second
    assert "(revision 1, not the latest)" in second
    assert "Page 2 of 2 (26 in all)" in second and "model-25.bin" in second and "model-00.bin" not in second
    assert link(second, "prev") == "?revision=1&files_page=1"


def test_other_parameters_are_kept_escaped_and_only_the_page_replaced(seeded):
    owner, prod = seeded["owner"].user, seeded["prod"]
    for i in range(26):
        services.promotion_request(actor=owner, version=builders.version(owner, seeded["churn"], f"p{i}"), target=prod)
    client = as_user(seeded["reviewer"].user)
    raw = client.get("/reviews/?sort=a%26b%22%3E%3Cx&page=1&tag=x&tag=y").content.decode()
    last_on_first = re.findall(r"Review #(\d+)", raw)[-1]
    # the markup carries the query encoded for the URL and escaped for HTML: no injected quote or tag; the
    # keyset cursor replaces any page number
    assert f'<a href="?sort=a%26b%22%3E%3Cx&amp;tag=x&amp;tag=y&amp;after={last_on_first}" rel="next">' in raw
    nxt = link(raw, "next")
    second = client.get("/reviews/" + nxt)
    assert second.wsgi_request.GET.getlist("tag") == ["x", "y"]
    assert second.wsgi_request.GET["sort"] == 'a&b"><x'
    page = second.content.decode()
    assert "27 in all" in page and page.count("Review #") == 2
    first_on_second = re.findall(r"Review #(\d+)", page)[0]
    assert link(page, "prev") == f"?sort=a%26b%22%3E%3Cx&tag=x&tag=y&before={first_on_second}"
    assert link(page, "first") == "?sort=a%26b%22%3E%3Cx&tag=x&tag=y"
