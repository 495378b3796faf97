"""Policies as data, and the one pure function that checks a version against them.

`evaluate(rules, facts, target_kind=...)` returns every enabled rule with pass/fail and a reason a reviewer can
act on. It does no I/O: `governance.selectors.facts_many()` gathers the facts. The API
(dry-run, create, get) and the review page show the same list; a failing rule blocks approval.
The approval quorum is not a rule here: it is what approvals are for (see services).
"""

from dataclasses import asdict, dataclass, field
from datetime import datetime

from core.errors import InvalidInput
from core.numbers import finite_number
from governance.choices import HostKind, MetricOp
from registry.cards import SECTIONS

MAX_SOAK_HOURS = 24 * 365 * 10

# The kinds that deploy the registry's stored bytes: a self-hosted release copies the version's files from the
# artifact store, hashing each against the manifest (deployment.materialize). Every other kind deploys what its
# platform holds under the release's host revision (deployment.host_revision_of), which the registry never sees.
REGISTRY_BYTES_KINDS = frozenset({HostKind.SELF_HOSTED.value})

_COMPARE = {
    MetricOp.GTE: lambda a, b: a >= b,
    MetricOp.GT: lambda a, b: a > b,
    MetricOp.LTE: lambda a, b: a <= b,
    MetricOp.LT: lambda a, b: a < b,
    MetricOp.EQ: lambda a, b: a == b,
}


@dataclass(frozen=True)
class MetricGate:
    metric: str
    op: str
    threshold: float
    dataset: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class StageSoak:
    stage: str
    hours: float


@dataclass(frozen=True)
class PolicyRules:
    approvals_required: int = 1
    approver_groups: tuple[str, ...] = ()
    requester_can_approve: bool = False
    required_card_sections: tuple[str, ...] = ()
    metric_gates: tuple[MetricGate, ...] = ()
    allowed_licenses: tuple[str, ...] = ()
    require_lineage: bool = False
    require_signature: bool = False
    require_verified_digest: bool = False
    min_live_on_stage: StageSoak | None = None
    request_expiry_hours: int = 168

    def as_dict(self) -> dict:
        return asdict(self)


def _fail(path: str, message: str):
    raise InvalidInput(f"policy.{path}: {message}", detail={f"policy.{path}": [message]})


def _bool(data: dict, key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        _fail(key, "must be true or false.")
    return value


def _str_list(data: dict, key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        _fail(key, "must be a list of non-empty strings.")
    return tuple(dict.fromkeys(value))


def _number(value, path: str) -> float:
    if not finite_number(value):
        _fail(path, "must be a finite number.")
    return value


def parse_rules(data) -> PolicyRules:
    """Validate a policy document (the API's `policy` object); raise InvalidInput naming the field."""
    if not isinstance(data, dict):
        _fail("", "must be an object.")
    known = {f for f in PolicyRules.__dataclass_fields__}
    unknown = sorted(set(data) - known)
    if unknown:
        _fail(unknown[0], f"unknown rule. Known rules: {', '.join(sorted(known))}.")
    approvals = data.get("approvals_required", 1)
    if isinstance(approvals, bool) or not isinstance(approvals, int) or not 0 <= approvals <= 20:
        _fail("approvals_required", "must be an integer from 0 to 20.")
    sections = _str_list(data, "required_card_sections")
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        _fail("required_card_sections", f"unknown section '{bad[0]}'. Sections: {', '.join(SECTIONS)}.")
    gates = []
    raw_gates = data.get("metric_gates", [])
    if not isinstance(raw_gates, list):
        _fail("metric_gates", "must be a list.")
    for i, gate in enumerate(raw_gates):
        where = f"metric_gates[{i}]"
        if not isinstance(gate, dict):
            _fail(where, "must be an object with metric, op and threshold.")
        extra = set(gate) - {"metric", "op", "threshold", "dataset", "split"}
        if extra:
            _fail(f"{where}.{sorted(extra)[0]}", "unknown field. Allowed: metric, op, threshold, dataset, split.")
        if not isinstance(gate.get("metric"), str) or not gate["metric"].strip():
            _fail(f"{where}.metric", "must name a metric.")
        if gate.get("op") not in MetricOp.values:
            _fail(f"{where}.op", f"must be one of {', '.join(MetricOp.values)}.")
        for key in ("dataset", "split"):
            if gate.get(key) is not None and not isinstance(gate[key], str):
                _fail(f"{where}.{key}", "must be a string.")
        gates.append(
            MetricGate(
                metric=gate["metric"],
                op=gate["op"],
                threshold=_number(gate.get("threshold"), f"{where}.threshold"),
                dataset=gate.get("dataset"),
                split=gate.get("split"),
            )
        )
    soak = data.get("min_live_on_stage")
    if soak is not None:
        if not isinstance(soak, dict) or set(soak) != {"stage", "hours"} or not isinstance(soak["stage"], str):
            _fail("min_live_on_stage", 'must be {"stage": name, "hours": number} or null.')
        if _number(soak["hours"], "min_live_on_stage.hours") < 0:
            _fail("min_live_on_stage.hours", "must not be negative.")
        soak = StageSoak(stage=soak["stage"], hours=soak["hours"])
    expiry = data.get("request_expiry_hours", 168)
    if isinstance(expiry, bool) or not isinstance(expiry, int) or not 1 <= expiry <= 24 * 365:
        _fail("request_expiry_hours", "must be an integer from 1 to 8760.")
    return PolicyRules(
        approvals_required=approvals,
        approver_groups=_str_list(data, "approver_groups"),
        requester_can_approve=_bool(data, "requester_can_approve", False),
        required_card_sections=sections,
        metric_gates=tuple(gates),
        allowed_licenses=_str_list(data, "allowed_licenses"),
        require_lineage=_bool(data, "require_lineage", False),
        require_signature=_bool(data, "require_signature", False),
        require_verified_digest=_bool(data, "require_verified_digest", False),
        min_live_on_stage=soak,
        request_expiry_hours=expiry,
    )


def parse_new_rules(data) -> PolicyRules:
    """parse_rules plus the bounds a policy must meet when it is set. Stored policies are read without them:
    a bound added later must not stop every promotion on a target whose policy was accepted before."""
    rules = parse_rules(data)
    if rules.min_live_on_stage is not None and rules.min_live_on_stage.hours > MAX_SOAK_HOURS:
        _fail("min_live_on_stage.hours", f"must be at most {MAX_SOAK_HOURS} (ten years).")
    return rules


@dataclass(frozen=True)
class Facts:
    """What is known about a version when it is checked. Gathered by selectors.facts_many()."""

    version_status: str
    digest: str
    metrics: dict
    metric_sources: dict
    card_revision: int | None = None
    card_sections_filled: frozenset[str] = frozenset()
    card_license: str | None = None  # governance.license, else the README's (metadata.license)
    card_readme_license: str | None = None  # the README's license when it names another than governance.license
    digest_verified: bool | None = None  # None: outside the registry's storage, cannot be checked
    digest_detail: str = ""
    lineage_datasets_with_digest: int = 0
    code_commit: str | None = None
    signature_verified: bool | None = None  # None: no signature attached
    signature_reason: str = ""
    live_since: dict[str, datetime] = field(default_factory=dict)  # stage -> continuously live since
    now: datetime | None = None


@dataclass(frozen=True)
class Check:
    rule: str
    passed: bool
    reason: str


def _gate(gate: MetricGate, facts: Facts) -> Check:
    name = f"metric:{gate.metric}"
    target = f"{gate.metric} {gate.op} {gate.threshold:g}"
    value = facts.metrics.get(gate.metric)
    if value is None:
        return Check(name, False, f"needs {target}, but the version reports no {gate.metric}.")
    source = facts.metric_sources.get(gate.metric, {})
    for key in ("dataset", "split"):
        wanted = getattr(gate, key)
        if wanted and source.get(key) != wanted:
            return Check(
                name,
                False,
                f"needs {gate.metric} measured on {key} '{wanted}', "
                f"but it was measured on {source.get(key) or 'an unstated ' + key}.",
            )
    passed = _COMPARE[gate.op](value, gate.threshold)
    return Check(name, passed, f"{gate.metric} = {value:g}; needs {target}.")


def _host_revision_deployed(kind: str) -> str | None:
    """Why the registry cannot vouch for what a target of this kind deploys (None: it deploys the stored bytes)."""
    if kind in REGISTRY_BYTES_KINDS:
        return None
    return (
        f"target kind {kind} deploys the host revision named by the version's host_revision tag (or pinned by its "
        "artifact_uri), not the registry's stored files, and the registry cannot check that revision against the "
        "version's digest; this rule can only pass on a self-hosted target, which copies the stored files."
    )


def evaluate(rules: PolicyRules, facts: Facts, *, target_kind: str) -> list[Check]:
    """`target_kind`: the kind of the target the version would deploy to (no default: every caller must say). The
    verified-digest and signature rules vouch for the registry's files, so they fail on a kind that deploys
    something else."""
    elsewhere = _host_revision_deployed(target_kind)
    checks = [
        Check(
            "version_status",
            facts.version_status == "registered",
            f"version is {facts.version_status}"
            + ("." if facts.version_status == "registered" else "; only registered versions can be promoted."),
        )
    ]
    if rules.require_verified_digest:
        ok = facts.digest_verified is True and not elsewhere
        checks.append(
            Check(
                "digest_verified",
                ok,
                elsewhere
                or facts.digest_detail
                or ("every file is stored with its declared sha256." if ok else "the artifacts could not be verified."),
            )
        )
    if rules.required_card_sections:
        if facts.card_revision is None:
            checks.append(
                Check(
                    "card_sections",
                    False,
                    "the version has no model card; add one with the required "
                    f"sections: {', '.join(rules.required_card_sections)}.",
                )
            )
        else:
            missing = [s for s in rules.required_card_sections if s not in facts.card_sections_filled]
            checks.append(
                Check(
                    "card_sections",
                    not missing,
                    f"card revision {facts.card_revision} is missing or leaves empty: {', '.join(missing)}."
                    if missing
                    else f"card revision {facts.card_revision} has every required section.",
                )
            )
    checks.extend(_gate(g, facts) for g in rules.metric_gates)
    if rules.allowed_licenses:
        lic = facts.card_license
        allowed = ", ".join(rules.allowed_licenses)
        if facts.card_readme_license:  # which one binds is not for the registry to guess
            checks.append(
                Check(
                    "license",
                    False,
                    f"the card states two licenses: {lic} (governance.license) and {facts.card_readme_license} "
                    "(metadata.license, the README's); make them agree, or drop metadata.license to have the README "
                    f"state governance.license. Allowed: {allowed}.",
                )
            )
        else:
            ok = lic in rules.allowed_licenses
            checks.append(
                Check(
                    "license",
                    ok,
                    f"license {lic} is allowed."
                    if ok
                    else f"license is {lic or 'not stated in the card'}; allowed: {allowed}.",
                )
            )
    if rules.require_lineage:
        problems = []
        if facts.lineage_datasets_with_digest < 1:
            problems.append("no input dataset version with a digest")
        if not facts.code_commit:
            problems.append("no code commit")
        checks.append(
            Check(
                "lineage",
                not problems,
                "lineage names "
                f"{facts.lineage_datasets_with_digest} dataset version(s) with digests and commit "
                f"{facts.code_commit}."
                if not problems
                else "lineage has " + " and ".join(problems) + ".",
            )
        )
    if rules.require_signature:
        ok = facts.signature_verified is True and not elsewhere
        reason = (
            ("signature verified" + (f": {facts.signature_reason}" if facts.signature_reason else "."))
            if ok
            else elsewhere
            or (
                "no signature is attached."
                if facts.signature_verified is None
                else f"signature does not verify: {facts.signature_reason}"
            )
        )
        checks.append(Check("signature", ok, reason))
    if rules.min_live_on_stage is not None:
        soak = rules.min_live_on_stage
        since = facts.live_since.get(soak.stage)
        if since is None:
            checks.append(
                Check(
                    "live_on_stage",
                    False,
                    f"must serve on {soak.stage} for {soak.hours:g} h first; it has not been live there.",
                )
            )
        else:
            # Compared in hours: a policy stored before hours were bounded may hold more than a timedelta can.
            hours = (facts.now - since).total_seconds() / 3600
            checks.append(
                Check(
                    "live_on_stage",
                    hours >= soak.hours,
                    f"live on {soak.stage} for {hours:.1f} h of the {soak.hours:g} h required.",
                )
            )
    return checks


def failing(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]
