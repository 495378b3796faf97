"""README metadata (the YAML block) of the wrong type or shape is refused before huggingface_hub reads it, with a
message naming the field, what was given and what to send; keys YAML reads as null, booleans, numbers or dates
are refused naming where; and what a message asks for is accepted and round-trips through the README export."""

# ruff: noqa: F811 - tests take the imported `owner` fixture as an argument

import pytest
import yaml

from audit.models import AuditEvent
from registry.models import ModelCardRevision
from tests.registry.test_cards import CARD, owner, post_markdown  # noqa: F401 - owner is a fixture


def readme(yaml_block: str) -> str:
    return f"---\n{yaml_block}\n---\n# Churn\n\n## Model Details\n\nA model.\n"


def metadata_of(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def assert_refused(r, field: str, *phrases: str):
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (400, "invalid_card"), r.content
    assert error["message"].startswith(f"Invalid model card. {field}: "), error["message"]
    for phrase in phrases:
        assert phrase in error["message"], error["message"]
    assert field in error["detail"], error["detail"]
    for text in ("<class", "object is not", "ignore_metadata_errors"):  # huggingface_hub's own words
        assert text not in error["message"], error["message"]
    assert ModelCardRevision.objects.count() == 0
    assert not AuditEvent.objects.filter(action="card.revised").exists()


def assert_round_trips(client, yaml_block: str, expected_metadata: dict | None = None) -> dict:
    """Post the README; its export carries the metadata posted (or `expected_metadata`) and, posted back, is
    the same revision. Returns the stored content."""
    posted = client.post(CARD, data=readme(yaml_block).encode(), content_type="text/markdown; charset=utf-8")
    assert posted.status_code == 201, posted.json()
    exported = client.get(CARD, {"format": "huggingface"})
    assert exported.status_code == 200
    text = exported.content.decode()
    assert metadata_of(text) == (expected_metadata or metadata_of(readme(yaml_block)))
    again = post_markdown(client, text)
    assert (again.status_code, again.json()["revision"]) == (200, 1), again.json()
    assert again.json()["content"] == posted.json()["content"]
    return posted.json()["content"]


# --- tags ---------------------------------------------------------------------------------------------


def test_tags_as_a_mapping_are_400_not_stored_as_its_keys(owner):
    """`tags: {a: 1, b: 2}` was stored as [a, b]: the values were dropped and nothing said."""
    r = post_markdown(owner, readme("tags: {a: 1, b: 2}"))
    assert_refused(r, "metadata.tags", "must be a list of strings", 'not a mapping: {"a": 1, "b": 2}')
    assert assert_round_trips(owner, "tags: [a, b]")["metadata"]["tags"] == ["a", "b"]


def test_tags_as_a_number_is_400_naming_the_field_and_one_string_is_one_tag(owner):
    """Was "metadata: 'int' object is not iterable"."""
    r = post_markdown(owner, readme("tags: 5"))
    assert_refused(r, "metadata.tags", "must be a list of strings, not the number 5")
    content = assert_round_trips(owner, "tags: '5'", {"tags": ["5"]})  # huggingface_hub reads one string so
    assert content["metadata"]["tags"] == ["5"]


def test_a_tag_that_is_not_a_string_is_400_naming_its_index(owner):
    r = post_markdown(owner, readme("tags: [a, {b: 1}]"))
    assert_refused(r, "metadata.tags[1]", 'must be a string, not a mapping: {"b": 1}')
    assert_round_trips(owner, "tags: [a, 'b: 1']")


# --- the other known fields -------------------------------------------------------------------------

STRING_OR_LIST = "must be a string or a list of strings (each 1-500 characters)"


@pytest.mark.parametrize(
    ("refused", "field", "phrase", "accepted"),
    [
        ("license: 5", "metadata.license", "must be a string, not the number 5; in YAML, quote it", "license: '5'"),
        ("license_name: [x]", "metadata.license_name", 'must be a string, not a list of 1 item: ["x"]',
         "license_name: x"),
        ("license_link: {u: 1}", "metadata.license_link", "must be a string, not a mapping",
         "license_link: https://example.org/license"),
        ("library_name: [a]", "metadata.library_name", "must be a string, not a list of 1 item",
         "library_name: transformers"),
        ("pipeline_tag: 3", "metadata.pipeline_tag", "must be a string, not the number 3",
         "pipeline_tag: text-classification"),
        ("metrics: accuracy", "metadata.metrics", "must be a list of strings, not the string 'accuracy'",
         "metrics: [accuracy]"),
        ("metrics: [accuracy, [f1]]", "metadata.metrics[1]", 'must be a string, not a list of 1 item: ["f1"]',
         "metrics: [accuracy, f1]"),
        ("datasets: {imdb: 1}", "metadata.datasets", f"{STRING_OR_LIST}, not a mapping", "datasets: imdb"),
        ("base_model: 7", "metadata.base_model", f"{STRING_OR_LIST}, not the number 7",
         "base_model: [org/a, org/b]"),
        ("language: [en, no]", "metadata.language[1]", "not the boolean false (YAML reads unquoted yes, no",
         "language: [en, 'no']"),
        ("governance: high", "governance", "must be a mapping, not the string 'high'",
         "governance: {risk_class: high}"),
    ],
    ids=["license", "license_name", "license_link", "library_name", "pipeline_tag", "metrics-string",
         "metrics-item", "datasets", "base_model", "language-norwegian", "governance"],
)  # fmt: skip
def test_a_known_field_of_the_wrong_type_is_400_saying_what_to_send(owner, refused, field, phrase, accepted):
    assert_refused(post_markdown(owner, readme(refused)), field, phrase)
    assert_round_trips(owner, accepted)


# --- model-index ------------------------------------------------------------------------------------

ENTRY0 = "metadata.model_index[0]"
RESULT0 = f"{ENTRY0}.results[0]"
TASK, DATASET, METRICS = "task: {type: t}", "dataset: {type: d, name: D}", "metrics: [{type: a, value: 1}]"
SOURCE = "source: {name: Leaderboard, url: https://example.org/board}"


def index(*result: str, entry: str = "") -> str:
    """A model-index of one entry with one result made of `result` (its task, dataset, metrics, ...)."""
    return f"[{{name: m, {entry}results: [{{{', '.join(result)}}}]}}]"


FULL = index(
    "task: {type: text-classification, name: Text Classification}",
    "dataset: {type: imdb, name: IMDB, config: plain_text, split: test, revision: abc, args: {k: 1}}",
    "metrics: [{type: accuracy, value: 0.93, name: Accuracy, config: c, args: {n: 2}, verified: false},"
    " {type: f1, value: '0.91 ± 0.01'}]",
    SOURCE,
)


@pytest.mark.parametrize(
    ("refused", "field", "phrase", "accepted"),
    [
        ("5", "metadata.model_index", "must be a list of mappings (with name, results), not the number 5",
         index(TASK, DATASET, METRICS)),
        ("[5]", ENTRY0, "must be a mapping (with name, results), not the number 5", index(TASK, DATASET, METRICS)),
        ("[{name: m}]", f"{ENTRY0}.results", "is required", "[{name: m, results: []}]"),
        ("[{name: m, results: 5}]", f"{ENTRY0}.results", "must be a list of mappings (with task, dataset, metrics)",
         index(TASK, DATASET, METRICS)),
        (index("task: 5", DATASET, METRICS), f"{RESULT0}.task", "must be a mapping (with type), not the number 5",
         index("task: {type: '5'}", DATASET, METRICS)),
        (index(TASK, DATASET, "metrics: []"), f"{RESULT0}.metrics", "must hold at least 1 item",
         index(TASK, DATASET, METRICS)),
        (index(TASK, DATASET, "metrics: [{type: a, value: 1, by: me}]"), f"{RESULT0}.metrics[0].by",
         "unknown field; allowed: args, config, name, type, value",
         index(TASK, DATASET, "metrics: [{type: a, value: 1, args: {by: me}}]")),
        (index(TASK, DATASET, METRICS, entry="card: x, "), f"{ENTRY0}.card", "unknown field",
         index(TASK, DATASET, METRICS)),
        (index(TASK, DATASET, METRICS, "source: {name: s}"), f"{RESULT0}.source.url", "is required", FULL),
    ],
    ids=["number", "entry-number", "no-results", "results-number", "task-number", "no-metrics",
         "metric-unknown-key", "entry-unknown-key", "source-without-url"],
)  # fmt: skip
def test_a_model_index_of_the_wrong_shape_is_400_naming_the_path(owner, refused, field, phrase, accepted):
    """Was "<class 'TypeError'> 'int' object is not iterable" (or KeyError 'results'), or, for unknown keys and
    a result without metrics, stored without them and nothing said."""
    assert_refused(post_markdown(owner, readme(f"model-index: {refused}")), field, phrase)
    assert_round_trips(owner, f"model-index: {accepted}")


# --- keys that are not text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refused", "field", "phrase", "accepted"),
    [
        ("null: x", "metadata", "the key null is read by YAML as null, not as text", "'null': x"),
        ("~: x", "metadata", "the key null is read by YAML as null", "'~': x"),
        ("widget: {true: 1}", "metadata.widget", "the key true is read by YAML as the boolean true",
         "widget: {'true': 1}"),
        ("inference:\n  parameters:\n    no: 1", "metadata.inference.parameters", "the key false is read by YAML as",
         "inference:\n  parameters:\n    'no': 1"),
        ("labels: {0: negative, 1: positive}", "metadata.labels", "the key 0 is read by YAML as the number 0",
         "labels: {'0': negative, '1': positive}"),
        ("history: [{2024-01-01: trained}]", "metadata.history[0]", "the key 2024-01-01 is read by YAML as the date",
         "history: [{'2024-01-01': trained}]"),
        ("governance: {null: x}", "metadata.governance", "the key null is read by YAML as null",
         "governance: {risk_class: limited}"),
    ],
    ids=["null", "tilde", "boolean", "yaml-1.1-no", "number", "date", "governance"],
)  # fmt: skip
def test_a_key_that_is_not_text_is_400_naming_where(owner, refused, field, phrase, accepted):
    """A `null:` key was stored and exported as `None:`, `true:` as `'True':`, `0:` as `'0':`."""
    assert_refused(post_markdown(owner, readme(refused)), field, phrase, "quote it as written")
    assert_round_trips(owner, accepted)


# --- the JSON form says the same --------------------------------------------------------------------


def test_a_json_card_field_of_the_wrong_type_says_what_was_given(owner):
    r = owner.post(CARD, {"content": {"metadata": {"tags": {"a": 1}, "language": ["en", 5]}}}, format="json")
    assert_refused(r, "metadata.language[1]", "must be a string, not the number 5")
    assert r.json()["error"]["detail"]["metadata.tags"] == ['must be a list of strings, not a mapping: {"a": 1}']
