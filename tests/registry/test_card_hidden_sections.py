"""Model cards: what a reader of the rendered README does not see fills no section. A section commented out
with <!-- --> is no section (its headings are comment text), text left inside an open comment is refused,
and invisible content (format characters, &nbsp;, <br>, link reference definitions) is blank."""

# ruff: noqa: F811 - tests take the imported fixtures as arguments

import pytest

from registry import cards
from tests.governance.conftest import MODEL, reviewer2, world  # noqa: F401 - fixtures
from tests.registry.test_card_hostile_input import assert_refused, grows_linearly
from tests.registry.test_cards import owner, post_markdown  # noqa: F401 - owner is a fixture

CARD = f"{MODEL}/versions/1/card"
DRY_RUN = {"model": "acme/churn", "version": 1, "target": "prod"}

COMMENTED_OUT = """---
license: apache-2.0
---
# Churn

## Model Details

Gradient-boosted churn classifier.

<!--
## Intended Use

Draft, not reviewed yet: rank accounts by churn risk.

## Training Data

TODO
-->
"""


def card_sections_check(client) -> dict:
    dry = client.post("/api/v1/promotions/dry-run", DRY_RUN, format="json")
    assert dry.status_code == 200, dry.json()
    return {c["rule"]: c for c in dry.json()["checks"]}["card_sections"]


# --- 1. a section inside an HTML comment ---------------------------------------------------------


def test_sections_commented_out_in_a_readme_are_no_sections():
    """The rendered README shows neither section: import kept them, and the policy's required sections passed."""
    content = cards.from_huggingface(COMMENTED_OUT)
    assert "intended_use" not in content and "training_data" not in content
    assert content["model_details"] == (
        "Gradient-boosted churn classifier.\n\n<!--\n## Intended Use\n\n"
        "Draft, not reviewed yet: rank accounts by churn risk.\n\n## Training Data\n\nTODO\n-->"
    )
    report = cards.completeness(content)
    assert {"intended_use", "training_data"} <= set(report["missing"])
    assert "model_details" not in report["missing"] + report["empty"]
    exported = cards.to_huggingface(content)
    assert cards.from_huggingface(exported) == content
    assert cards.to_huggingface(cards.from_huggingface(exported)) == exported


def test_a_commented_out_readme_fails_the_required_card_sections(world):
    owner = world["owner"].client()
    assert card_sections_check(owner)["passed"] is True  # the fixture's full card
    r = post_markdown(owner, COMMENTED_OUT, path=CARD)
    assert r.status_code == 201, r.json()
    assert {"intended_use", "training_data"} <= set(r.json()["completeness"]["missing"])
    check = card_sections_check(owner)
    assert check["passed"] is False
    assert "intended_use" in check["reason"] and "training_data" in check["reason"], check


@pytest.mark.parametrize(
    ("body", "sections"),
    [
        ("   <!-- indented up to 3 spaces\n## Intended Use\nx\n-->\n", []),
        ("<!-- one line --> and text\n## Intended Use\nx\n", ["intended_use"]),
        ("<!-->\n## Intended Use\nx\n", ["intended_use"]),  # `<!-->` is an empty comment, closed
        ("<!--->\n## Intended Use\nx\n", ["intended_use"]),
        ("<!--\n```\n-->\n## Intended Use\nx\n", ["intended_use"]),  # a fence in a comment opens no code block
        ("```\n<!--\n```\n## Intended Use\nx\n", ["intended_use"]),  # nor a comment in a code block a comment
        ("<!--\n## Intended Use\nx\n-->\n## Training Data\ny\n", ["training_data"]),
        ("    <!--\n## Intended Use\nx\n", ["intended_use"]),  # indented 4 spaces: code, not a comment
        ("Text <!--\n## Intended Use\nx\n-->\n", ["intended_use"]),  # inline: the heading ends the paragraph
        ("<!-- a --> <!-- b\n## Intended Use\nx\n-->\n", []),  # raw HTML: a browser hides what follows
        ("<!--\na --> b <!-- c\n## Intended Use\nx\n-->\n## Training Data\ny\n", ["training_data"]),
    ],
    ids=[
        "indented",
        "closed-on-its-line",
        "empty-comment",
        "empty-comment-dash",
        "fence-in-comment",
        "comment-in-fence",
        "closed-before-next",
        "indented-code",
        "inline-comment",
        "reopened-on-its-line",
        "reopened-on-the-closing-line",
    ],
)
def test_headings_inside_an_html_comment_block_are_text(body, sections):
    content = cards.from_huggingface("# Churn\n\n## Notes\n\n" + body)
    assert [s for s in cards.MITCHELL_SECTIONS if s in content] == sections
    assert cards.from_huggingface(cards.to_huggingface(content)) == content


def test_a_readme_ending_inside_a_comment_is_closed_on_import(owner):
    """Open to the end of the README, the comment ends there: import closes it, so export keeps the sections it
    writes after it (the other sections, after the canonical ones) out of it."""
    readme = "# T\n\n## Notes\n\nN.\n\n## Training Data\n\nCRM data.\n\n<!--\n## Intended Use\n\nDraft\n"
    content = cards.from_huggingface(readme)
    assert content["training_data"] == "CRM data.\n\n<!--\n## Intended Use\n\nDraft\n-->"
    assert "intended_use" not in content
    r = post_markdown(owner, readme)
    assert r.status_code == 201 and r.json()["content"] == content, r.json()
    exported = owner.get(CARD, {"format": "huggingface"}).content.decode()
    assert exported.index("## Training Data") < exported.index("## Notes")
    again = post_markdown(owner, exported)
    assert (again.status_code, again.json()["content"]) == (200, content)
    assert again.json()["content"]["other_sections"] == [{"title": "Notes", "text": "N."}]


@pytest.mark.parametrize(
    ("content", "field", "line"),
    [
        ({"model_details": "Classifier.\n\n<!--\n## Intended Use\n\nDraft"}, "model_details", 3),
        ({"summary": "<!-- draft"}, "summary", 1),
        ({"other_sections": [{"title": "Notes", "text": "a\n  <!-- b\n\nc"}]}, "other_sections[0].text", 2),
        ({"intended_use": "```\nx\n```\n<!--\n```"}, "intended_use", 4),
        ({"factors": "<!-- a --> <!-- b"}, "factors", 1),
    ],
    ids=["section", "summary", "other-section", "after-a-code-block", "reopened"],
)
def test_json_text_ending_inside_an_html_comment_is_400_naming_it(owner, content, field, line):
    """Exported, the comment hid the sections written after it."""
    r = owner.post(CARD, {"content": content}, format="json")
    assert_refused(r, f"{field}: ends inside the HTML comment opened on its line {line} by '<!--'", "-->", field=field)


def test_json_text_with_a_closed_comment_block_holding_a_heading_is_stored_and_round_trips(owner):
    content = {"model_details": "Classifier.\n\n<!--\n## Intended Use\n\nDraft\n-->", "intended_use": "Triage."}
    r = owner.post(CARD, {"content": content}, format="json")
    assert r.status_code == 201 and r.json()["content"] == content, r.json()
    exported = owner.get(CARD, {"format": "huggingface"}).content.decode()
    again = post_markdown(owner, exported)
    assert (again.status_code, again.json()["revision"], again.json()["content"]) == (200, 1, content)


@pytest.mark.parametrize(
    "text",
    ["TODO\n-->", "TBD -->", "<!-- Draft: churn triage -->\n-->", "TODO <!-- review", "<!--\nDraft\n-->\n\nTBD"],
)
def test_comment_text_and_stray_comment_delimiters_are_no_content(text):
    assert "intended_use" in cards.completeness({"intended_use": text})["empty"]


@pytest.mark.parametrize("text", ["Churn triage -->", "A --> B", "<!-->Churn triage", "<!-- x -->Churn triage"])
def test_text_beside_comment_delimiters_is_content(text):
    assert "intended_use" not in cards.completeness({"intended_use": text})["empty"]


# --- 2. invisible content ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "\u200b",
        "\ufeff\u2060\u00ad\u200d",
        "\u3164\u2800\ufe0f",
        "&nbsp;",
        "&#160; &#xA0;",
        "&#x200B;&ZeroWidthSpace;&zwnj;",
        "&NewLine;&Tab;&emsp;",
        "<br>",
        "<br/>\n<BR />",
        '<p></p>\n<div align="center">\n</div>',
        "<span title='x > y'></span>",
        "[x]: #",
        '[x]: https://example.com "Title"',
        "  [x]: <https://example.com>",
        "[x]:\nhttps://example.com",
        "&nbsp;<br>\u200b\n\n[x]: #\n\nT&#8203;BD",
        "Intended use\n&nbsp;\n---",
        "<b>TODO</b>",
    ],
    ids=[
        "zero-width-space",
        "format-characters",
        "fillers",
        "nbsp",
        "numeric-nbsp",
        "zero-width-references",
        "whitespace-references",
        "br",
        "br-self-closing",
        "empty-blocks",
        "quoted-angle",
        "link-definition",
        "link-definition-title",
        "link-definition-angle",
        "link-definition-two-lines",
        "all-together",
        "setext",
        "bold-placeholder",
    ],
)
def test_invisible_content_is_blank(text):
    assert "intended_use" in cards.completeness({"intended_use": text})["empty"]
    assert "governance" in cards.completeness({"governance": {"intended_purpose": text}})["empty"]


@pytest.mark.parametrize(
    "text",
    [
        '<img src="churn.png">',
        "<video src=demo.mp4></video>",
        "&lt;br&gt;",
        "&amp;nbsp;",
        "`&nbsp;`",
        "<b>Churn triage</b>",
        "&#x1F600;",
        "&#84;&#66;&#68; for the retention team",
        "[x]:\nsee the text below",
        "See [the docs][x].\n\n[x]: https://example.com",
        "Churn\u200btriage",
    ],
    ids=[
        "image",
        "video",
        "escaped-tag",
        "escaped-reference",
        "code-span",
        "bold-text",
        "emoji-reference",
        "references-and-text",
        "label-then-text",
        "used-definition",
        "text-with-zero-width-space",
    ],
)
def test_visible_content_is_content(text):
    assert "intended_use" not in cards.completeness({"intended_use": text})["empty"]


def test_invisible_sections_fail_the_required_card_sections(world):
    owner = world["owner"].client()
    card = {
        "model_details": "x",
        "intended_use": "\u200b",
        "training_data": "&nbsp;<br>\n\n[x]: #",
        "governance": {"license": "mit"},
    }
    r = owner.post(CARD, {"content": card}, format="json")
    assert r.status_code == 201, r.json()
    assert r.json()["completeness"]["empty"] == ["intended_use", "training_data"]
    check = card_sections_check(owner)
    assert check["passed"] is False
    assert "intended_use" in check["reason"] and "training_data" in check["reason"], check


# --- the parsers stay linear ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        lambda n: "<a" + " x" * (n // 2),
        lambda n: "<a x" + " " * n,
        lambda n: "<a x=" + "y/" * (n // 2),
        lambda n: '<a x="' * (n // 6),
        lambda n: "<a x='\"" * (n // 7),
        lambda n: "<" * n,
        lambda n: "[x]: " + "a" * n + ' "',
        lambda n: "[" + "a" * n,
        lambda n: "[x]:\n" * (n // 5),
        lambda n: "&#" * (n // 2),
        lambda n: "&" + "a" * n,
        lambda n: "\u200b" * n,
        lambda n: "<!--\n" * (n // 5),
        lambda n: "-->" * (n // 3),
    ],
    ids=[
        "tag-attributes",
        "tag-spaces",
        "tag-unquoted-value",
        "tag-open-quotes",
        "tag-mixed-quotes",
        "angles",
        "link-definition-open-title",
        "link-definition-long-label",
        "link-definition-labels",
        "references",
        "long-reference-name",
        "zero-width-spaces",
        "comment-block-openers",
        "comment-closers",
    ],
)
def test_completeness_stays_linear_in_the_text(text):
    grows_linearly(lambda n: cards.completeness({"model_details": text(n), "intended_use": text(n)}))


@pytest.mark.parametrize(
    "readme",
    [
        lambda n: "# T\n\n## Notes\n\n" + "<!--\n## Intended Use\n-->\n" * (n // 26),
        lambda n: "# T\n\n## Notes\n\n<!--\n" + "## Intended Use\n" * (n // 16),
        lambda n: "# T\n\n## Notes\n\n" + " <!-- x" * (n // 7) + "\n",
        lambda n: "# T\n\n## Notes\n\n<!--" + " --> <!--" * (n // 9) + "\n## Intended Use\n",
    ],
    ids=["closed-comment-blocks", "open-comment-block", "comment-openers-on-a-line", "comments-reopened-on-a-line"],
)
def test_readme_import_stays_linear_with_comment_blocks(readme):
    grows_linearly(lambda n: cards.from_huggingface(readme(n)))
