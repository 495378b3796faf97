"""README metadata of a YAML type JSON has no type for (`!!set`, `!!omap`, `!!pairs`, `!!binary`) is a 400 naming
its path and line, what YAML reads it as and what to write instead; nothing is stored. And a one-string value of a
list-valued Hugging Face field: `tags: foo` is one tag, stored as a list; `metrics: accuracy` is a 400 saying to
write a list."""

# ruff: noqa: F811 - tests take the imported `owner` fixture as an argument

import huggingface_hub.repocard_data
import pytest

from registry import cards
from tests.registry.test_card_readme_metadata_types import assert_refused, assert_round_trips, metadata_of, readme
from tests.registry.test_cards import CARD, owner, post_markdown  # noqa: F401 - owner is a fixture

# --- YAML types without a JSON type -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("refused", "field", "phrases", "accepted"),
    [
        ("tags: !!set {a, b}", "metadata.tags", ["the !!set value on line 2", "as a set", "write a list"],
         "tags: [a, b]"),
        ("license: mit\nwidget:\n  labels: !!set\n    ? cat\n    ? dog", "metadata.widget.labels",
         ["the !!set value on line 4", "as a set"], "widget:\n  labels: [cat, dog]"),
        ("steps: !!omap [warmup: 10, train: 90]", "metadata.steps",
         ["the !!omap value on line 2", "as an ordered mapping", "drop the tag"], "steps: [warmup: 10, train: 90]"),
        ("steps: !!omap []", "metadata.steps", ["the !!omap value on line 2"], "steps: {}"),
        ("runs: !!pairs [seed: 1, seed: 2]", "metadata.runs", ["the !!pairs value on line 2", "as a list of pairs"],
         "runs: [seed: 1, seed: 2]"),
        ("hash: !!binary aGVsbG8=", "metadata.hash", ["the !!binary value on line 2", "as binary data", "base64 text"],
         "hash: aGVsbG8="),
        ("files: {? !!binary aGVsbG8= : 1}", "metadata.files", ["the !!binary key on line 2", "as binary data"],
         "files: {aGVsbG8=: 1}"),
        ("groups: [x, !!set {a}]", "metadata.groups[1]", ["the !!set value on line 2"], "groups: [x, [a]]"),
        ("governance: !!omap [risk_class: high]", "metadata.governance", ["as an ordered mapping"],
         "governance: {risk_class: high}"),
    ],
    ids=["set-tags", "set-nested", "omap", "omap-empty", "pairs", "binary", "binary-key", "set-in-list",
         "omap-governance"],
)  # fmt: skip
def test_a_yaml_value_json_has_no_type_for_is_400_naming_path_and_what_to_write(
    owner, refused, field, phrases, accepted
):
    """A set was stored as a sorted list, an ordered map or pairs as a list of [key, value] lists (`!!omap []` as
    []), binary data was refused without saying what to write, and a binary key was "read by YAML as a mapping"."""
    assert_refused(post_markdown(owner, readme(refused)), field, "YAML reads", "has no type for", *phrases)
    assert_round_trips(owner, accepted)


def test_dates_are_still_their_iso_text():
    """Dates have a JSON form, their ISO 8601 text (documented): not refused with the types above."""
    content = cards.from_huggingface(readme("trained: !!timestamp 2024-01-01\nreleased: 2024-02-03"))
    assert content["metadata"]["extra"] == {"trained": "2024-01-01", "released": "2024-02-03"}


# --- one string where Hugging Face lists values -----------------------------------------------------


def test_tags_as_one_string_is_one_tag_stored_and_exported_as_a_list(owner):
    content = assert_round_trips(owner, "tags: text-classification", {"tags": ["text-classification"]})
    assert content["metadata"]["tags"] == ["text-classification"]
    exported = owner.get(CARD, {"format": "huggingface"}).content.decode()
    assert "tags:\n- text-classification\n" in exported


def test_tags_as_one_string_does_not_depend_on_the_huggingface_hub_release(monkeypatch):
    """Older huggingface_hub releases iterated the string: one tag per character ('f', 'o')."""

    def per_character(tags):
        return None if tags is None else list(dict.fromkeys(tags))

    monkeypatch.setattr(huggingface_hub.repocard_data, "_to_unique_list", per_character)
    assert cards.from_huggingface(readme("tags: foo"))["metadata"]["tags"] == ["foo"]


def test_datasets_language_and_base_model_are_kept_as_written(owner):
    """huggingface_hub and the Hub take one string or a list for these: stored as written, either way."""
    content = assert_round_trips(owner, "datasets: imdb\nlanguage: [en, de]\nbase_model: org/base")
    assert content["metadata"] == {"datasets": "imdb", "language": ["en", "de"], "base_model": "org/base"}


def test_metrics_as_one_string_is_400_saying_to_write_a_list(owner):
    assert_refused(
        post_markdown(owner, readme("metrics: accuracy")),
        "metadata.metrics",
        """not the string 'accuracy'; write a list: ["accuracy"]""",
    )
    assert metadata_of(readme('metrics: ["accuracy"]')) == {"metrics": ["accuracy"]}  # the hint is YAML too
    assert_round_trips(owner, 'metrics: ["accuracy"]')


def test_a_json_card_says_the_same(owner):
    r = owner.post(CARD, {"content": {"metadata": {"tags": "churn"}}}, format="json")
    assert_refused(r, "metadata.tags", """must be a list of strings, not the string 'churn'; write a list: ["churn"]""")
