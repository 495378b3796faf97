"""Model cards: the Markdown edges of import and completeness (CommonMark code fences, setext headings)."""

import pytest

from core.errors import InvalidInput
from registry import cards

# --- fenced code blocks: a heading inside one is code -------------------------------------------

README_LONG_FENCE = (
    "# Churn model\n\n## How to write a card\n\n````markdown\n```\n## Intended Use\nAnything you like.\n```\n````\n\n"
    "## Model Details\n\nA classifier.\n"
)
README_SHORT_CLOSE_INDENTED = "# Churn model\n\n## Example\n\n```text\n    ```\n## Training Data\nScraped data.\n```\n"


def _import(body: str) -> dict:
    return cards.from_huggingface("# Churn model\n\n## Example\n\n" + body)


def test_a_shorter_fence_inside_a_longer_one_does_not_close_it():
    content = cards.from_huggingface(README_LONG_FENCE)
    assert "intended_use" not in content
    assert content["model_details"] == "A classifier."
    assert content["other_sections"] == [
        {"title": "How to write a card", "text": "````markdown\n```\n## Intended Use\nAnything you like.\n```\n````"}
    ]
    assert "intended_use" in cards.completeness(content)["missing"]


def test_a_fence_indented_four_spaces_does_not_close_a_block():
    content = cards.from_huggingface(README_SHORT_CLOSE_INDENTED)
    assert "training_data" not in content
    assert content["other_sections"] == [
        {"title": "Example", "text": "```text\n    ```\n## Training Data\nScraped data.\n```"}
    ]
    assert "training_data" in cards.completeness(content)["missing"]


def test_a_heading_in_a_backtick_block_stays_code():
    content = _import("```markdown\n## Intended Use\nAnything.\n```\n\n## Model Details\n\nA classifier.\n")
    assert "intended_use" not in content and content["model_details"] == "A classifier."
    assert "## Intended Use" in content["other_sections"][0]["text"]


def test_a_backtick_fence_does_not_close_a_tilde_block():
    content = _import("~~~\n```\n## Intended Use\nAnything.\n~~~\n\n## Model Details\n\nA classifier.\n")
    assert "intended_use" not in content and content["model_details"] == "A classifier."


@pytest.mark.parametrize(
    "closing",
    ["```", "```   ", "```\t", "   ```", "`````"],
    ids=["plain", "trailing-spaces", "trailing-tab", "indented-3", "longer"],
)
def test_a_matching_closing_fence_closes(closing):
    content = _import(f"```python\n# a comment\n{closing}\n\n## Intended Use\n\nChurn triage.\n")
    assert content["intended_use"] == "Churn triage."
    assert content["other_sections"][0]["text"] == f"```python\n# a comment\n{closing.rstrip()}"  # stored trimmed


def test_a_fence_line_with_an_info_string_does_not_close():
    content = _import("```\n```python\n## Intended Use\nAnything.\n```\n\n## Model Details\n\nA classifier.\n")
    assert "intended_use" not in content and content["model_details"] == "A classifier."


def test_an_unclosed_fence_hides_everything_after_it():
    content = _import("```\ncode\n## Intended Use\nAnything.\n\n## Model Details\n\nA classifier.\n")
    assert "intended_use" not in content and "model_details" not in content
    # ... to the end of the README, where import closes it: an export writing sections after it keeps them
    assert content["other_sections"][0]["text"].endswith("## Model Details\n\nA classifier.\n```")
    assert cards.from_huggingface(cards.to_huggingface(content)) == content


def test_backticks_with_a_backtick_in_the_info_string_do_not_open_a_fence():
    # "``` a`b" is inline code in CommonMark, not a fence: the heading after it is a heading
    content = _import("``` a`b\n\n## Intended Use\n\nChurn triage.\n")
    assert content["intended_use"] == "Churn triage."


def test_section_text_may_hold_a_level_2_heading_inside_a_longer_fence():
    text = "How to write one:\n\n````markdown\n```\n## Intended Use\n```\n````"
    assert cards.validate({"other_sections": [{"title": "Howto", "text": text}]})["other_sections"][0]["text"] == text
    with pytest.raises(InvalidInput):  # outside the fence it is a heading of its own
        cards.validate({"other_sections": [{"title": "Howto", "text": "````\n```\n````\n## Intended Use"}]})
    # and such a card survives export -> import
    content = cards.validate({"title": "Churn", "model_details": text})
    assert cards.from_huggingface(cards.to_huggingface(content)) == content


# --- completeness: setext headings and thematic breaks are no content ---------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Intended use\n------------",
        "Intended use\n============",
        "### Intended use",
        "  Intended use\n  ---",
        "Intended\nuse\n===",
        "Intended use\n---\n\n[More Information Needed]",
        "<!-- Who uses it? -->\nIntended use\n=\nTBD",
        "---",
        "***\n\n- - -\n\n___",
    ],
    ids=[
        "setext-2",
        "setext-1",
        "atx",
        "setext-indented",
        "setext-two-lines",
        "setext-placeholder",
        "setext-comment-tbd",
        "thematic-break",
        "thematic-breaks",
    ],
)
def test_headings_and_rules_alone_are_empty(text):
    assert "intended_use" in cards.completeness({"intended_use": text})["empty"]


@pytest.mark.parametrize(
    "text",
    [
        "Intended use\n------------\nChurn triage by the support team.",
        "Churn triage.\n\n---",
        "- Churn triage\n---",
        "> Churn triage\n---",
        "    churn_triage()\n---",
        "Intended use\n\n---",
        "```\nIntended use\n---\n```",
    ],
    ids=[
        "heading-then-text",
        "text-then-break",
        "list-then-break",
        "quote-then-break",
        "indented-code-then-break",
        "paragraph-blank-break",
        "code",
    ],
)
def test_text_around_a_rule_is_content(text):
    assert "intended_use" not in cards.completeness({"intended_use": text})["empty"]
