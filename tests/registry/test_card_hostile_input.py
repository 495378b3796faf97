"""Model cards: hostile and unusual input. Parsing stays linear, ModelCardData's own names are no metadata keys,
README export round-trips, and README quirks (a byte order mark, repeated YAML keys, several model-index
entries) are read or refused, never silently lost."""

# ruff: noqa: F811 - tests take the imported `owner` fixture as an argument

import contextlib
import time

import pytest

from audit.models import AuditEvent
from core.errors import InvalidInput
from registry import cards
from registry.models import ModelCardRevision
from tests.registry.test_cards import owner, post_markdown, stored_revision  # noqa: F401 - owner is a fixture

BASE = "/api/v1/models/acme/churn"
CARD = f"{BASE}/versions/1/card"
KB_100 = 100_000


def assert_refused(r, *phrases, field=None):
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (400, "invalid_card"), r.content
    for phrase in phrases:
        assert phrase in error["message"], error["message"]
    if field is not None:
        assert field in error["detail"], error["detail"]
    assert ModelCardRevision.objects.count() == 0
    assert not AuditEvent.objects.filter(action="card.revised").exists()


NOISE = 0.1  # seconds: a scheduler's time slice or two; the quadratic cases took seconds


def grows_linearly(call_at, n: int = KB_100 // 4) -> None:
    """Run `call_at(n)` and `call_at(4 * n)` (an InvalidInput is an answer too), the fastest of three runs each, and
    assert four times the input took less than eight times as long, give or take NOISE. Linear work takes about four
    times as long; where the cost grew with the square of the input (sixteen times), these inputs took from two
    seconds to minutes at the larger size. A ratio of two times taken together, not a time, with room for one
    preemption: the runs take milliseconds, and on a loaded machine (the suite's workers beside other processes on
    two cores) a 0.7 ms run measured 15 ms once. A bound on correctness, not a benchmark."""

    def fastest(size: int) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            with contextlib.suppress(InvalidInput):
                call_at(size)
            times.append(time.perf_counter() - start)
        return min(times)

    small, large = fastest(n), fastest(4 * n)
    assert large < 8 * small + NOISE, f"{n} took {small * 1000:.1f} ms, {4 * n} took {large * 1000:.1f} ms"


# --- 1. linear parsing: completeness runs on every read of a card ------------------------------------
# Each input is built for a size n (the larger runs are 100,000 characters or so).


@pytest.mark.parametrize(
    "text",
    [
        lambda n: "### a" + " " * n + "b",  # the heading pattern's lazy text before spaces + '#': ~29 s at 60 KB
        lambda n: "### a" + " " * (n // 2) + "#" * (n // 2) + "b",
        lambda n: "# a" + " #" * (n // 2) + "b",
        lambda n: "#" + " " * n + "#",
        lambda n: "<!--" * (n // 4),  # `<!--.*?-->` rescanned to the end from every unclosed `<!--`
        lambda n: "<!-- a --" * (n // 8),
        lambda n: "`" * n + "x`",
        lambda n: "```" + "`" * n + " " * n + "x",
        lambda n: "=" * n + " " * n + "x",
        lambda n: "a\n" + "-" * n + " " * n + "x",
        lambda n: " " * n + "-" + "- " * (n // 2) + "x",
        lambda n: "    " + "\t" * n,
        lambda n: "[more information needed" * (n // 24),
        lambda n: "\n" * n + "x",
    ],
    ids=[
        "heading-spaces",
        "heading-spaces-then-hashes",
        "heading-space-hash-pairs",
        "empty-heading-spaces",
        "unclosed-comments",
        "almost-closed-comments",
        "backtick-run",
        "fence-spaces",
        "setext-spaces",
        "underline-spaces",
        "rule-spaces",
        "indented-tabs",
        "placeholder-prefixes",
        "blank-lines",
    ],
)
def test_completeness_is_linear_in_the_text(text):
    grows_linearly(lambda n: cards.completeness({"model_details": text(n), "intended_use": text(n)}))


@pytest.mark.parametrize(
    "text",
    [
        lambda n: "### a" + " " * n + "b",
        lambda n: "<!--" * (n // 4),
        lambda n: "\n" * (2 * n - 2) + "x",  # under the 200,000-character text limit at the larger size
        lambda n: "```\n" + "## a" + " " * n + "\n```",
    ],
    ids=["heading-spaces", "unclosed-comments", "leading-blank-lines", "fenced-heading-spaces"],
)
def test_validate_and_export_are_linear_in_the_text(text):
    grows_linearly(lambda n: cards.to_huggingface(cards.validate({"model_details": text(n)})))


@pytest.mark.parametrize(
    "readme",
    [
        lambda n: "# T\n\n## a" + " " * n + "b\n",
        lambda n: "# T\n\n## Notes <!--" + "<!--" * (n // 4) + "\n\ntext\n",
        lambda n: "# T\n\n## Notes\n\n" + "### a" + " " * n + "#\n",
        lambda n: "---\nlicense: mit\n---\n" + "\n" * n + "# T\n",
    ],
    ids=["heading-spaces", "heading-comments", "subheading-spaces", "blank-lines"],
)
def test_readme_import_is_linear_in_the_text(readme):
    grows_linearly(lambda n: cards.from_huggingface(readme(n)))


def test_a_long_key_over_many_values_is_linear():
    """Each value's path was joined as it was walked: a 400 KB key over 99,000 strings took 2-24 s. The larger
    size, a 550 KB key over 99,000 values, fits in a request body."""

    def validate(n):
        cards.validate({"metadata": {"extra": {"k" * (n * 11 // 2): ["a"] * n}}})

    def jsonable(n):
        cards._jsonable({"k" * (n * 11 // 2): ["a"] * n}, ("metadata",), [cards.MAX_YAML_NODES])

    grows_linearly(validate, 99_000 // 4)
    grows_linearly(jsonable, 99_000 // 4)


def test_many_readme_tags_are_refused_before_huggingface_hub_sees_them():
    """huggingface_hub removes repeated tags in time that grows with the square of their number."""

    def readme(n: int) -> str:
        return "---\ntags: [" + ",".join(f"t{i}" for i in range(n)) + "]\n---\n# T\n"

    grows_linearly(lambda n: cards.from_huggingface(readme(n)), 4_000)
    with pytest.raises(InvalidInput, match="metadata.tags: has 16000 items, more than the limit of 1000"):
        cards.from_huggingface(readme(16_000))


def test_headings_are_read_as_commonmark_has_them():
    content = cards.from_huggingface(
        "# Model #\n\n## Notes ##   \n\nA\n\n## C#\n\nB\n\n##\tTabbed\t#\t\n\nC\n\n## \\#\n\nD\n\n##\n\nE\n"
    )
    assert content["title"] == "Model"
    assert [(s["title"], s["text"]) for s in content["other_sections"]] == [
        ("Notes", "A"),
        ("C#", "B"),
        ("Tabbed", "C"),
        ("\\#", "D\n\n##\n\nE"),  # an empty heading is text
    ]


# --- 2. ModelCardData's own names are no metadata keys ----------------------------------------------


@pytest.mark.parametrize("key", ["to_dict", "to_yaml", "self", "__dict__"])
def test_a_readme_key_that_is_a_model_card_data_name_is_400_naming_it(owner, key):
    """`to_dict:` was a 500 on import; `to_yaml:` was stored, then every README export was a 500."""
    r = post_markdown(owner, f"---\nlicense: mit\n{key}: x\n---\n# T\n\n## Model Details\n\nx\n")
    assert_refused(r, f"metadata.{key}: '{key}' cannot be a metadata key", "Rename the key", field=f"metadata.{key}")


@pytest.mark.parametrize("key", ["to_dict", "to_yaml", "self", "_to_dict", "get"])
def test_a_json_extra_key_that_is_a_model_card_data_name_is_400_naming_it(owner, key):
    r = owner.post(CARD, {"content": {"metadata": {"extra": {key: 1, "widget": []}}}}, format="json")
    assert_refused(r, f"metadata.extra.{key}: '{key}' cannot be a metadata key", field=f"metadata.extra.{key}")


def test_a_stored_revision_with_such_a_key_exports_as_409_not_500(owner, personas):
    stored_revision({"model_details": "x", "metadata": {"extra": {"to_yaml": "x"}}}, created_by=personas["owner"].user)
    assert owner.get(CARD).status_code == 200
    r = owner.get(CARD, {"format": "huggingface"})
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (409, "card_not_exportable"), r.content
    assert "metadata.extra.to_yaml" in error["message"] and "format=json" in error["message"]


# --- 3. import of an export gives the same content back ------------------------------------------------

RESULT = {"task": {"type": "text-classification"}, "dataset": {"type": "imdb", "name": "IMDB"}}


def round_trip(owner, content: dict) -> tuple[dict, dict]:
    """POST `content` as JSON, GET its README, POST that back: (stored content, the re-import's response)."""
    first = owner.post(CARD, {"content": content}, format="json")
    assert first.status_code == 201, first.json()
    exported = owner.get(CARD, {"format": "huggingface"})
    assert exported.status_code == 200
    again = post_markdown(owner, exported.content.decode())
    return first.json()["content"], again


@pytest.mark.parametrize(
    ("content", "stored"),
    [
        ({"title": "Model #", "model_details": "x"}, None),
        ({"title": "#", "model_details": "x"}, None),
        ({"title": "", "model_details": "x"}, {"model_details": "x"}),
        ({"summary": "  ", "model_details": "x"}, {"model_details": "x"}),
        ({"other_sections": [{"title": "Issue #", "text": "x"}, {"title": "C #", "text": ""}]}, None),
        (
            {"model_details": "x", "metadata": {"tags": ["a", "b", "a"]}},
            {"model_details": "x", "metadata": {"tags": ["a", "b"]}},
        ),
        (
            {"model_details": "x", "metadata": {"extra": {"widget": None, "a": 1}}},
            {"model_details": "x", "metadata": {"extra": {"a": 1}}},
        ),
        ({"model_details": "x", "metadata": {}}, {"model_details": "x"}),
        ({"model_details": "x", "metadata": {"extra": {}}}, {"model_details": "x"}),
        ({"model_details": "x", "metadata": {"model_index": []}}, {"model_details": "x"}),
        (
            {"governance": {"risk_class": "minimal", "license": "mit"}, "metadata": {"license": "mit"}},
            {"governance": {"risk_class": "minimal", "license": "mit"}},  # export writes it from governance
        ),
        (
            {
                "metadata": {
                    "model_index": [
                        {
                            "name": "m",
                            "results": [
                                {**RESULT, "metrics": [{"type": "accuracy", "value": 0.9, "args": {"k": None}}]},
                                {**RESULT, "metrics": [{"type": "f1", "value": 0.8}]},
                            ],
                        }
                    ]
                }
            },
            {
                "metadata": {
                    "model_index": [
                        {
                            "name": "m",
                            "results": [
                                {
                                    **RESULT,
                                    "metrics": [
                                        {"type": "accuracy", "value": 0.9, "args": {}},
                                        {"type": "f1", "value": 0.8},
                                    ],
                                }
                            ],
                        }
                    ]
                }
            },
        ),
        (
            {"model_details": "###  Architecture  ###\nTrees.\n\n\n#### Size\n\n\n\n   Small.  "},
            {"model_details": "### Architecture\n\nTrees.\n\n#### Size\n\n   Small."},
        ),
        (
            {"training_data": "### Training Procedure #\n\nx\n\n### Data #"},
            {"training_data": "### Training Procedure\n\nx\n\n### Data"},
        ),
    ],
    ids=[
        "title-closing-hash",
        "title-hash",
        "empty-title",
        "blank-summary",
        "other-title-closing-hash",
        "repeated-tags",
        "extra-none",
        "empty-metadata",
        "empty-extra",
        "empty-model-index",
        "governance-license",
        "model-index-same-task-and-dataset",
        "subheading-layout",
        "subheading-hashes",
    ],
)
def test_a_json_card_is_stored_as_its_readme_export_imports_back(owner, content, stored):
    """Each of these came back different from a README export, so posting the export back made a new
    revision: now the content is stored as the export imports back (or was already)."""
    first, again = round_trip(owner, content)
    assert first == (content if stored is None else stored)
    assert (again.status_code, again.json()["revision"]) == (200, 1), again.json()
    assert again.json()["content"] == first


def test_a_title_with_a_line_break_is_400(owner):
    """It was exported as `# Acme` then `## Intended Use ...`: another section on import."""
    r = owner.post(CARD, {"content": {"title": "Acme\n## Intended Use", "model_details": "x"}}, format="json")
    assert_refused(r, "title: must be one line", field="title")


def test_a_section_ending_in_an_open_code_block_is_400_naming_it(owner):
    """On export the block took in every section after it."""
    content = {"model_details": "Usage:\n\n````python\nfit()", "other_sections": [{"title": "Notes", "text": "x"}]}
    r = owner.post(CARD, {"content": content}, format="json")
    assert_refused(r, "model_details: ends inside the code block opened on its line 3 by '````'", field="model_details")
    r = owner.post(CARD, {"content": {"other_sections": [{"title": "Notes", "text": "~~~\nx"}]}}, format="json")
    assert_refused(r, "other_sections[0].text: ends inside the code block", field="other_sections[0].text")
    closed = {**content, "model_details": content["model_details"] + "\n````"}
    first, again = round_trip(owner, closed)
    assert first == closed and (again.status_code, again.json()["content"]) == (200, closed)


def test_a_readme_section_left_in_an_open_code_block_is_closed_on_import(owner):
    """Open to the end of the README, its block ends there: import closes it, so export keeps the sections
    it writes after it (the other sections, after the canonical ones)."""
    readme = "# T\n\n## Notes\n\nN.\n\n## Training Data\n\n```python\nfit()\n"
    content = cards.from_huggingface(readme)
    assert content["training_data"] == "```python\nfit()\n```"
    assert cards.from_huggingface(cards.to_huggingface(content)) == content
    r = post_markdown(owner, readme)
    assert r.status_code == 201 and r.json()["content"] == content, r.json()
    exported = owner.get(CARD, {"format": "huggingface"}).content.decode()
    assert exported.index("## Training Data") < exported.index("## Notes")  # written after the open block
    again = post_markdown(owner, exported)
    assert (again.status_code, again.json()["content"]) == (200, content)


@pytest.mark.parametrize(
    ("content", "field", "phrase"),
    [
        ({"model_details": "### Uses\n\nChurn triage."}, "model_details", "names the intended_use section"),
        (
            {"other_sections": [{"title": "Notes", "text": "x\n\n### Notes\n\n#### Training Data\n\ny"}]},
            "other_sections[0].text",
            "'#### Training Data', which names the training_data section",
        ),
        ({"other_sections": [{"title": "  ", "text": "x"}]}, "other_sections[0].title", "is blank"),
        (
            {
                "metadata": {
                    "model_index": [
                        {
                            "name": "m",
                            "results": [
                                {**RESULT, "metrics": [{"type": "accuracy", "value": 0.9}]},
                                {
                                    **RESULT,
                                    "source": {"url": "https://example.com"},
                                    "metrics": [{"type": "f1", "value": 0.8}],
                                },
                            ],
                        }
                    ]
                }
            },
            "metadata.model_index[0].results[1]",
            "the task type and dataset (type, config, split, revision) of results[0]",
        ),
    ],
    ids=["subheading-of-another-section", "nested-subheading-of-a-section", "blank-other-title", "lossy-merge"],
)
def test_what_a_readme_would_move_or_merge_is_400_naming_it(owner, content, field, phrase):
    r = owner.post(CARD, {"content": content}, format="json")
    assert_refused(r, f"{field}: ", phrase, field=field)


@pytest.mark.parametrize(
    "content",
    [
        {"title": "Model ##", "summary": "S.\n\n### Not a section\n\ntext", "model_details": "x"},
        {"model_details": "### Model Description\n\nx\n\n#### Notes #\n\ny", "factors": ""},
        {"other_sections": [{"title": "## x", "text": "````\n```\n## Intended Use\n```\n````"}]},
        {"metadata": {"extra": {"": 1, "<<": {"a": None}, "---": "2024-01-01", "y": ["\u2028", "\ufeff", "\r"]}}},
        {"metadata": {"language": "en", "datasets": "d", "tags": [], "license_name": ""}, "governance": {}},
        {"caveats_and_recommendations": "<!-- a comment\n\n### Recommendations\n\nx\n-->"},
    ],
    ids=["summary", "subsections", "fenced", "extra-yaml", "metadata-shapes", "comment"],
)
def test_export_then_import_is_the_identity_on_validated_content(content):
    content = cards.validate(content)
    exported = cards.to_huggingface(content)
    assert cards.from_huggingface(exported) == content
    assert cards.to_huggingface(cards.from_huggingface(exported)) == exported


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"metadata": {"extra": {"y": ["a", "a\x85b"]}}}, "metadata.extra.y[1]"),
        ({"metadata": {"extra": {"k\x85": 1}}}, "metadata.extra.k\x85"),
        ({"governance": {"intended_purpose": "\x85"}}, "governance.intended_purpose"),
    ],
)
def test_a_next_line_character_in_the_yaml_metadata_is_400(content, field):
    """PyYAML, as huggingface_hub calls it, writes U+0085 as it is in a quoted scalar and reads it back as a space."""
    with pytest.raises(InvalidInput, match="holds U\\+0085") as exc:
        cards.validate(content)
    assert list(exc.value.detail) == [field]
    assert cards.validate({"model_details": "a\x85b"}) == {"model_details": "a\x85b"}  # Markdown keeps it


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"governance": {"risk_class": "high", "human_oversight": "Reviewed\u3000"}}, "governance.human_oversight"),
        ({"metadata": {"tags": ["x\u00a0"]}}, "metadata.tags[0]"),
        ({"metadata": {"extra": {"z": "q\u2003"}}}, "metadata.extra.z"),
    ],
)
def test_yaml_metadata_ending_in_a_unicode_space_is_400(content, field):
    """PyYAML writes such a value unquoted and huggingface_hub strips the block: the last value came back without
    it, so a README export posted back was a new revision. ASCII spaces at the end are quoted and kept."""
    with pytest.raises(InvalidInput, match="ends in a Unicode space") as exc:
        cards.validate(content)
    assert list(exc.value.detail) == [field]
    kept = cards.validate({"metadata": {"extra": {"z": "q "}}, "model_details": "x\u3000"})  # Markdown keeps it
    assert cards.from_huggingface(cards.to_huggingface(kept)) == kept


# --- 4. a byte order mark --------------------------------------------------------------------------


def test_a_readme_with_a_byte_order_mark_keeps_its_metadata(owner):
    """The BOM stood before `---`: the YAML block was taken for the summary, its license lost."""
    readme = "---\nlicense: apache-2.0\n---\n# Churn\n\n## Model Details\n\nx\n"
    r = owner.post(CARD, data=b"\xef\xbb\xbf" + readme.encode(), content_type="text/markdown; charset=utf-8")
    assert r.status_code == 201, r.json()
    content = r.json()["content"]
    assert content["metadata"] == {"license": "apache-2.0"} and "summary" not in content
    assert cards.from_huggingface("\ufeff" + readme) == content  # for callers of the function too


# --- 5. repeated YAML keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_lines", "phrases"),
    [
        ("license: apache-2.0\nlicense: proprietary", ["the key 'license' is repeated (first on line 2)", "line 3"]),
        ("widget:\n  a: 1\n  b: 2\n  a: 3", ["the key 'a' is repeated (first on line 3)", "line 5"]),
        ("1: a\n'1': b", ["the key '1' is repeated (first on line 2)", "line 3"]),
        ("w: {x: 1, x: 2}", ["the key 'x' is repeated (first on line 2)"]),
    ],
    ids=["top-level", "nested", "int-and-string", "flow"],
)
def test_a_repeated_yaml_key_is_400_naming_it_and_its_line(owner, yaml_lines, phrases):
    """The last one won: the allowed-licenses policy saw `proprietary` only, a reader of the README both."""
    r = post_markdown(owner, f"---\n{yaml_lines}\n---\n# T\n\n## Model Details\n\nx\n")
    assert_refused(r, "YAML metadata", *phrases, field="metadata")


def test_a_yaml_merge_may_override_a_merged_key():
    content = cards.from_huggingface("---\nbase: &b {x: 1, y: 1}\nw:\n  <<: *b\n  x: 2\n---\n# T\n")
    assert content["metadata"]["extra"]["w"] == {"x": 2, "y": 1}


# --- 6. model-index with several entries -----------------------------------------------------------

MODEL_INDEX_ENTRY = """\
- name: {name}
  results:
  - task: {{type: text-classification}}
    dataset: {{type: imdb, name: IMDB}}
    metrics:
    - {{type: accuracy, value: {value}}}
"""


def test_a_readme_model_index_with_several_entries_is_400(owner):
    """huggingface_hub filed every result under the last entry's name: two models' results became one's."""
    entries = MODEL_INDEX_ENTRY.format(name="small", value=0.8) + MODEL_INDEX_ENTRY.format(name="large", value=0.9)
    r = post_markdown(owner, f"---\nmodel-index:\n{entries}---\n# T\n")
    assert_refused(r, "metadata.model_index: the README's model-index has 2 entries", field="metadata.model_index")
    one = post_markdown(owner, f"---\nmodel-index:\n{MODEL_INDEX_ENTRY.format(name='small', value=0.8)}---\n# T\n")
    assert one.status_code == 201, one.json()
    assert one.json()["content"]["metadata"]["model_index"][0]["name"] == "small"


def test_readme_model_index_results_merged_with_a_loss_are_400():
    results = (
        "  - task: {type: t, name: First}\n    dataset: {type: d, name: D}\n    metrics: [{type: a, value: 1}]\n"
        "  - task: {type: t, name: Second}\n    dataset: {type: d, name: D}\n    metrics: [{type: b, value: 2}]\n"
    )
    with pytest.raises(InvalidInput, match=r"metadata.model_index\[0\].results\[1\]: has the task type") as exc:
        cards.from_huggingface(f"---\nmodel-index:\n- name: m\n  results:\n{results}---\n# T\n")
    assert list(exc.value.detail) == ["metadata.model_index[0].results[1]"]
