"""The lineage trail of a model version: what data and code produced it, and what became of it.

    datasets (with digests) -> runs (with code commits) -> version (digest, signature results)
    -> card revisions -> [sections other apps add: policy results, approvals, releases, rollbacks]

`version_trail()` builds it as plain JSON-ready data. Every part names the audit events that
recorded it; the trail states the audit sequence range it covers (with each event's hash), and
`seal()` adds the sha256 of the trail's canonical JSON, so an auditor can check a downloaded
trail against an exported, verified audit chain (audit/chain.py).

Other apps extend it without lineage importing them (the dependency runs audit <- registry <-
lineage <- governance): governance calls `register_section("promotions", builder)` from its
AppConfig.ready(); a builder gets a TrailContext and returns a Section.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Min, Q
from django.utils import timezone

from audit.chain import canonical_json
from audit.models import AuditChainHead, AuditEvent
from lineage import graph as graphs
from lineage import nodes as node_ids
from lineage import selectors
from lineage.choices import EdgeKind, NodeType
from lineage.models import DatasetVersion, LineageEvent, Run, VersionRunLink

TRAIL_FORMAT = "model-governance-registry/lineage-trail/1"
TRAIL_DEPTH = 50


@dataclass
class TrailContext:
    user: object
    version: object  # registry.models.ModelVersion
    as_of: datetime | None
    node_id: str


@dataclass
class Section:
    """What a builder adds: `data` goes under trail["sections"][name]; `audit_subjects` are
    (subject_type, subject_id) pairs whose audit events the trail must cover; `audit_seqs` single
    events to cover as well (an event about a broader subject, e.g. a rollback recorded on its target)."""

    data: object
    audit_subjects: list[tuple[str, str]] = field(default_factory=list)
    audit_seqs: list[int] = field(default_factory=list)


_SECTIONS: dict[str, Callable[[TrailContext], Section | None]] = {}


def register_section(name: str, builder: Callable[[TrailContext], Section | None]) -> None:
    _SECTIONS[name] = builder


# Trails of other node types (governance: "release" -> the trail of the released version plus the
# release's own history). builder(node_id=..., user=..., as_of=...) -> trail dict.
_SUBJECTS: dict[str, Callable[..., dict]] = {}


def register_subject(prefix: str, builder: Callable[..., dict]) -> None:
    _SUBJECTS[prefix] = builder


def for_node(*, node_id: str, user, as_of: datetime | None = None) -> dict:
    """The trail of a node: a model version here, other node types when an app registered them."""
    from core.errors import InvalidInput

    prefix, _, rest = node_id.partition(":")
    if prefix == "model":
        version = node_ids.resolve_model_version(rest, user, as_of=as_of, node_id=node_id)
        return version_trail(user=user, version=version, as_of=as_of)
    if prefix in _SUBJECTS:
        return _SUBJECTS[prefix](node_id=node_id, user=user, as_of=as_of)
    known = ["model:{namespace}/{name}:{number}", *(f"{p}:…" for p in sorted(_SUBJECTS))]
    raise InvalidInput(
        f"nodeId '{node_id}': trails are built for {', '.join(known)}.",
        code="unsupported_node",
        detail={"nodeId": ["No trail for this node type."]},
    )


def _time(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _user(user) -> str | None:
    return user.get_username() if user is not None else None


def _signatures(version, as_of) -> tuple[list[dict] | None, list[tuple[str, str]]]:
    """Signature verdicts if the registry records them (registry.VersionSignature), newest last."""
    from django.apps import apps

    try:
        model = apps.get_model("registry", "VersionSignature")
    except LookupError:
        return None, []
    qs = model.objects.filter(version=version).select_related("created_by").order_by("created_at", "pk")
    if as_of is not None:
        qs = qs.filter(created_at__lte=as_of)
    rows = [
        {
            "verified": s.verified,
            "reason": s.reason,
            "key_id": s.key_id or None,
            "files_checked": s.files_checked,
            "problems": s.problems,
            "bundle_sha256": s.bundle_sha256,
            "verified_at": _time(s.verified_at),
            "created_at": _time(s.created_at),
            "created_by": _user(s.created_by),
        }
        for s in qs
    ]
    return rows, [(model._meta.label_lower, str(s.pk)) for s in qs]


def _links(version, as_of) -> list[dict]:
    """How the version got linked to runs: at registration (run_id) and by later link facts."""
    facts = []
    if version.run_id is not None:
        facts.append(
            {
                "run_id": str(version.run_id),
                "linked": True,
                "source": "registration",
                "recorded_at": _time(version.created_at),
                "recorded_by": _user(version.created_by),
                "reason": "",
            }
        )
    qs = VersionRunLink.objects.filter(version=version).select_related("recorded_by").order_by("id")
    if as_of is not None:
        qs = qs.filter(recorded_at__lte=as_of)
    for link in qs:
        facts.append(
            {
                "run_id": str(link.run_uuid),
                "linked": link.linked,
                "source": link.source,
                "recorded_at": _time(link.recorded_at),
                "recorded_by": _user(link.recorded_by),
                "reason": link.reason,
            }
        )
    return facts


def _run_entry(details: dict, inputs: list[str], outputs: list[str]) -> dict:
    return {
        "id": node_ids.run_id(details["runId"]),
        "run_id": details["runId"],
        "job": details["job"],
        "kind": details["kind"],
        "state": details["state"],
        "started_at": _time(details["startedAt"]),
        "ended_at": _time(details["endedAt"]),
        "code": details["code"],
        "params": details["params"],
        "environment": details["environment"],
        "inputs": inputs,
        "outputs": outputs,
        "events": [
            {
                "event_type": e["eventType"],
                "event_time": _time(e["eventTime"]),
                "producer": e["producer"],
                "recorded_at": _time(e["recordedAt"]),
                "recorded_by": e["recordedBy"],
            }
            for e in details["events"]
        ],
    }


def version_trail(*, user, version, as_of: datetime | None = None) -> dict:
    """The trail of a model version the user may view (check access before calling)."""
    model = version.model
    node_id = node_ids.model_id(model.namespace, model.name, version.number)
    start = node_ids.Start(
        node_id,
        "model",
        version.pk,
        f"SELECT {int(NodeType.MODEL)} AS t, %(start_pk)s AS id",
        {"start_pk": version.pk},
    )
    walk = graphs.walk(user=user, start=start, direction="upstream", depth=TRAIL_DEPTH, as_of=as_of)
    keys = {key: selectors.version_node_id(key, row) for key, row in walk.nodes.items()}
    run_pks = [pk for t, pk in walk.nodes if t == graphs.T_RUN]
    dsv_pks = [pk for t, pk in walk.nodes if t == graphs.T_DSV]
    runs = list(Run.objects.select_related("job").filter(pk__in=run_pks))
    details = selectors.run_details(runs, as_of)
    versions = list(DatasetVersion.objects.select_related("dataset").filter(pk__in=dsv_pks))
    facet_events: set[int] = set()  # any run's event may state a dataset's schema or URI: its audit event is listed
    dsv_details = selectors.dataset_version_details(versions, as_of, events=facet_events)

    inputs, outputs, produced_by = {}, {}, {}
    for s_t, s_id, d_t, d_id, kind in sorted(walk.edges):
        src, dst = keys.get((s_t, s_id)), keys.get((d_t, d_id))
        if src is None or dst is None:
            continue
        if d_t == graphs.T_RUN and kind == EdgeKind.INPUT:
            inputs.setdefault(d_id, []).append(src)
        elif s_t == graphs.T_RUN and kind == EdgeKind.OUTPUT:
            outputs.setdefault(s_id, []).append(dst)
            produced_by.setdefault(dst, []).append(src)

    producing = sorted(produced_by.get(node_id, []))

    # Runs in the order they happened (first event time), the run(s) that produced the version last.
    def first_event(run):
        events = details[run.pk]["events"]
        return events[0]["eventTime"].isoformat() if events else ""

    run_entries = [
        _run_entry(details[r.pk], sorted(inputs.get(r.pk, [])), sorted(outputs.get(r.pk, [])))
        for r in sorted(runs, key=lambda r: (node_ids.run_id(r.run_uuid) in producing, first_event(r), str(r.run_uuid)))
    ]
    datasets = []
    for v in sorted(versions, key=lambda v: keys[(graphs.T_DSV, v.pk)]):
        d = dsv_details[v.pk]
        datasets.append(
            {
                "id": d["id"],
                "namespace": d["namespace"],
                "name": d["name"],
                "version": d["version"],
                "digest": d["digest"],
                "uri": d["uri"],
                "schema": d["schema"],
                "row_count": d["rowCount"],
                "created_at": _time(d["createdAt"]),
                "recorded_at": _time(d["recordedAt"]),
                "produced_by": sorted(produced_by.get(d["id"], [])),
                "depth": walk.nodes[(graphs.T_DSV, v.pk)]["depth"],
            }
        )
    base_models = sorted(keys[key] for key in walk.nodes if key[0] == graphs.T_MODEL and key[1] != version.pk)

    signatures, signature_subjects = _signatures(version, as_of)
    cards = version.card_revisions.select_related("created_by").order_by("revision")
    if as_of is not None:
        cards = cards.filter(created_at__lte=as_of)
    cards = list(cards)
    trail = {
        "format": TRAIL_FORMAT,
        "subject": {"id": node_id, "type": "model"},
        "generated_at": _time(timezone.now()),
        "as_of": _time(as_of),
        "truncated": walk.truncated,
        "model": {"namespace": model.namespace, "name": model.name},
        "version": {
            "id": node_id,
            "number": version.number,
            "digest": version.digest,
            "artifact_uri": version.artifact_uri,
            "status": walk.nodes[(graphs.T_MODEL, version.pk)]["state"],  # as of: replayed by the walk
            "source": version.source,
            "run_id": str(version.run_id) if version.run_id else None,
            "created_at": _time(version.created_at),
            "created_by": _user(version.created_by),
            "signatures": signatures,
        },
        "produced_by": producing,
        "run_links": _links(version, as_of),
        "runs": run_entries,
        "datasets": datasets,
        "base_models": base_models,
        "card_revisions": [
            {
                "revision": c.revision,
                "schema_version": c.schema_version,
                "content_sha256": hashlib.sha256(canonical_json(c.content)).hexdigest(),
                "created_at": _time(c.created_at),
                "created_by": _user(c.created_by),
            }
            for c in cards
        ],
        "sections": {},
    }

    subjects = [
        ("registry.modelversion", str(version.pk)),
        *[("registry.modelversion", str(pk)) for t, pk in walk.nodes if t == graphs.T_MODEL],
        *[("registry.modelcardrevision", str(c.pk)) for c in cards],
        *signature_subjects,
    ]
    links = VersionRunLink.objects.filter(version=version)
    event_q = Q(run__in=runs) | Q(dataset__in={v.dataset_id for v in versions})
    if as_of is not None:
        links = links.filter(recorded_at__lte=as_of)
    link_rows = list(links.values_list("pk", "event_id"))
    subjects += [("lineage.versionrunlink", str(pk)) for pk, _ in link_rows]
    events = LineageEvent.objects.filter(event_q)
    if as_of is not None:
        events = events.filter(recorded_at__lte=as_of)
    # A link an OpenLineage event made has no audit event of its own: the event's does (even once the run has been
    # unlinked and the walk no longer reaches it); so have facets the datasets show from runs the walk did not reach.
    recorded_by = {*events.values_list("pk", flat=True), *(e for _, e in link_rows if e is not None), *facet_events}
    subjects += [("lineage.lineageevent", str(pk)) for pk in sorted(recorded_by)]

    context = TrailContext(user=user, version=version, as_of=as_of, node_id=node_id)
    seqs: list[int] = []
    for name, builder in sorted(_SECTIONS.items()):
        section = builder(context)
        if section is not None:
            trail["sections"][name] = section.data
            subjects += section.audit_subjects
            seqs += section.audit_seqs
    trail["audit"] = _audit_range(subjects, as_of, seqs)
    return trail


def _audit_range(subjects: list[tuple[str, str]], as_of, seqs: list[int] = ()) -> dict:
    """The audit events that recorded the trail's facts, with their hashes, and the chain head."""
    by_type: dict[str, set[str]] = {}
    for subject_type, subject_id in subjects:
        by_type.setdefault(subject_type, set()).add(subject_id)
    query = Q()
    for subject_type, ids in by_type.items():
        query |= Q(subject_type=subject_type, subject_id__in=sorted(ids))
    if seqs:
        query |= Q(seq__in=sorted(set(seqs)))
    events = AuditEvent.objects.filter(query).defer("line") if by_type or seqs else AuditEvent.objects.none()
    if as_of is not None:
        # A fact in the trail is stamped before the event that records it (which waits for the chain head and
        # takes the database's clock): read as of a time between the two, the fact was listed and its record
        # was not. Each fact's first event comes with it, then; later ones only up to as_of.
        firsts = events.values("subject_type", "subject_id").annotate(first=Min("seq")).values("first")
        events = events.filter(Q(at__lte=as_of) | Q(seq__in=firsts))
    rows = [
        {
            "seq": e.seq,
            "hash": e.hash,
            "at": _time(e.at),
            "action": e.action,
            "actor": e.actor_username or None,
            "subject_type": e.subject_type,
            "subject_id": e.subject_id,
        }
        for e in events.order_by("seq")
    ]
    head = AuditChainHead.objects.filter(pk=1).values("seq", "hash").first() or {"seq": 0, "hash": "0" * 64}
    return {
        "first_seq": rows[0]["seq"] if rows else None,
        "last_seq": rows[-1]["seq"] if rows else None,
        "chain_head": {"seq": head["seq"], "hash": head["hash"]},
        "events": rows,
    }


def seal(trail: dict) -> dict:
    """{"trail": ..., "sha256": hex of the trail's canonical JSON} (sorted keys, compact, UTF-8)."""
    return {"trail": trail, "sha256": hashlib.sha256(canonical_json(trail)).hexdigest()}
