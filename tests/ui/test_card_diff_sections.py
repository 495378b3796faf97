"""The request page's card diff shows every change: repeated section titles, lines starting with -- or ++."""

import re

from django.test import Client

from governance.ui_compare import card_diff
from registry import cards
from registry import services as registry


def readme(notes: str, caveats: str) -> str:
    return (
        "---\nlicense: apache-2.0\n---\n\n"
        "## Model Details\n\nGradient-boosted churn classifier.\n\n"
        f"## Notes\n\n{notes}\n\n"
        f"## Caveats and Recommendations\n\n{caveats}\n\n"
        "## Notes\n\nContact: ml@acme.example\n"
    )


SERVING = readme("Do not use for credit decisions.", "Known issues:\n-- do not use on minors\n++ calibrated weekly\nok")
CANDIDATE = readme("Fine for credit decisions.", "Known issues:\nok")


def test_repeated_titles_are_compared_occurrence_by_occurrence():
    new, old = cards.from_huggingface(CANDIDATE), cards.from_huggingface(SERVING)
    assert [s["title"] for s in new["other_sections"]] == ["Notes", "Notes"]  # the schema allows it
    diff = {s.key: s for s in card_diff(new, old)}
    first, second = diff["other:Notes"], diff["other:Notes (2)"]
    assert (first.heading, first.status) == ("Notes", "changed")
    assert ("del", "-Do not use for credit decisions.") in first.lines
    assert ("add", "+Fine for credit decisions.") in first.lines
    assert (second.heading, second.status) == ("Notes (2)", "unchanged")
    # every section of both cards appears once
    assert len(diff) == len(card_diff(new, old)) == 5


def test_a_third_occurrence_only_in_one_card_is_added():
    old = {"other_sections": [{"title": "Notes", "text": "a"}, {"title": "Notes", "text": "b"}]}
    new = {"other_sections": [*old["other_sections"], {"title": "Notes", "text": "c"}]}
    assert [(s.key, s.status) for s in card_diff(new, old)] == [
        ("other:Notes", "unchanged"),
        ("other:Notes (2)", "unchanged"),
        ("other:Notes (3)", "added"),
    ]
    *_, removed = card_diff(old, new)
    assert (removed.heading, removed.status) == ("Notes (3)", "removed")
    assert removed.lines == [("hunk", "@@ -1 +0,0 @@"), ("del", "-c")]


def test_lines_starting_with_two_dashes_or_pluses_are_shown():
    (s,) = card_diff(
        {"caveats_and_recommendations": "Known issues:\n++ new line\nok"},
        {"caveats_and_recommendations": "Known issues:\n-- do not use on minors\nok"},
    )
    assert s.status == "changed"
    assert s.lines == [
        ("hunk", "@@ -1,3 +1,3 @@"),
        ("ctx", " Known issues:"),
        ("del", "--- do not use on minors"),
        ("add", "+++ new line"),
        ("ctx", " ok"),
    ]
    # an added or removed whole section keeps all of its lines, but no unified_diff header
    (added,) = card_diff({"caveats_and_recommendations": "--\n++"}, None)
    assert added.lines == [("hunk", "@@ -0,0 +1,2 @@"), ("add", "+--"), ("add", "+++")]


def test_request_page_shows_the_changed_repeated_section(seeded):
    owner = seeded["owner"].user
    registry.card_revision_add(actor=owner, version=seeded["v1"], content=cards.from_huggingface(SERVING))
    registry.card_revision_add(actor=owner, version=seeded["v2"], content=cards.from_huggingface(CANDIDATE))
    client = Client()
    client.force_login(seeded["reviewer"].user)
    page = re.sub(r"\s+", " ", client.get(f"/promotions/{seeded['promotion'].pk}/").content.decode())
    assert 'Notes <span class="badge diff-changed">changed</span>' in page
    assert '<span class="d-del">-Do not use for credit decisions.</span>' in page
    assert '<span class="d-add">+Fine for credit decisions.</span>' in page
    assert 'Notes (2) <span class="badge">unchanged</span>' in page
    assert 'Caveats and Recommendations <span class="badge diff-changed">changed</span>' in page
    assert '<span class="d-del">--- do not use on minors</span>' in page
    assert '<span class="d-del">-++ calibrated weekly</span>' in page
