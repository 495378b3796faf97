"""Governance's part of the lineage trail, plugged in through lineage's hooks (lineage never imports
governance; GovernanceConfig.ready() calls `register()`):

- trail section "promotions": the promotion requests of the version (on targets the reader may
  view) with the policy they were checked against and every approval or rejection, bound to the
  digest, card revision and policy version the reviewer saw; the policies those reviews were bound
  to; and, for a trail of the present (no as_of), the version checked now against each requested
  target's current policy;
- trail section "releases": per target, the releases of the version (number, state, times, actor,
  reason, the periods it served all traffic, its audit events) and the rollbacks that moved a
  target away from or back to one of them (time, actor, reason, from, to);
- trail subject "release:{target}:{number}": the trail of the released version, with the subject
  set to the release and a top-level "release" entry;
- lineage node type "release": `release:{target}:{number}` is a node id for /lineage/graph,
  /lineage/export and the lineage page. A release stands for itself and the version it released,
  so its upstream is the version's upstream.

Every fact read here is tied to an audit event: request and release events by subject, rollback
and policy events (recorded on the target) by sequence number, so the trail's audit range covers
them. With `as_of`, only facts recorded by then count, and states are derived from the audit
events up to then (a request's or release's row holds only its current state).

Visibility: the version is already visible to the reader (lineage checked it); promotions and
releases on targets the reader may not view are left out, as on every other page.
"""

import json
from collections import defaultdict

from django.db.models import Prefetch

from accounts import access
from audit.models import AuditEvent
from core.errors import InvalidInput, NotFound
from governance import selectors
from governance.choices import PromotionState, ReleaseState
from governance.models import Approval, DeploymentTarget, PromotionRequest, Release
from governance.policy import evaluate
from lineage import nodes as lineage_nodes
from lineage import trail as lineage_trail
from lineage.choices import NodeType

T_RELEASE = int(NodeType.RELEASE)
REQUEST_SUBJECT = PromotionRequest._meta.label_lower
RELEASE_SUBJECT = Release._meta.label_lower
TARGET_SUBJECT = DeploymentTarget._meta.label_lower
_RELEASE_EFFECT = {
    "release.created": ReleaseState.PENDING,
    "release.started": ReleaseState.DEPLOYING,
    "release.live": ReleaseState.LIVE,
    "release.failed": ReleaseState.FAILED,
    "release.superseded": ReleaseState.SUPERSEDED,
}
_ACTIVE = (ReleaseState.PENDING, ReleaseState.DEPLOYING)


def _time(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _user(user) -> str | None:
    return user.get_username() if user is not None else None


def _after(event: AuditEvent) -> dict:
    try:
        value = json.loads(event.after)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _event(e: AuditEvent) -> dict:
    return {"seq": e.seq, "at": _time(e.at), "action": e.action, "actor": e.actor_username or None, "reason": e.reason}


def _events(subject_type: str, ids, as_of, actions=None) -> list[AuditEvent]:
    ids = sorted({str(i) for i in ids})
    if not ids:
        return []
    qs = AuditEvent.objects.filter(subject_type=subject_type, subject_id__in=ids).defer("line")  # export text
    if actions is not None:
        qs = qs.filter(action__in=actions)
    if as_of is not None:
        qs = qs.filter(at__lte=as_of)
    return list(qs.order_by("seq"))


def _visible_targets(user):
    return access.visible(user, DeploymentTarget.objects.all())


def release_node_id(target_name: str, number: int) -> str:
    return f"release:{target_name}:{number}"


# --- promotions ------------------------------------------------------------------------------------


def _policy_events(target_ids, as_of) -> dict[tuple[int, str | None, int], AuditEvent]:
    """(target id, model or None, policy version) -> the audit event that created that policy version."""
    found = {}
    for e in _events(TARGET_SUBJECT, target_ids, as_of, ["target.created", "policy.changed"]):
        after = _after(e)
        if e.action == "target.created":
            version = (after.get("policy") or {}).get("version")
            key = (int(e.subject_id), None, version)
        else:
            key = (int(e.subject_id), after.get("model"), after.get("version"))
        found.setdefault(key, e)
    return found


def promotions_section(ctx: lineage_trail.TrailContext) -> lineage_trail.Section:
    version, as_of = ctx.version, ctx.as_of
    requests = (
        PromotionRequest.objects.filter(version=version, target__in=_visible_targets(ctx.user))
        .select_related("target", "requester")
        .prefetch_related(
            Prefetch(
                "approvals",
                queryset=Approval.objects.select_related("user", "policy__model").order_by("created_at", "id"),
            )
        )
        .order_by("created_at", "id")
    )
    if as_of is not None:
        requests = requests.filter(created_at__lte=as_of)
    requests = list(requests)
    by_request = defaultdict(list)
    for e in _events(REQUEST_SUBJECT, [r.pk for r in requests], as_of):
        by_request[e.subject_id].append(e)

    entries, policies = [], {}
    for request in requests:
        events = by_request.get(str(request.pk), [])
        opened = next((e for e in events if e.action == "promotion.requested"), None)
        decided = next(
            (
                e
                for e in reversed(events)
                if e.action.startswith("promotion.") and e.action.split(".", 1)[1] in PromotionState.values
            ),
            None,
        )
        approvals = [a for a in request.approvals.all() if as_of is None or a.created_at <= as_of]
        for a in approvals:
            policies[a.policy_id] = a.policy
        opened_after = _after(opened) if opened else {}
        if as_of is None:
            state, decided_at = request.state, request.decided_at
        else:  # a request's row holds only its current state: derive it from the events up to as_of
            state = decided.action.split(".", 1)[1] if decided else PromotionState.PENDING
            decided_at = decided.at if decided else None
        entries.append(
            {
                "id": request.pk,
                "target": request.target.name,
                "state": state,
                "requested_at": _time(request.created_at),
                "requested_by": _user(request.requester),
                "reason": request.reason,
                "expires_at": _time(request.expires_at),
                "decided_at": _time(decided_at),
                "decided_by": (decided.actor_username or None) if decided else None,
                "policy_at_request": {
                    "version": opened_after.get("policy_version"),
                    "failing_rules": opened_after.get("failing_rules", []),
                }
                if opened
                else None,
                "approvals": [
                    {
                        "user": _user(a.user),
                        "decision": a.decision,
                        "comment": a.comment,
                        "at": _time(a.created_at),
                        "digest": a.digest,
                        "digest_matches_version": a.digest == version.digest,
                        "card_revision": a.card_revision,
                        "policy_version": a.policy.version,
                    }
                    for a in approvals
                ],
                "events": [_event(e) for e in events],
            }
        )

    checks = None
    if as_of is None:  # the present only: a check now says nothing about a past moment
        checks = []
        targets = sorted({r.target for r in requests}, key=lambda t: t.name)
        current = [selectors.current_policy(target=target, model=version.model) for target in targets]
        # The facts these policies' rules look at, no more (a verified digest asks the storage file by file).
        wanted = [(version, selectors.rules_of(policy)) for policy in current]
        facts = selectors.facts_many(wanted, digest_check=selectors.stored_digest_check)[version.pk] if wanted else None
        for target, policy in zip(targets, current, strict=True):
            policies[policy.pk] = policy
            checks.append(
                {
                    "target": target.name,
                    "policy_version": policy.version,
                    "evaluated_at": _time(facts.now),
                    "results": [
                        {"rule": c.rule, "passed": c.passed, "reason": c.reason}
                        for c in evaluate(selectors.rules_of(policy), facts, target_kind=target.kind)
                    ],
                }
            )

    policy_events = _policy_events({p.target_id for p in policies.values()}, as_of)
    names = {r.target_id: r.target.name for r in requests}
    policy_rows, seqs = [], []
    for p in sorted(policies.values(), key=lambda p: (names.get(p.target_id, ""), p.model_id or 0, p.version)):
        model = str(p.model) if p.model_id else None
        created = policy_events.get((p.target_id, model, p.version))
        if created is not None:
            seqs.append(created.seq)
        policy_rows.append(
            {
                "target": names[p.target_id],
                "model": model,
                "version": p.version,
                "rules": p.rules,
                "created_at": _time(p.created_at),
                "audit_seq": created.seq if created else None,
            }
        )
    return lineage_trail.Section(
        data={"requests": entries, "policies": policy_rows, "checks": checks},
        audit_subjects=[(REQUEST_SUBJECT, str(r.pk)) for r in requests],
        audit_seqs=seqs,
    )


# --- releases and rollbacks -------------------------------------------------------------------------


def _rollbacks(targets: dict[int, DeploymentTarget], numbers: dict[int, set[int]], as_of) -> dict[int, list]:
    """Rollback events on the targets that moved away from or back to one of `numbers` (per target)."""
    found = defaultdict(list)
    for e in _events(TARGET_SUBJECT, targets, as_of, ["release.rolled_back"]):
        after = _after(e)
        target_id = int(e.subject_id)
        if after.get("from") in numbers[target_id] or after.get("to") in numbers[target_id]:
            found[target_id].append((e, after))
    return found


def _states_as_of(releases, events, rollbacks, newer, as_of) -> dict[int, tuple[str, object]]:
    """(state, ended_at) of each release as of a time, replayed from its audit events, the rollbacks
    on its target, the end of its serving periods and newer releases that replaced it."""
    result = {}
    for r in releases:
        facts = [(e.at, e.seq, _RELEASE_EFFECT[e.action]) for e in events.get(r.pk, []) if e.action in _RELEASE_EFFECT]
        for e, after in rollbacks.get(r.target_id, []):
            if after.get("from") == r.number:
                facts.append((e.at, e.seq, ReleaseState.ROLLED_BACK))
            if after.get("to") == r.number:
                facts.append((e.at, e.seq, "rolled-back-to"))
        for p in r.serving_periods.all():
            if p.ended_at is not None and p.ended_at <= as_of:
                facts.append((p.ended_at, 0, "period-ended"))
        for created_at in newer.get(r.target_id, []):
            if created_at > r.created_at:
                facts.append((created_at, 0, "replaced"))
        state, ended = ReleaseState.PENDING, None
        for at, _, effect in sorted(facts, key=lambda f: (f[0], f[1])):
            if effect == "period-ended":
                effect = ReleaseState.SUPERSEDED if state == ReleaseState.LIVE else None
            elif effect == "replaced":
                effect = ReleaseState.SUPERSEDED if state in _ACTIVE else None
            elif effect == "rolled-back-to":  # to a release still live (an abort): it stays so
                effect = None if state == ReleaseState.LIVE else ReleaseState.PENDING
            if effect is None or effect == state:  # the event of what a row fact already says: the first one counts
                continue
            state = effect
            ended = at if effect in (ReleaseState.SUPERSEDED, ReleaseState.ROLLED_BACK, ReleaseState.FAILED) else None
        result[r.pk] = (state, ended)
    return result


def _release_rows(releases: list[Release], as_of) -> tuple[dict[int, dict], dict, list[int]]:
    """Trail entries of releases, their rollbacks per target, and the rollback events' seqs."""
    targets = {r.target_id: r.target for r in releases}
    numbers = defaultdict(set)
    for r in releases:
        numbers[r.target_id].add(r.number)
    events = defaultdict(list)
    for e in _events(RELEASE_SUBJECT, [r.pk for r in releases], as_of):
        events[int(e.subject_id)].append(e)
    rollbacks = _rollbacks(targets, numbers, as_of)
    states = {}
    if as_of is not None and releases:
        newer = defaultdict(list)
        first = min(r.number for r in releases)
        for target_id, created_at in Release.objects.filter(
            target_id__in=targets, number__gt=first, created_at__lte=as_of
        ).values_list("target_id", "created_at"):
            newer[target_id].append(created_at)
        states = _states_as_of(releases, events, rollbacks, newer, as_of)
    rows = {}
    for r in releases:
        lives = [e.at for e in events.get(r.pk, []) if e.action == "release.live"]
        if as_of is None:
            state, live_at, ended_at = r.state, r.live_at, r.ended_at
        else:
            state, ended_at = states[r.pk]
            # the row's live_at is the start of its newest serving period (the same instant)
            starts = [p.started_at for p in r.serving_periods.all() if p.started_at <= as_of]
            live_at = max(starts) if starts else (lives[-1] if lives else None)
        served = []
        for p in sorted(r.serving_periods.all(), key=lambda p: (p.started_at, p.pk)):
            if as_of is not None and p.started_at > as_of:
                continue
            ended = p.ended_at if as_of is None or (p.ended_at and p.ended_at <= as_of) else None
            served.append({"started_at": _time(p.started_at), "ended_at": _time(ended)})
        rows[r.pk] = {
            "id": release_node_id(r.target.name, r.number),
            "number": r.number,
            "state": state,
            "traffic_percent": r.traffic_percent,
            "promotion": r.promotion_id,
            "reason": r.reason,
            "created_at": _time(r.created_at),
            "created_by": _user(r.created_by),
            "live_at": _time(live_at),
            "ended_at": _time(ended_at),
            "endpoint_url": r.endpoint_url,
            "served": served,
            "events": [_event(e) for e in events.get(r.pk, [])],
        }
    seqs = [e.seq for found in rollbacks.values() for e, _ in found]
    return rows, rollbacks, seqs


def _rollback_entry(e: AuditEvent, after: dict, target: DeploymentTarget) -> dict:
    return {
        "seq": e.seq,
        "at": _time(e.at),
        "actor": e.actor_username or None,
        "reason": e.reason,
        "from": release_node_id(target.name, after["from"]) if after.get("from") is not None else None,
        "to": release_node_id(target.name, after["to"]) if after.get("to") is not None else None,
    }


def _releases_of(version, user, as_of) -> list[Release]:
    qs = (
        Release.objects.filter(version=version, target__in=_visible_targets(user))
        .select_related("target", "created_by")
        .prefetch_related("serving_periods")
        .order_by("target__name", "number")
    )
    if as_of is not None:
        qs = qs.filter(created_at__lte=as_of)
    return list(qs)


def releases_section(ctx: lineage_trail.TrailContext) -> lineage_trail.Section:
    releases = _releases_of(ctx.version, ctx.user, ctx.as_of)
    rows, rollbacks, seqs = _release_rows(releases, ctx.as_of)
    by_target: dict[int, dict] = {}
    for r in releases:
        entry = by_target.setdefault(
            r.target_id,
            {
                "target": r.target.name,
                "stage": r.target.stage,
                "kind": r.target.kind,
                "releases": [],
                "rollbacks": [_rollback_entry(e, after, r.target) for e, after in rollbacks.get(r.target_id, [])],
            },
        )
        entry["releases"].append(rows[r.pk])
    return lineage_trail.Section(
        data=list(by_target.values()),
        audit_subjects=[(RELEASE_SUBJECT, str(r.pk)) for r in releases],
        audit_seqs=seqs,
    )


# --- release:{target}:{number}: trail subject and graph node ------------------------------------------


def _find_release(node_id: str, user, as_of) -> Release:
    prefix, _, rest = node_id.partition(":")
    name, sep, number = rest.rpartition(":")
    if prefix != "release" or not sep or not name or not number.isdecimal() or len(number) > 10:
        raise InvalidInput(f"'{node_id}' is not release:{{target}}:{{number}}.", detail={"nodeId": ["Bad release id."]})
    release = (
        Release.objects.select_related("target", "version__model", "created_by")
        .filter(target__name=name, number=int(number))
        .first()
    )
    hidden = release is None or not (
        access.has_perm(user, access.view_codename(release.target), release.target)
        and access.has_perm(user, access.view_codename(release.version.model), release.version.model)
    )
    if hidden or (as_of is not None and release.created_at > as_of):
        suffix = f" as of {as_of.isoformat()}" if as_of is not None and not hidden else ""
        raise NotFound(f"No lineage node '{node_id}'{suffix}.", code="node_not_found")
    return release


def release_trail(*, node_id: str, user, as_of=None) -> dict:
    """The trail of a target's release: the released version's trail, about this release."""
    release = _find_release(node_id, user, as_of)
    trail = lineage_trail.version_trail(user=user, version=release.version, as_of=as_of)
    rows, rollbacks, _ = _release_rows([release], as_of)
    model = release.version.model
    trail["subject"] = {"id": release_node_id(release.target.name, release.number), "type": "release"}
    trail["release"] = {
        **rows[release.pk],
        "target": release.target.name,
        "stage": release.target.stage,
        "version": lineage_nodes.model_id(model.namespace, model.name, release.version.number),
        "rollbacks": [_rollback_entry(e, after, release.target) for e, after in rollbacks.get(release.target_id, [])],
    }
    return trail


def _resolve_release(node_id: str, rest: str, user, as_of) -> lineage_nodes.Start:
    release = _find_release(node_id, user, as_of)
    # Upstream of a release is its model version, by the stored "deployed" edge (deployment.release_start).
    return lineage_nodes.Start(
        node_id, "release", release.pk, f"SELECT {T_RELEASE} AS t, %(start_pk)s AS id", {"start_pk": release.pk}
    )


def visible_releases_sql(user) -> tuple[str, list] | None:
    """The ids of releases whose target and model the user may both see, as SQL for the graph's traversal
    (None: all of them). Filtered only when described, hidden releases still counted in `truncated` and in
    the walk's row budget: a reader learnt that a model version was deployed on a target they may not see."""
    from registry.models import RegisteredModel

    if user.has_perm("governance.view_deploymenttarget") and user.has_perm("registry.view_registeredmodel"):
        return None
    shown = Release.objects.filter(
        target__in=_visible_targets(user).values("pk"),
        version__model__in=access.visible(user, RegisteredModel.objects.all()).values("pk"),
    ).values("pk")
    return shown.query.sql_with_params()


def describe_releases(ids, user, as_of) -> dict[int, dict]:
    """Release nodes the user may see (target and model both visible), as graph nodes."""
    releases = list(Release.objects.filter(pk__in=ids).select_related("target", "version__model"))
    if as_of is not None:
        releases = [r for r in releases if r.created_at <= as_of]
    targets = set(_visible_targets(user).filter(pk__in={r.target_id for r in releases}).values_list("pk", flat=True))
    from registry.models import RegisteredModel

    models = set(
        access.visible(user, RegisteredModel.objects.filter(pk__in={r.version.model_id for r in releases})).values_list(
            "pk", flat=True
        )
    )
    states = {}
    if as_of is not None:
        shown = [r for r in releases if r.target_id in targets and r.version.model_id in models]
        rows, _, _ = _release_rows(shown, as_of) if shown else ({}, None, None)
        states = {pk: row["state"] for pk, row in rows.items()}
    result = {}
    for r in releases:
        if r.target_id not in targets or r.version.model_id not in models:
            continue
        m = r.version.model
        result[r.pk] = {
            "id": release_node_id(r.target.name, r.number),
            "type": "release",
            "target": r.target.name,
            "number": r.number,
            "state": states.get(r.pk, r.state),
            "version": lineage_nodes.model_id(m.namespace, m.name, r.version.number),
        }
    return result


def register() -> None:
    lineage_trail.register_section("promotions", promotions_section)
    lineage_trail.register_section("releases", releases_section)
    lineage_trail.register_subject("release", release_trail)
    lineage_nodes.register_node_type(
        lineage_nodes.NodeTypeHandler(
            type=NodeType.RELEASE,
            prefix="release",
            resolve=_resolve_release,
            describe=describe_releases,
            visible_sql=visible_releases_sql,
        )
    )
