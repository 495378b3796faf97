"""Pure comparisons for the request page: a candidate version against the one serving the target.

No database access: the views hand in versions, card contents and policy rules.
"""

import difflib
import itertools
from dataclasses import dataclass, field

from core.numbers import finite_number
from governance.policy import PolicyRules
from registry.ui_selectors import card_sections
from registry.ui_selectors import metric_text as fmt

HIGHER_IS_BETTER = {">=", ">"}
LOWER_IS_BETTER = {"<=", "<"}


def _number(value) -> float | None:
    if not finite_number(value):
        return None
    return value


@dataclass(frozen=True)
class MetricRow:
    name: str
    candidate: object
    serving: object
    delta: float | None
    gate: str  # "auc >= 0.85" when a gate names the metric
    verdict: str  # better | worse | same | "" (no serving value, or no gate direction)

    @property
    def candidate_text(self) -> str:
        return fmt(self.candidate)

    @property
    def serving_text(self) -> str:
        return fmt(self.serving)

    @property
    def delta_text(self) -> str:
        return "" if self.delta is None else f"{self.delta:+.6g}"


def metric_deltas(candidate: dict, serving: dict | None, rules: PolicyRules) -> list[MetricRow]:
    """Every metric of either version. Better/worse follows the direction of the policy's gate, if any."""
    gates = {}
    for gate in rules.metric_gates:
        gates.setdefault(gate.metric, gate)
    serving = serving or {}
    rows = []
    for name in sorted(set(candidate) | set(serving), key=lambda n: (n not in gates, n)):
        new, old = candidate.get(name), serving.get(name)
        a, b = _number(new), _number(old)
        delta = a - b if a is not None and b is not None else None
        gate = gates.get(name)
        verdict = ""
        if delta is not None and gate is not None:
            if delta == 0:
                verdict = "same"
            elif gate.op in HIGHER_IS_BETTER:
                verdict = "better" if delta > 0 else "worse"
            elif gate.op in LOWER_IS_BETTER:
                verdict = "better" if delta < 0 else "worse"
        rows.append(
            MetricRow(
                name=name,
                candidate=new,
                serving=old,
                delta=delta,
                gate=f"{gate.metric} {gate.op} {gate.threshold:g}" if gate else "",
                verdict=verdict,
            )
        )
    return rows


@dataclass
class SectionDiff:
    key: str
    heading: str
    status: str  # added | removed | changed | unchanged
    lines: list[tuple[str, str]] = field(default_factory=list)  # (kind: hunk|add|del|ctx, text)


def _numbered_sections(content: dict | None) -> dict[tuple[str, int], tuple[str, str, str]]:
    """A card's sections keyed by (key, occurrence), in reading order, as (key, heading, text).

    The card schema lets `other_sections` repeat a title (a README with two "## Notes"), which
    `card_sections` keys alike; the second and later ones become "Notes (2)", "Notes (3)", ... so
    each is compared with the same occurrence in the other card and none hides another.
    """
    seen: dict[str, int] = {}
    out = {}
    for key, heading, text in card_sections(content):
        n = seen[key] = seen.get(key, 0) + 1
        out[(key, n)] = (key, heading, text) if n == 1 else (f"{key} ({n})", f"{heading} ({n})", text)
    return out


def card_diff(candidate: dict | None, serving: dict | None) -> list[SectionDiff]:
    """Section by section unified diff of the serving card (from) against the candidate's (to)."""
    new = _numbered_sections(candidate)
    old = _numbered_sections(serving)
    order = list(new) + [k for k in old if k not in new]
    result = []
    for ident in order:
        key, heading, _ = new.get(ident) or old[ident]
        a = old[ident][2].splitlines() if ident in old else []
        b = new[ident][2].splitlines() if ident in new else []
        if ident in new and ident in old and a == b:
            result.append(SectionDiff(key, heading, "unchanged"))
            continue
        status = "changed" if ident in new and ident in old else ("added" if ident in new else "removed")
        lines = []
        # unified_diff opens with exactly two header lines ("--- ", "+++ "); skip those, not every
        # line starting with "--"/"++" (a removed "-- do not use" reads "--- do not use").
        for line in itertools.islice(difflib.unified_diff(a, b, lineterm="", n=3), 2, None):
            kind = {"@": "hunk", "+": "add", "-": "del"}.get(line[:1], "ctx")
            lines.append((kind, line))
        result.append(SectionDiff(key, heading, status, lines))
    return result


@dataclass(frozen=True)
class LineageRow:
    label: str
    candidate: str
    serving: str
    differs: bool


LINEAGE_FIELDS = [
    ("Code repository", lambda v: (v.source or {}).get("repository")),
    ("Code commit", lambda v: (v.source or {}).get("commit")),
    ("Branch", lambda v: (v.source or {}).get("branch")),
    ("Training run (OpenLineage run id)", lambda v: str(v.run_id) if v.run_id else None),
]


def lineage_rows(candidate, serving) -> list[LineageRow]:
    """Code and run behind each version. Datasets come from the lineage app once it records them."""
    rows = []
    for label, get in LINEAGE_FIELDS:
        a = get(candidate) or ""
        b = (get(serving) or "") if serving is not None else ""
        rows.append(LineageRow(label, a, b, serving is not None and a != b))
    return rows
