"""Every write to lineage. Each runs in one transaction with exactly one audit event.

Facts are append-only: identity rows are written once, edges once per (source, target, kind),
facets only when they changed, and everything carries the same `recorded_at` (the moment of the
write), which is what `as_of` reads.
"""

import uuid
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from accounts import access
from audit.services import record as audit_record
from audit.services import redact
from core.errors import Conflict, Forbidden, InvalidInput
from lineage import nodes
from lineage.choices import EdgeKind, EventKind, FacetRole, LinkSource, NodeType
from lineage.models import Dataset, DatasetVersion, Edge, Facet, Job, LineageEvent, Run, VersionRunLink
from lineage.openlineage import ENVIRONMENT_FACET, DatasetRef, ModelRef, ParsedEvent, dataset_digest
from registry.models import ModelPerm, ModelVersion, RegisteredModel


@dataclass
class IngestResult:
    event: LineageEvent
    job: str | None
    run: str | None
    inputs: list[str]
    outputs: list[str]
    created: dict


class _Writer:
    """Collects one event's facts and writes them under one recorded_at."""

    def __init__(self, *, actor, event: ParsedEvent, now):
        self.actor = actor
        self.parsed = event
        self.now = now
        self.counts = {"datasets": 0, "dataset_versions": 0, "jobs": 0, "runs": 0, "edges": 0, "facets": 0, "links": 0}
        self.edges: list[Edge] = []
        self.row: LineageEvent | None = None

    # --- identities ------------------------------------------------------------------------
    def dataset(self, ref: DatasetRef) -> Dataset:
        obj, created = Dataset.objects.get_or_create(
            namespace=ref.namespace, name=ref.name, defaults={"recorded_at": self.now}
        )
        self.counts["datasets"] += created
        return obj

    def version(self, dataset: Dataset, key: str) -> DatasetVersion:
        obj, created = DatasetVersion.objects.get_or_create(
            dataset=dataset,
            version=key,
            defaults={"digest": dataset_digest(key), "created_at": self.parsed.event_time, "recorded_at": self.now},
        )
        self.counts["dataset_versions"] += created
        return obj

    def current_version(self, dataset: Dataset, run: Run) -> DatasetVersion:
        """The version an input sent without a version facet names: the one of the dataset this run already
        reads (an earlier or re-sent event of the run said it), else the dataset's latest recorded version that
        this run did not produce, else its initial version "". So re-sending an event (HTTP clients retry POSTs)
        changes nothing, and a job that reads and writes one table reads the version before its own output,
        not its output."""
        versions = DatasetVersion.objects.filter(dataset=dataset)
        read = (
            Edge.objects.filter(
                dst_type=NodeType.RUN,
                dst_id=run.pk,
                kind=EdgeKind.INPUT,
                src_type=NodeType.DATASET_VERSION,
                src_id__in=versions.values("pk"),
            )
            .order_by("-recorded_at", "-id")
            .values_list("src_id", flat=True)
            .first()
        )
        if read is not None:
            return versions.get(pk=read)
        produced = Edge.objects.filter(
            src_type=NodeType.RUN, src_id=run.pk, kind=EdgeKind.OUTPUT, dst_type=NodeType.DATASET_VERSION
        ).values("dst_id")
        latest = (
            versions.exclude(pk__in=produced)
            .exclude(version=f"run:{run.run_uuid}")
            .order_by("-recorded_at", "-id")
            .first()
        )
        return latest or self.version(dataset, "")

    def job(self, namespace: str, name: str) -> Job:
        obj, created = Job.objects.get_or_create(namespace=namespace, name=name, defaults={"recorded_at": self.now})
        self.counts["jobs"] += created
        return obj

    def run(self, run_uuid: uuid.UUID, job: Job) -> Run:
        obj, created = Run.objects.select_related("job").get_or_create(
            run_uuid=run_uuid, defaults={"job": job, "recorded_at": self.now}
        )
        if not created and obj.job_id != job.pk:
            raise InvalidInput(
                f"Invalid OpenLineage event: job: run {run_uuid} belongs to job {obj.job.namespace}:{obj.job.name}, "
                f"not {job.namespace}:{job.name}. A run UUID identifies one run of one job.",
                code="invalid_event",
                detail={"job": ["The run belongs to another job."]},
            )
        self.counts["runs"] += created
        _check_may_speak_for(self.actor, run_uuid)
        return obj

    def model_version(self, ref: ModelRef, path: str, codename: str | None) -> ModelVersion:
        qs = ModelVersion.objects.select_related("model").filter(model__namespace=ref.namespace, model__name=ref.name)
        version = (
            qs.filter(number=ref.number).first() if ref.number is not None else qs.filter(digest=ref.digest).first()
        )
        if version is None or not access.has_perm(self.actor, access.view_codename(version.model), version.model):
            raise InvalidInput(
                f"Invalid OpenLineage event: {path}.name: no model version {ref} that you may view. "
                "Register the version first (or send the run_id when registering it).",
                code="invalid_event",
                detail={f"{path}.name": ["Unknown model version."]},
            )
        if codename and not access.has_perm(self.actor, codename, version.model):
            raise Forbidden(
                f"{path}: linking a run as the producer of {ref} needs the '{codename}' permission on {version.model}."
            )
        return version

    # --- facts -----------------------------------------------------------------------------
    def edge(self, src: tuple[int, int], dst: tuple[int, int], kind: EdgeKind) -> None:
        self.edges.append(
            Edge(
                src_type=src[0],
                src_id=src[1],
                dst_type=dst[0],
                dst_id=dst[1],
                kind=kind,
                event=self.row,
                recorded_at=self.now,
            )
        )

    def facets(self, subject: tuple[int, int], role: FacetRole, facets: dict, run: Run | None = None) -> None:
        if not facets:
            return
        latest = {}
        for name, value in (
            Facet.objects.filter(subject_type=subject[0], subject_id=subject[1], role=role, name__in=list(facets))
            .filter(run=run)
            .order_by("name", "recorded_at", "id")
            .values_list("name", "value")
        ):
            latest[name] = value
        rows = []
        for name, value in facets.items():
            if name == ENVIRONMENT_FACET:  # its shape was checked by lineage.openlineage for any subject
                value = _redacted_environment(value)
            if latest.get(name) != value:
                rows.append(
                    Facet(
                        subject_type=subject[0],
                        subject_id=subject[1],
                        role=role,
                        name=name,
                        value=value,
                        run=run,
                        event=self.row,
                        recorded_at=self.now,
                    )
                )
        Facet.objects.bulk_create(rows)
        self.counts["facets"] += len(rows)

    def link(self, version: ModelVersion, run_uuid: uuid.UUID) -> None:
        if _linked_now(version, run_uuid):
            return
        VersionRunLink.objects.create(
            version=version,
            run_uuid=run_uuid,
            linked=True,
            source=LinkSource.OPENLINEAGE,
            event=self.row,
            recorded_by=_user(self.actor),
            recorded_at=self.now,
        )
        self.counts["links"] += 1

    def flush_edges(self) -> None:
        # An edge already recorded (same source, target, kind) keeps its first recorded_at.
        Edge.objects.bulk_create(self.edges, ignore_conflicts=True)
        self.counts["edges"] += len(self.edges)


def _user(actor):
    return actor if actor is not None and getattr(actor, "is_authenticated", False) else None


def _redacted_environment(facet: dict) -> dict:
    """Environment variables whose names look like secrets are stored as [redacted]."""
    items = facet.get(ENVIRONMENT_FACET)
    if items is None:  # a `_deleted` marker, stored as sent
        return facet
    # Item by item: a name sent twice keeps each of its values.
    return {
        **facet,
        ENVIRONMENT_FACET: [
            {**item, "value": redact({item["name"]: item.get("value")})[item["name"]]} for item in items
        ],
    }


def _check_may_speak_for(actor, run_uuid: uuid.UUID, doing: str = "adding to its lineage", hint: str = "") -> None:
    """A run that produced model versions speaks for their models: its inputs and commit feed the policy's
    require_lineage gate and the trail. Adding to it needs register_version on each of those models, as
    naming a model version as an output does; a run known to produce nothing takes any writer's events.
    Naming the run as the producer of another version (a link, a registration's run_id) adds to it too: a
    model linked to someone else's run would otherwise lock its owner out of it."""
    produced = _versions_linked_to(run_uuid)
    if not produced:
        return
    for model in RegisteredModel.objects.filter(versions__pk__in=produced).distinct():
        if not access.has_perm(actor, ModelPerm.REGISTER, model):
            visible = access.has_perm(actor, access.view_codename(model), model)
            produced_what = f"a version of model {model}" if visible else "a model version"
            raise Forbidden(
                f"Run {run_uuid} produced {produced_what}; {doing} needs the 'register_version' "
                f"permission on that model.{hint}"
            )


def check_may_claim_run(*, actor, run_uuid: uuid.UUID, claimed_for: str) -> None:
    """Before naming run_uuid as the run that produced a version of `claimed_for` (a model or model version):
    a run that already produced versions of other models may be named only by someone who may speak for it
    (_check_may_speak_for); a run with no linked model version, by whoever may register the version.
    version_link checks it; registry.services.version_register calls it for a registration with a run_id."""
    _check_may_speak_for(
        actor,
        run_uuid,
        doing=f"naming it as the run that produced {claimed_for}",
        hint=" A run speaks for the models it produced: name a run of your own (its own runId), or ask that "
        "model's owners for the permission.",
    )


def _versions_linked_to(run_uuid: uuid.UUID) -> set[int]:
    """Ids of the model versions linked to the run now: for each, the latest link fact, else registration
    with the run's id. Two indexed look-ups (link facts by run, versions by run_id), whatever the registry's
    size; the one statement of the rule."""
    latest = dict(VersionRunLink.objects.filter(run_uuid=run_uuid).order_by("id").values_list("version_id", "linked"))
    registered = ModelVersion.objects.filter(run_id=run_uuid).values_list("pk", flat=True)
    return {v for v in registered if latest.get(v, True)} | {v for v, linked in latest.items() if linked}


def _linked_now(version: ModelVersion, run_uuid: uuid.UUID) -> bool:
    return version.pk in _versions_linked_to(run_uuid)


def _dataset_side(w: _Writer, ref: DatasetRef, *, output: bool, run: Run) -> str:
    """A run's input or output: returns its node id after recording version, edge and facets."""
    if ref.model is not None:
        version = w.model_version(ref.model, ref.path, ModelPerm.REGISTER if output else None)
        if output:
            w.link(version, run.run_uuid)
        else:
            w.edge((NodeType.MODEL, version.pk), (NodeType.RUN, run.pk), EdgeKind.INPUT)
        return nodes.model_id(version.model.namespace, version.model.name, version.number)
    dataset = w.dataset(ref)
    if ref.version is not None:
        dsv = w.version(dataset, ref.version)
    elif output:
        dsv = w.version(dataset, f"run:{run.run_uuid}")
    else:
        dsv = w.current_version(dataset, run)
    node = (NodeType.DATASET_VERSION, dsv.pk)
    if output:
        w.edge((NodeType.RUN, run.pk), node, EdgeKind.OUTPUT)
    else:
        w.edge(node, (NodeType.RUN, run.pk), EdgeKind.INPUT)
    w.facets(node, FacetRole.FACETS, ref.facets, run)
    w.facets(node, FacetRole.OUTPUT_FACETS if output else FacetRole.INPUT_FACETS, ref.role_facets, run)
    return nodes.dataset_id(dataset.namespace, dataset.name, dsv.version)


def event_ingest(*, actor, event: ParsedEvent) -> IngestResult:
    """Record one validated OpenLineage event (lineage.openlineage.parse) and its audit event."""
    now = timezone.now()
    w = _Writer(actor=actor, event=event, now=now)
    job_node = run_node = None
    inputs: list[str] = []
    outputs: list[str] = []
    with transaction.atomic():
        job = run = dataset = None
        if event.job is not None:
            job = w.job(*event.job)
            job_node = nodes.job_id(job.namespace, job.name)
        if event.run_uuid is not None:
            run = w.run(event.run_uuid, job)
            run_node = nodes.run_id(run.run_uuid)
        if event.dataset is not None:
            dataset = w.dataset(event.dataset)
        w.row = LineageEvent.objects.create(
            kind=event.kind,
            event_type=event.event_type,
            event_time=event.event_time,
            producer=event.producer,
            schema_url=event.schema_url,
            run=run,
            job=job,
            dataset=dataset,
            payload_sha256=event.payload_sha256,
            recorded_by=_user(actor),
            recorded_at=now,
        )
        if event.kind == EventKind.RUN:
            w.facets((NodeType.RUN, run.pk), FacetRole.FACETS, event.run_facets, run)
            w.facets((NodeType.JOB, job.pk), FacetRole.FACETS, event.job_facets, run)
            inputs = [_dataset_side(w, ref, output=False, run=run) for ref in event.inputs]
            outputs = [_dataset_side(w, ref, output=True, run=run) for ref in event.outputs]
        elif event.kind == EventKind.JOB:
            w.facets((NodeType.JOB, job.pk), FacetRole.FACETS, event.job_facets)
            for ref, side in [(r, inputs) for r in event.inputs] + [(r, outputs) for r in event.outputs]:
                ds = w.dataset(ref)
                target = (NodeType.DATASET, ds.pk)
                if side is inputs:
                    w.edge(target, (NodeType.JOB, job.pk), EdgeKind.INPUT)
                else:
                    w.edge((NodeType.JOB, job.pk), target, EdgeKind.OUTPUT)
                if ref.version is not None:
                    dsv = w.version(ds, ref.version)
                    w.facets((NodeType.DATASET_VERSION, dsv.pk), FacetRole.FACETS, ref.facets)
                else:
                    w.facets(target, FacetRole.FACETS, ref.facets)
                side.append(nodes.dataset_id(ds.namespace, ds.name))
        else:
            ref = event.dataset
            if ref.version is not None:
                dsv = w.version(dataset, ref.version)
                w.facets((NodeType.DATASET_VERSION, dsv.pk), FacetRole.FACETS, ref.facets)
                outputs = [nodes.dataset_id(dataset.namespace, dataset.name, dsv.version)]
            else:
                w.facets((NodeType.DATASET, dataset.pk), FacetRole.FACETS, ref.facets)
                outputs = [nodes.dataset_id(dataset.namespace, dataset.name)]
        w.flush_edges()
        audit_record(
            action="lineage.event_ingested",
            subject=w.row,
            subject_repr=f"{event.kind} {event.event_type} {run_node or job_node or outputs[0]}".strip(),
            actor=actor,
            after={
                "kind": event.kind,
                "event_type": event.event_type,
                "event_time": event.event_time,
                "producer": event.producer,
                "run": run_node,
                "job": job_node,
                "inputs": inputs,
                "outputs": outputs,
                "payload_sha256": event.payload_sha256,
                "recorded": w.counts,
            },
        )
    return IngestResult(event=w.row, job=job_node, run=run_node, inputs=inputs, outputs=outputs, created=w.counts)


def version_link(
    *, actor, version: ModelVersion, run_uuid: uuid.UUID, linked: bool = True, reason: str = ""
) -> tuple[VersionRunLink | None, bool]:
    """Link a model version to the run that produced it after registration (or retract a link).

    Returns (fact, True) when a fact was recorded, (None, False) when the version is already in
    the asked state (linking twice is idempotent). Unlinking a version that is not linked to the
    run is a 409. Needs the register_version permission on the model (checked here too) and, to link,
    on every model the run already produced (check_may_claim_run).
    """
    if not access.has_perm(actor, ModelPerm.REGISTER, version.model):
        raise Forbidden(f"Linking lineage to {version.model} needs the 'register_version' permission on it.")
    now = timezone.now()
    with transaction.atomic():
        # The version row lock serializes link facts of one version, so their ids are in time order.
        locked = ModelVersion.objects.select_for_update(no_key=True).select_related("model").get(pk=version.pk)
        if linked:
            check_may_claim_run(actor=actor, run_uuid=run_uuid, claimed_for=str(locked))
        current = _linked_now(locked, run_uuid)
        if current == linked:
            if linked:
                return None, False
            raise Conflict(
                f"Version {locked} is not linked to run {run_uuid}; there is nothing to unlink.",
                code="not_linked",
            )
        fact = VersionRunLink.objects.create(
            version=locked,
            run_uuid=run_uuid,
            linked=linked,
            source=LinkSource.LINK,
            reason=reason,
            recorded_by=_user(actor),
            recorded_at=now,
        )
        audit_record(
            action="lineage.version_linked" if linked else "lineage.version_unlinked",
            subject=fact,
            subject_repr=f"{locked} {'<-' if linked else '-/-'} run {run_uuid}",
            actor=actor,
            reason=reason,
            after={
                "model": str(locked.model),
                "version": locked.number,
                "digest": locked.digest,
                "run_id": run_uuid,
                "linked": linked,
            },
        )
    return fact, True


def trail_issued(*, actor, node_id: str, sha256: str, as_of, chain_head: dict) -> int:
    """Record that the registry issued a trail with this sha256: a trail carries facts the audit events it
    lists do not spell out, and this event in the hash-chained log is what shows a copy was not altered
    (recomputing the sha256 alone proves nothing: whoever altered it recomputes that too). Returns its seq."""
    with transaction.atomic():
        event = audit_record(
            action="lineage.trail_issued",
            subject_type="lineage.node",
            subject_id=node_id,
            subject_repr=node_id,
            actor=actor,
            after={"sha256": sha256, "as_of": as_of, "chain_head_seq": chain_head["seq"]},
        )
    return event.seq


def edges_append(*, edges: list[tuple[tuple[int, int], tuple[int, int], int]], recorded_at=None) -> int:
    """For other apps' services (governance: model version -> release), inside *their* transaction.

    The caller's own audit event covers the change; this writes no audit event of its own.
    edges: [((src_type, src_id), (dst_type, dst_id), kind)]. Returns how many were given.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("lineage.services.edges_append() must be called inside the caller's transaction.atomic()")
    now = recorded_at or timezone.now()
    Edge.objects.bulk_create(
        [Edge(src_type=s[0], src_id=s[1], dst_type=d[0], dst_id=d[1], kind=k, recorded_at=now) for s, d, k in edges],
        ignore_conflicts=True,
    )
    return len(edges)
