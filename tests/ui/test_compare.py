from types import SimpleNamespace

from governance.policy import parse_rules
from governance.ui_compare import card_diff, lineage_rows, metric_deltas

RULES = parse_rules(
    {
        "metric_gates": [
            {"metric": "auc", "op": ">=", "threshold": 0.8},
            {"metric": "latency_ms", "op": "<", "threshold": 100},
            {"metric": "version_tag", "op": "==", "threshold": 1},
        ]
    }
)


def test_metric_deltas_follow_the_gate_direction():
    rows = {
        r.name: r
        for r in metric_deltas(
            {"auc": 0.9, "latency_ms": 50, "f1": 0.7, "version_tag": 2, "new": 1},
            {"auc": 0.8, "latency_ms": 40, "f1": 0.7, "version_tag": 1, "gone": 3},
            RULES,
        )
    }
    assert rows["auc"].verdict == "better" and rows["auc"].delta_text == "+0.1"
    assert rows["latency_ms"].verdict == "worse" and rows["latency_ms"].delta_text == "+10"
    assert rows["f1"].verdict == "" and rows["f1"].delta_text == "+0"  # no gate: change only
    assert rows["version_tag"].verdict == ""  # == has no direction
    assert rows["new"].serving_text == "" and rows["new"].delta is None
    assert rows["gone"].candidate_text == "" and rows["gone"].serving_text == "3"
    # gated metrics first
    assert [r.name for r in metric_deltas({"a": 1, "auc": 1}, None, RULES)] == ["auc", "a"]


def test_metric_deltas_same_value():
    (row,) = metric_deltas({"auc": 0.9}, {"auc": 0.9}, RULES)
    assert row.verdict == "same"


def test_card_diff_section_by_section():
    old = {
        "model_details": "A\nB",
        "intended_use": "same",
        "training_data": "old data",
        "governance": {"license": "mit"},
    }
    new = {
        "model_details": "A\nC",
        "intended_use": "same",
        "governance": {"license": "apache-2.0"},
        "other_sections": [{"title": "Citation", "text": "cite me"}],
    }
    diff = {s.key: s for s in card_diff(new, old)}
    assert diff["intended_use"].status == "unchanged" and diff["intended_use"].lines == []
    assert diff["model_details"].status == "changed"
    assert ("del", "-B") in diff["model_details"].lines and ("add", "+C") in diff["model_details"].lines
    assert diff["training_data"].status == "removed" and ("del", "-old data") in diff["training_data"].lines
    assert diff["other:Citation"].status == "added"
    assert ("add", "+license: apache-2.0") in diff["governance"].lines
    # candidate's order first, then what only the serving card has
    assert list(diff) == ["model_details", "intended_use", "governance", "other:Citation", "training_data"]


def test_card_diff_without_a_serving_card():
    diff = card_diff({"summary": "hi"}, None)
    assert [(s.key, s.status) for s in diff] == [("summary", "added")]
    assert card_diff(None, None) == []


def test_lineage_rows():
    a = SimpleNamespace(source={"commit": "abc", "repository": "r"}, run_id=None)
    b = SimpleNamespace(source={"commit": "def", "repository": "r"}, run_id=None)
    rows = {r.label: r for r in lineage_rows(a, b)}
    assert rows["Code commit"].differs and not rows["Code repository"].differs
    assert not any(r.differs for r in lineage_rows(a, None))
