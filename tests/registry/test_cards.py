"""Model cards: schema, completeness, Hugging Face round trip, append-only revisions, API access."""

import copy
import json
import socket
import threading

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError
from huggingface_hub import ModelCard

from accounts import scopes
from audit.models import AuditEvent
from core.errors import InvalidInput
from registry import cards
from registry.models import ModelCardRevision
from tests.conftest import bearer
from tests.registry.helpers import register_body, s3_manifest

BASE = "/api/v1/models/acme/churn"
CARD = f"{BASE}/versions/1/card"

README = """\
---
language:
- en
- de
license: apache-2.0
library_name: transformers
pipeline_tag: text-classification
base_model: distilbert-base-uncased
datasets:
- imdb
metrics:
- accuracy
- f1
tags:
- sentiment
- generated_from_trainer
widget:
- text: I loved this movie!
governance:
  risk_class: limited
  intended_purpose: Sentiment triage of customer reviews in the support queue.
  human_oversight: Agents review every review classified as negative before acting on it.
  license: apache-2.0
model-index:
- name: acme-sentiment
  results:
  - task:
      type: text-classification
      name: Text Classification
    dataset:
      name: IMDB
      type: imdb
      config: plain_text
      split: test
      revision: e6281661ce1c48d982bc483cf8a173c1bbeb5d31
    metrics:
    - type: accuracy
      value: 0.9312
      name: Accuracy
    - type: f1
      value: 0.9301
      name: F1
---

# Model Card for acme-sentiment

<!-- Provide a quick summary of what the model is/does. -->

A DistilBERT model fine-tuned on IMDB for binary sentiment.

## Model Details

### Model Description

- **Developed by:** ACME ML
- **Model type:** Transformer encoder
- **Finetuned from model:** distilbert-base-uncased

## Uses

### Direct Use

Classify the sentiment of English product and movie reviews.

### Out-of-Scope Use

Medical, legal or employment decisions.

## Bias, Risks, and Limitations

Trained on English movie reviews only; sarcasm is often misread.

### Recommendations

Do not use it on non-English text. Re-evaluate on your own domain first.

## How to Get Started with the Model

```python
# A comment in code is not a heading
from transformers import pipeline
classifier = pipeline("text-classification", model="acme/sentiment")
```

## Training Details

### Training Data

The IMDB train split, 25,000 labelled reviews.

### Training Procedure

#### Training Hyperparameters

- learning_rate: 2e-05
- num_epochs: 3

## Evaluation

### Testing Data, Factors & Metrics

#### Testing Data

The IMDB test split.

#### Factors

Review length and rating.

#### Metrics

Accuracy and F1, threshold 0.5.

### Results

Accuracy 0.9312, F1 0.9301.

## Environmental Impact

[More Information Needed]

## Citation

**BibTeX:**

```bibtex
@article{acme2024, title={Sentiment}}
```
"""

FULL_CONTENT = {
    "title": "Model Card for acme/churn",
    "summary": "Predicts churn for subscription customers.",
    "model_details": "Gradient-boosted trees, trained by the ACME data team in 2026.",
    "intended_use": "Prioritising retention offers. Not for pricing decisions.",
    "factors": "Customer tenure and plan.",
    "metrics": "AUC, and recall at 10% of customers contacted.",
    "evaluation_data": "Holdout of 2025-Q4 customers.",
    "training_data": "Customers 2022-2025, anonymised.",
    "quantitative_analyses": "AUC 0.91 overall; 0.88 for customers under 3 months.",
    "ethical_considerations": "No protected attributes used; proxies were reviewed.",
    "caveats_and_recommendations": "Retrain quarterly.",
    "governance": {
        "risk_class": "limited",
        "intended_purpose": "Rank customers for retention outreach.",
        "human_oversight": "Account managers decide every offer.",
        "license": "proprietary",
    },
    "metadata": {"license": "other", "tags": ["churn", "tabular"], "library_name": "xgboost"},
}


@pytest.fixture
def owner(personas):
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    assert client.post(f"{BASE}/versions/", register_body(s3_manifest(b"v1")), format="json").status_code == 201
    return client


def post_markdown(client, text, path=CARD):
    return client.post(path, data=text.encode(), content_type="text/markdown; charset=utf-8")


def stored_revision(content: dict, version=None, created_by=None):
    """Revision 1 of acme/churn v1 (or of `version`) written as an earlier release of the registry stored it,
    without today's validation (revisions are append-only: such ones stay)."""
    from registry.models import ModelVersion

    if version is None:
        version = ModelVersion.objects.get(model__namespace="acme", model__name="churn", number=1)
    return ModelCardRevision.objects.create(
        version=version, revision=1, schema_version="1", content=content, created_by=created_by
    )


# --- Hugging Face mapping (pure functions) -----------------------------------------------------


def test_import_maps_hf_template_to_canonical_sections():
    content = cards.from_huggingface(README)
    assert content["title"] == "Model Card for acme-sentiment"
    assert "fine-tuned on IMDB" in content["summary"]
    assert "Developed by:** ACME ML" in content["model_details"]
    assert "### Direct Use" in content["intended_use"] and "Medical, legal" in content["intended_use"]
    assert content["ethical_considerations"] == "Trained on English movie reviews only; sarcasm is often misread."
    assert content["caveats_and_recommendations"].startswith("Do not use it on non-English text.")
    assert "25,000 labelled reviews" in content["training_data"] and "learning_rate" in content["training_data"]
    assert content["evaluation_data"] == "The IMDB test split."
    assert content["factors"] == "Review length and rating."
    assert content["metrics"] == "Accuracy and F1, threshold 0.5."
    assert content["quantitative_analyses"] == "### Results\n\nAccuracy 0.9312, F1 0.9301."
    assert content["governance"]["risk_class"] == "limited"
    meta = content["metadata"]
    assert "license" not in meta and content["governance"]["license"] == "apache-2.0"  # one license, kept once
    assert meta["base_model"] == "distilbert-base-uncased"
    assert meta["datasets"] == ["imdb"] and meta["metrics"] == ["accuracy", "f1"]
    assert meta["language"] == ["en", "de"] and meta["pipeline_tag"] == "text-classification"
    assert meta["model_index"][0]["results"][0]["metrics"][0] == {
        "type": "accuracy",
        "value": 0.9312,
        "name": "Accuracy",
    }
    assert meta["extra"] == {"widget": [{"text": "I loved this movie!"}]}
    others = [s["title"] for s in content["other_sections"]]
    assert others == ["How to Get Started with the Model", "Environmental Impact", "Citation"]
    # a '#' line inside a code fence stays code
    assert "# A comment in code is not a heading" in content["other_sections"][0]["text"]


def test_hf_round_trip_through_model_card(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("model card import/export must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    original = ModelCard(README)
    content = cards.from_huggingface(README)
    exported = cards.to_huggingface(content)

    card = ModelCard(exported)  # what the Hub and huggingface_hub users will read
    assert card.data.to_dict() == original.data.to_dict()  # every metadata key, model-index included
    assert card.data.eval_results[0].metric_value == 0.9312
    assert card.data.eval_results[0].dataset_revision == "e6281661ce1c48d982bc483cf8a173c1bbeb5d31"
    for section in cards.MITCHELL_SECTIONS:
        heading = f"## {cards.HEADINGS[section]}\n\n{content[section]}\n"
        assert heading in card.text, section
    for other in content["other_sections"]:
        assert f"## {other['title']}\n\n{other['text']}\n" in card.text
    # export -> import gives the same canonical card, and export is stable
    assert cards.from_huggingface(card.content) == content
    assert cards.to_huggingface(cards.from_huggingface(exported)) == exported


def test_export_of_json_card_parses_with_model_card():
    exported = cards.to_huggingface(FULL_CONTENT)
    card = ModelCard(exported)
    assert card.data.license == "other"
    assert card.data.tags == ["churn", "tabular"]
    assert card.data.to_dict()["governance"] == FULL_CONTENT["governance"]
    assert card.text.lstrip().startswith("# Model Card for acme/churn")
    assert cards.from_huggingface(exported) == FULL_CONTENT


def test_governance_license_fills_hf_license_when_metadata_has_none():
    content = {"governance": {"risk_class": "minimal", "license": "mit"}, "model_details": "x"}
    assert ModelCard(cards.to_huggingface(content)).data.license == "mit"


def test_readme_without_metadata_imports_sections():
    content = cards.from_huggingface("# Plain\n\nJust text.\n\n## Intended uses & limitations\n\nDemo only.\n")
    assert content == {"title": "Plain", "summary": "Just text.", "intended_use": "Demo only."}


@pytest.mark.parametrize(
    ("readme", "field"),
    [
        ("---\ngovernance:\n  risk_class: extreme\n---\n# x\n", "governance.risk_class"),
        ("---\nlicense: [a, b]\n---\n# x\n", "metadata.license"),
        ("---\nmodel-index:\n- name: x\n  results:\n  - task: {type: t}\n---\n", "metadata"),
        (
            "---\nmodel-index:\n- name: m\n  results:\n  - task: {type: t}\n    dataset: {type: d, name: D}\n"
            "    metrics:\n    - {type: acc, value: .nan}\n---\n",
            "metadata",
        ),
        ("---\n: [unclosed\n---\n", "metadata"),
        ("---\n- a list\n---\n", "metadata"),
    ],
)
def test_bad_readme_metadata_is_invalid_input_naming_the_field(readme, field):
    with pytest.raises(InvalidInput) as exc:
        cards.from_huggingface(readme)
    assert exc.value.message.startswith(("Invalid model card. " + field, "The README's"))
    assert any(key.startswith(field) for key in exc.value.detail)


def test_yaml_alias_bomb_is_refused():
    lines = ["---", "a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        name = chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{', '.join('*' + prev for _ in range(10))}]")
    readme = "\n".join([*lines, "---", "# bomb"])
    with pytest.raises(InvalidInput, match="more than"):
        cards.from_huggingface(readme)


# --- schema validation and completeness (pure) -------------------------------------------------


def test_validate_names_failing_field_paths():
    bad = copy.deepcopy(FULL_CONTENT)
    bad["governance"]["risk_class"] = "extreme"
    with pytest.raises(InvalidInput) as exc:
        cards.validate(bad)
    assert exc.value.message == (
        "Invalid model card. governance.risk_class: 'extreme' is not one of "
        "['minimal', 'limited', 'high', 'unacceptable']"
    )
    assert list(exc.value.detail) == ["governance.risk_class"]

    with pytest.raises(InvalidInput) as exc:
        cards.validate({"intended_uses": "typo", "metrics": 5, "metadata": {"tags": ["ok", 3]}})
    assert set(exc.value.detail) == {"intended_uses", "metrics", "metadata.tags[1]"}
    assert "unknown field" in exc.value.detail["intended_uses"][0]
    assert "(and 2 more)" in exc.value.message

    with pytest.raises(InvalidInput) as exc:
        cards.validate({"model_details": "ok\n\n## Sneaky new section\n\ntext"})
    assert "model_details" in exc.value.detail


def test_validate_normalizes_whitespace_and_does_not_mutate_input():
    content = {"title": "  T  ", "model_details": "\n\ntext  \n\n", "other_sections": [{"title": " X ", "text": "y\n"}]}
    before = copy.deepcopy(content)
    assert cards.validate(content) == {
        "title": "T",
        "model_details": "text",
        "other_sections": [{"title": "X", "text": "y"}],
    }
    assert content == before


def test_other_section_may_not_shadow_a_canonical_one():
    with pytest.raises(InvalidInput) as exc:
        cards.validate({"other_sections": [{"title": "Training Data", "text": "x"}]})
    assert "other_sections[0].title" in exc.value.detail


def test_completeness_lists_missing_and_empty_sections():
    assert cards.completeness(FULL_CONTENT) == {"complete": True, "missing": [], "empty": []}
    content = {
        "model_details": "Real text.",
        "intended_use": "<!-- Address questions around how the model is intended to be used -->\n\n",
        "factors": "[More Information Needed]",
        "metrics": "### Sub-heading only\n\nTBD",
        "training_data": "Only this.",
        "governance": {"risk_class": None, "intended_purpose": ""},
    }
    report = cards.completeness(content)
    assert report["complete"] is False
    assert report["missing"] == [
        "evaluation_data",
        "quantitative_analyses",
        "ethical_considerations",
        "caveats_and_recommendations",
    ]
    assert report["empty"] == ["intended_use", "factors", "metrics", "governance"]
    assert cards.SECTIONS[:2] == ["model_details", "intended_use"] and cards.SECTIONS[-1] == "governance"


# --- API -----------------------------------------------------------------------------------


def test_post_json_then_get_latest_and_older_revisions(owner, personas):
    assert owner.get(CARD).status_code == 404
    assert owner.get(CARD).json()["error"]["code"] == "no_card"
    first = owner.post(CARD, {"content": FULL_CONTENT}, format="json")
    assert first.status_code == 201, first.json()
    body = first.json()
    assert body["revision"] == 1 and body["schema_version"] == "1"
    assert body["content"] == FULL_CONTENT
    assert body["completeness"] == {"complete": True, "missing": [], "empty": []}
    assert body["created_by"] == "owner" and body["created_at"]

    second_content = {**FULL_CONTENT, "factors": "", "governance": {"risk_class": "high"}}
    second = owner.post(CARD, {"content": second_content}, format="json")
    assert second.status_code == 201 and second.json()["revision"] == 2

    latest = owner.get(CARD).json()
    assert latest["revision"] == 2 and latest["completeness"]["empty"] == ["factors"]
    assert owner.get(CARD, {"revision": 1}).json()["content"] == FULL_CONTENT
    assert owner.get(CARD, {"revision": 3}).status_code == 404
    assert owner.get(CARD, {"revision": "abc"}).status_code == 400
    assert owner.get(CARD, {"format": "xml"}).status_code == 400

    revisions = owner.get(f"{CARD}/revisions").json()
    assert [r["revision"] for r in revisions] == [1, 2]
    assert revisions[0]["completeness"]["complete"] is True and revisions[1]["completeness"]["complete"] is False
    assert all(r["created_by"] == "owner" and "content" not in r for r in revisions)
    assert owner.get(f"{BASE}/versions/9/card").status_code == 404


def test_post_readme_then_export_round_trips(owner):
    r = post_markdown(owner, README)
    assert r.status_code == 201, r.json()
    assert r.json()["content"]["governance"]["risk_class"] == "limited"
    assert r.json()["completeness"]["complete"] is True

    exported = owner.get(CARD, {"format": "huggingface"})
    assert exported.status_code == 200
    assert exported["Content-Type"] == "text/markdown; charset=utf-8"
    assert exported["X-Card-Revision"] == "1"
    card = ModelCard(exported.content.decode())
    assert card.data.to_dict() == ModelCard(README).data.to_dict()
    assert "## Intended Use\n\n### Direct Use" in card.text

    # Accept: text/markdown alone also gets the README
    negotiated = owner.get(CARD, HTTP_ACCEPT="text/markdown")
    assert negotiated.status_code == 200 and negotiated.content == exported.content
    # ... but errors stay JSON
    missing = owner.get(f"{CARD}?revision=7", HTTP_ACCEPT="text/markdown")
    assert missing.status_code == 404 and missing["Content-Type"] == "application/json"
    assert missing.json()["error"]["code"] == "no_card"

    # posting the export back gives the same canonical content: no new revision
    again = post_markdown(owner, exported.content.decode())
    assert again.status_code == 200 and again.json()["content"] == r.json()["content"]
    assert again.json()["revision"] == 1


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({**FULL_CONTENT, "governance": {"risk_class": "extreme"}}, "governance.risk_class"),
        ({"model_detail": "typo"}, "model_detail"),
        ({"metadata": {"model_index": [{"name": "x", "results": [{"task": {"type": "t"}}]}]}}, "metadata.model_index"),
        ({"governance": {"license": "not a license!"}}, "governance.license"),
    ],
)
def test_schema_errors_are_400_naming_the_field(owner, content, field):
    events = AuditEvent.objects.count()
    r = owner.post(CARD, {"content": content}, format="json")
    assert r.status_code == 400, r.json()
    error = r.json()["error"]
    assert error["code"] == "invalid_card"
    assert field in error["message"]
    assert any(key.startswith(field) for key in error["detail"])
    assert ModelCardRevision.objects.count() == 0 and AuditEvent.objects.count() == events


def test_bad_bodies_are_400s(owner):
    r = owner.post(CARD, {"content": ["not", "an", "object"]}, format="json")
    assert r.status_code == 400 and "content" in r.json()["error"]["message"]
    r = owner.post(CARD, {"content": {}, "extra": 1}, format="json")
    assert r.status_code == 400 and "extra" in r.json()["error"]["message"]
    r = owner.post(CARD, {}, format="json")
    assert r.status_code == 400 and "content" in r.json()["error"]["message"]
    r = post_markdown(owner, "---\ngovernance:\n  risk_class: extreme\n---\n# T\n")
    assert r.status_code == 400 and "governance.risk_class" in r.json()["error"]["message"]
    r = owner.post(CARD, data=b"", content_type="text/markdown")
    assert r.status_code == 400
    r = owner.post(CARD, data="\xff\xfe# x".encode("latin-1"), content_type="text/markdown; charset=utf-8")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_encoding"
    r = owner.post(CARD, data=b"x", content_type="text/plain")
    assert r.status_code == 415
    assert ModelCardRevision.objects.count() == 0


def test_markdown_body_size_is_bounded(owner, settings):
    settings.MAX_JSON_BODY_BYTES = 1000
    r = post_markdown(owner, "# Big\n\n" + "x" * 2000)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_each_post_writes_exactly_one_audit_event(owner):
    for expected_revision in (1, 2):
        before = AuditEvent.objects.count()
        content = {**FULL_CONTENT, "factors": f"Revision {expected_revision}."}
        assert owner.post(CARD, {"content": content}, format="json").status_code == 201
        events = list(AuditEvent.objects.order_by("seq")[before:])
        assert [e.action for e in events] == ["card.revised"]
        after = json.loads(events[0].after)
        assert after["revision"] == expected_revision and after["version"] == 1 and after["model"] == "acme/churn"
        assert after["sections"] == cards.SECTIONS
        assert len(after["content_sha256"]) == 64
        assert "Gradient-boosted" not in str(after)  # names sections, not their text
    before = AuditEvent.objects.count()
    assert post_markdown(owner, README).status_code == 201
    assert list(AuditEvent.objects.order_by("seq")[before:].values_list("action", flat=True)) == ["card.revised"]


def test_revisions_are_append_only_in_the_database(owner):
    owner.post(CARD, {"content": FULL_CONTENT}, format="json")
    for sql in (
        "UPDATE registry_modelcardrevision SET content = '{}'",
        "UPDATE registry_modelcardrevision SET revision = 7",
        "DELETE FROM registry_modelcardrevision",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
            cur.execute(sql)
    assert ModelCardRevision.objects.get().content == FULL_CONTENT


ALL = ["admin", "owner", "reviewer", "auditor", "ci_bot", "outsider"]
READERS = {"admin", "owner", "reviewer", "auditor"}
WRITERS = {"admin", "owner"}


@pytest.mark.parametrize("persona", ALL)
def test_permission_matrix(owner, personas, persona):
    assert owner.post(CARD, {"content": FULL_CONTENT}, format="json").status_code == 201
    client = personas[persona].client()
    for path in (CARD, f"{CARD}?format=huggingface", f"{CARD}/revisions"):
        r = client.get(path)
        assert r.status_code == (200 if persona in READERS else 404), (path, r.content)
        if r.status_code == 404:
            assert "acme/churn" not in r.content.decode()
    events = AuditEvent.objects.count()
    r = client.post(CARD, {"content": {**FULL_CONTENT, "factors": f"Edited by {persona}."}}, format="json")
    expected = 201 if persona in WRITERS else (403 if persona in READERS else 404)
    assert r.status_code == expected, r.content
    assert post_markdown(client, README).status_code == expected
    assert AuditEvent.objects.count() == events + (2 if expected == 201 else 0)


def test_read_only_token_cannot_post(owner, personas, make_token):
    token = make_token(personas["owner"].user, [scopes.READ])
    client = bearer(token)
    assert client.get(CARD).status_code == 404  # readable: there is just no card yet
    r = client.post(CARD, {"content": FULL_CONTENT}, format="json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    assert post_markdown(client, README).status_code == 403
    writer = bearer(make_token(personas["owner"].user, [scopes.VERSIONS_WRITE]))
    assert writer.post(CARD, {"content": FULL_CONTENT}, format="json").status_code == 201
    assert writer.get(CARD).status_code == 403  # reading needs the read scope
    assert ModelCardRevision.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_revisions_get_distinct_numbers(personas):
    owner = personas["owner"]
    client = owner.client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    assert client.post(f"{BASE}/versions/", register_body(s3_manifest(b"v1")), format="json").status_code == 201
    barrier = threading.Barrier(6)
    results = []

    def add(i):
        try:
            barrier.wait()
            body = {"content": {**FULL_CONTENT, "summary": f"writer {i}"}}
            r = bearer(owner.token).post(CARD, body, format="json")
            results.append((r.status_code, r.json().get("revision")))
        finally:
            connection.close()

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [(201, n) for n in range(1, 7)]
    assert AuditEvent.objects.filter(action="card.revised").count() == 6


def test_posting_the_same_card_again_is_idempotent(personas):
    from audit.models import AuditEvent
    from registry.models import ModelCardRevision
    from tests.registry.helpers import register_body, s3_manifest

    owner = personas["owner"].client()
    owner.post("/api/v1/models/", {"namespace": "idem", "name": "m"}, format="json")
    owner.post("/api/v1/models/idem/m/versions/", register_body(s3_manifest(b"x")), format="json")
    card = {"content": {"intended_use": "Testing idempotency."}}
    first = owner.post("/api/v1/models/idem/m/versions/1/card", card, format="json")
    events = AuditEvent.objects.count()
    again = owner.post("/api/v1/models/idem/m/versions/1/card", card, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["revision"] == first.json()["revision"] == 1
    assert ModelCardRevision.objects.count() == 1 and AuditEvent.objects.count() == events


@pytest.mark.parametrize(
    ("metadata", "where"),
    [
        ('language: "\\ud800"', "metadata.language"),
        ('"\\udc00key": 1', "metadata.\\udc00key"),
        ('language: "a\\0b"', "metadata.language"),
    ],
)
def test_unstorable_text_in_the_metadata_is_400_naming_where(owner, metadata, where):
    """YAML's \\uD800 and \\0 escapes make text no database or response can hold (it was a 500)."""
    r = post_markdown(owner, f"---\nlicense: mit\n{metadata}\n---\n# Model\n\nText.\n")
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (400, "invalid_card")
    assert f"{where} holds a " in error["message"]
    assert ModelCardRevision.objects.count() == 0
    if "\\0" not in metadata:
        assert "\\U0001F600" in error["message"]  # how YAML writes it: it does not pair \\u escapes
    astral = post_markdown(owner, '---\nlicense: mit\nlanguage: "\\U0001F600"\n---\n# Model\n\nText.\n')
    assert astral.status_code == 201, astral.json()


def nested(levels, leaf=1):
    """`levels` objects, one inside the other."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def assert_refused(r, *phrases):
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (400, "invalid_card"), r.content
    for phrase in phrases:
        assert phrase in error["message"], error["message"]
    assert ModelCardRevision.objects.count() == 0
    assert not AuditEvent.objects.filter(action="card.revised").exists()


@pytest.mark.parametrize(
    ("yaml_line", "phrases"),
    [
        ("d: 2024-13-45", ["'2024-13-45' is not a valid !!timestamp (month must be in 1..12)", "line 3"]),
        ("d: 2024-01-01T10:00:00+99:00", ["is not a valid !!timestamp (offset must be", "line 3"]),
        ("a: !!float x", ["'x' is not a valid !!float", "line 3"]),
        ("a: !!bool x", ["'x' is not a valid !!bool", "line 3"]),
        ("a: !!timestamp x", ["'x' is not a valid !!timestamp", "line 3"]),
        ("a: !!int ''", ["'' is not a valid !!int", "line 3"]),  # PyYAML: IndexError
        ("a: !!float ''", ["'' is not a valid !!float", "line 3"]),
        ("x: " + "[" * 1000 + "]" * 1000, ["nests more than 32 levels deep", "line 3"]),
        ("a: &a [*a]", ["metadata.a[0]", "more than 32 levels deep", "&a [*a]"]),
        # aliases stacked: each 20 deep as written, 40 once expanded
        ("a: &a " + "[" * 20 + "]" * 20 + "\nb: " + "[" * 20 + "*a" + "]" * 20, ["metadata.b[0]", "32 levels"]),
    ],
    ids=[
        "bad-date",
        "bad-offset",
        "bad-float",
        "bad-bool",
        "bad-timestamp",
        "empty-int",
        "empty-float",
        "deep",
        "self-alias",
        "stacked-aliases",
    ],
)
def test_unreadable_yaml_metadata_is_400_naming_the_problem(owner, yaml_line, phrases):
    """PyYAML's constructors raise ValueError and others, and its composer and our converter recursed
    once per level or forever (an alias in its own anchor): all were 500s."""
    r = post_markdown(owner, f"---\nlicense: mit\n{yaml_line}\n---\n\n# T\n\n## Model Details\n\nx\n")
    assert_refused(r, *phrases)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("# Model\n\n## Model Details\n\nA\x00B\n", 5),
        ("# Mo\x00del\n\nText.\n", 1),
        ("---\nlicense: mit\n---\n# Model\n\n## Training\x00 Data\n\nx\n", 6),
        ("---\r\nlicense: mi\x00t\r\n---\r\n# Model\r\n", 2),  # raw NUL in the YAML block, CRLF lines
    ],
    ids=["section", "title", "heading", "yaml"],
)
def test_nul_in_a_readme_is_400_naming_the_line(owner, text, line):
    """PostgreSQL's text and jsonb cannot hold NUL: a NUL in the Markdown reached the database (a 500)."""
    r = post_markdown(owner, text)
    assert_refused(r, f"line {line} of the README holds a NUL character")
    # the JSON body refuses it too (at parse time), and so does validate() for any other caller
    r = owner.post(CARD, {"content": {"model_details": "A\x00B"}}, format="json")
    assert r.status_code == 400 and "NUL" in r.json()["error"]["message"]
    with pytest.raises(InvalidInput, match="model_details holds a NUL"):
        cards.validate({"model_details": "A\x00B"})
    assert ModelCardRevision.objects.count() == 0


def test_card_nesting_is_limited_to_32_levels_on_every_entry_point(owner):
    """Deep content was a 500 (copy.deepcopy) from ~600 levels, and from ~400 it was stored but its README
    export failed forever. The card, metadata and extra are levels 1-3."""
    at_limit = {"metadata": {"extra": nested(30)}}
    for too_deep in ({"metadata": {"extra": nested(31)}}, {"metadata": {"extra": nested(600)}}):
        r = owner.post(CARD, {"content": too_deep}, format="json")
        assert_refused(r, "metadata.extra.a.a", "nest more than 32 levels deep")
    # an HF import lands its YAML keys in metadata.extra: the same limit, named the same way
    r = post_markdown(owner, "---\nx: " + "[" * 30 + "]" * 30 + "\n---\n# T\n")
    assert_refused(r, "metadata.extra.x[0][0]", "nest more than 32 levels deep")

    first = owner.post(CARD, {"content": at_limit}, format="json")
    assert first.status_code == 201, first.json()
    exported = owner.get(CARD, {"format": "huggingface"})
    assert exported.status_code == 200
    # ... and the export imports back to the same card (no new revision)
    again = post_markdown(owner, exported.content.decode())
    assert (again.status_code, again.json()["revision"]) == (200, 1), again.json()
    assert again.json()["content"] == at_limit


def test_a_stored_revision_too_deep_to_export_is_409_not_500(owner, personas):
    """A revision stored before the limit stays (append-only): its JSON reads, its README export says why not."""
    stored_revision({"metadata": {"extra": nested(400)}}, created_by=personas["owner"].user)
    assert owner.get(CARD).status_code == 200
    for r in (owner.get(CARD, {"format": "huggingface"}), owner.get(CARD, HTTP_ACCEPT="text/markdown")):
        error = r.json()["error"]
        assert (r.status_code, error["code"]) == (409, "card_not_exportable"), r.content
        assert "nest more than 32 levels deep" in error["message"] and "format=json" in error["message"]


def test_a_card_with_no_other_sections_posted_back_from_its_readme_is_the_same_revision(personas):
    """{"other_sections": []} is stored as its README gives it back (without the key): a CI re-run posting the
    exported README was a second revision of the same card, voiding the approvals bound to the first."""
    from tests.registry.helpers import register_body, s3_manifest

    owner = personas["owner"].client()
    owner.post("/api/v1/models/", {"namespace": "idem", "name": "m"}, format="json")
    owner.post("/api/v1/models/idem/m/versions/", register_body(s3_manifest(b"x")), format="json")
    url = "/api/v1/models/idem/m/versions/1/card"
    first = owner.post(url, {"content": {"model_details": "Trees.", "other_sections": []}}, format="json")
    assert first.status_code == 201 and "other_sections" not in first.json()["content"], first.json()
    readme = owner.get(url, {"format": "huggingface"}).content
    again = owner.post(url, readme, content_type="text/markdown")
    assert (again.status_code, again.json()["revision"]) == (200, 1)
