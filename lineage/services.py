"""Every write to lineage. Each runs in one transaction with exactly one audit event.

Facts are append-only: identity rows are written once, edges once per (source, target, kind),
facets only when they changed, and everything carries the same `recorded_at` (the moment of the
write), which is what `as_of` reads.
"""

import functools
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

from django.contrib.postgres.fields import ArrayField
from django.db import IntegrityError, OperationalError, connection, models, transaction
from django.db.models import F, OuterRef, Q, Subquery, Window
from django.db.models.expressions import RawSQL
from django.db.models.functions import RowNumber
from django.utils import timezone

from accounts import access
from audit.models import AuditEvent
from audit.services import REDACTED, redact, secret_name
from audit.services import record as audit_record
from core.errors import Conflict, Forbidden, InvalidInput
from core.locks import lock_names
from lineage import nodes, selectors
from lineage.choices import EdgeKind, EventKind, FacetRole, LinkSource, NodeType
from lineage.models import Dataset, DatasetVersion, Edge, Facet, Job, LineageEvent, Run, VersionRunLink
from lineage.openlineage import ENVIRONMENT_FACET, DatasetRef, ModelRef, ParsedEvent, as_exported, dataset_digest
from registry.models import ModelPerm, ModelVersion, RegisteredModel

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    event: LineageEvent
    job: str | None
    run: str | None
    inputs: list[str]
    outputs: list[str]
    created: dict
    recorded: bool = True  # False: the same event was stored before (event_ingest), and this one records nothing


def _read(model, fields: tuple[str, ...], keys) -> dict:
    """The rows named by a unique key (field, ...), by key: one statement for any number of keys. It selects by an
    IN list per field, which PostgreSQL hashes, and keeps the rows whose whole key was asked for (a row-value IN
    list would compare each row with every key)."""
    keys = set(keys)
    if not keys:
        return {}
    rows = model.objects.filter(**{f"{f}__in": {key[i] for key in keys} for i, f in enumerate(fields)})
    return {key: row for row in rows if (key := tuple(getattr(row, f) for f in fields)) in keys}


def _create(model, fields: tuple[str, ...], keys: list, make) -> tuple[dict, int]:
    """Insert make(key) for each key, in order, in one statement: the rows by key and how many this transaction
    created. As get_or_create() does: when another transaction has committed one of the rows since it was read,
    that row is read instead of created twice."""
    rows: dict = {}
    while keys:
        try:
            with transaction.atomic():
                created = model.objects.bulk_create([make(key) for key in keys])
        except IntegrityError:
            raced = _read(model, fields, keys)
            if not raced:
                raise
            rows.update(raced)
            keys = [key for key in keys if key not in raced]
            continue
        rows.update(zip(keys, created, strict=True))
        return rows, len(created)
    return rows, 0


def _with_codenames(actor, qs, model_column: str, model_of):
    """The rows of qs, the codenames `actor` holds on each row's RegisteredModel (its id in `model_column` of
    qs's table) read by the same statement and remembered for access.has_perm (accounts.access.codenames_column;
    on PostgreSQL, elsewhere has_perm asks once per model)."""
    held = access.codenames_column(actor, RegisteredModel, f'"{qs.model._meta.db_table}"."{model_column}"')
    if held is None:
        yield from qs
        return
    for row in qs.annotate(held=RawSQL(*held, output_field=ArrayField(models.CharField()))):  # noqa: S611 - access's
        access.remember(actor, model_of(row), row.held)
        yield row


class _Writer:
    """Collects one event's facts and writes them under one recorded_at.

    A fixed number of statements on PostgreSQL whatever the number of datasets: identities and versions are
    read and created in bulk, facts are queued in the order the per-dataset rules produce them (later datasets
    of the event see the versions and facets earlier ones recorded) and inserted at the end.

    Rows under a unique key that a concurrent event may insert too (datasets, versions, a JobEvent's edges) are
    inserted in one order whatever the event's: an insert waits for another transaction's uncommitted row with the
    same key, so two events inserting shared rows in opposite orders would each wait for the other."""

    def __init__(self, *, actor, event: ParsedEvent, now):
        self.actor = actor
        self.parsed = event
        self.now = now
        self.counts = {"datasets": 0, "dataset_versions": 0, "jobs": 0, "runs": 0, "edges": 0, "facets": 0, "links": 0}
        self.edges: list[Edge] = []
        self.facet_rows: list[Facet] = []
        self.links: list[VersionRunLink] = []
        self.stored: dict[tuple, dict] = {}  # (subject type, id, role, name) -> the latest value, see load_facets
        self.shown: dict[tuple, dict] = {}  # the same, as readers see a dataset (run-less events only)
        self.linked_now: set[int] = set()  # the run's model versions (_versions_linked_to), with links queued
        self.row: LineageEvent | None = None

    # --- identities ------------------------------------------------------------------------
    def datasets(self, refs: list[DatasetRef]) -> dict[tuple[str, str], Dataset]:
        """The datasets refs name, by (namespace, name); the new ones created in (namespace, name) order."""
        fields = ("namespace", "name")
        keys = {(ref.namespace, ref.name) for ref in refs}
        found = _read(Dataset, fields, keys)
        made, created = _create(
            Dataset,
            fields,
            sorted(key for key in keys if key not in found),
            lambda key: Dataset(namespace=key[0], name=key[1], recorded_at=self.now),
        )
        self.counts["datasets"] += created
        return found | made

    def create_versions(self, keys: list[tuple[int, str]]) -> dict[tuple[int, str], DatasetVersion]:
        """Create versions (dataset id, version) known not to exist, by dataset id and, within a dataset, in order:
        the last one created is that dataset's latest (the highest id of one recorded_at, _current_versions), so
        versions of one dataset keep the order the rules created them in."""
        made, created = _create(
            DatasetVersion,
            ("dataset_id", "version"),
            sorted(keys, key=lambda key: key[0]),
            lambda key: DatasetVersion(
                dataset_id=key[0],
                version=key[1],
                digest=dataset_digest(key[1]),
                created_at=self.parsed.event_time,
                recorded_at=self.now,
            ),
        )
        self.counts["dataset_versions"] += created
        return made

    def versions(self, keys: list[tuple[int, str]]) -> dict[tuple[int, str], DatasetVersion]:
        """Get or create versions (dataset id, version)."""
        keys = list(dict.fromkeys(keys))
        found = _read(DatasetVersion, ("dataset_id", "version"), keys)
        return found | self.create_versions([key for key in keys if key not in found])

    def run_versions(self, run: Run, sides: list[tuple[Dataset, DatasetRef, bool]]) -> list[DatasetVersion]:
        """The version each (dataset, ref, output) of a run's event names, in order: the `version` facet's, an
        output's "run:<runId>", or for an input without one the version of that dataset the run already reads
        (an earlier or re-sent event of the run said it), else the dataset's latest recorded version that this
        run did not produce, else its initial version "". So re-sending an event (HTTP clients retry POSTs)
        changes nothing, and a job that reads and writes one table reads the version before its own output,
        not its output. A version created by an earlier dataset of the same event counts as recorded (it is the
        latest: recorded now, with a higher id); edges are written at the end, so none of this event's counts as
        read or produced."""
        produced_key = f"run:{run.run_uuid}"
        keys = [
            ref.version if ref.version is not None else produced_key if output else None for _, ref, output in sides
        ]
        unnamed = {ds.pk for (ds, _, _), key in zip(sides, keys, strict=True) if key is None}
        read, latest = self._current_versions(run, unnamed, produced_key)
        wanted = {(ds.pk, key) for (ds, _, _), key in zip(sides, keys, strict=True) if key is not None}
        found = _read(DatasetVersion, ("dataset_id", "version"), wanted | {(pk, "") for pk in unnamed})
        new: list[tuple[int, str]] = []  # versions to create, in the order the rules create them
        newest: dict[int, tuple[int, str]] = {}  # dataset id -> its last version created above, if not run:<runId>

        def get_or_create(key: tuple[int, str]) -> tuple[int, str]:
            if key not in found and key not in new:
                new.append(key)
                if key[1] != produced_key:
                    newest[key[0]] = key
            return key

        found |= {(v.dataset_id, v.version): v for v in [*read.values(), *latest.values()]}
        chosen = []
        for (ds, _, _), key in zip(sides, keys, strict=True):
            if key is not None:
                chosen.append(get_or_create((ds.pk, key)))
            elif ds.pk in read:
                chosen.append((ds.pk, read[ds.pk].version))
            elif ds.pk in newest and (ds.pk not in latest or latest[ds.pk].recorded_at <= self.now):
                chosen.append(newest[ds.pk])
            elif ds.pk in latest:
                chosen.append((ds.pk, latest[ds.pk].version))
            else:
                chosen.append(get_or_create((ds.pk, "")))
        found |= self.create_versions(new)
        return [found[key] for key in chosen]

    def _current_versions(
        self, run: Run, dataset_ids: set[int], produced_key: str
    ) -> tuple[dict[int, DatasetVersion], dict[int, DatasetVersion]]:
        """For each dataset: the version the run read last (by its input edge), and the latest recorded version
        the run did not produce. Three statements; the last takes one index lookup per dataset."""
        if not dataset_ids:
            return {}, {}
        read_edges = sorted(  # in the order recorded
            Edge.objects.filter(
                dst_type=NodeType.RUN,
                dst_id=run.pk,
                kind=EdgeKind.INPUT,
                src_type=NodeType.DATASET_VERSION,
                src_id__in=DatasetVersion.objects.filter(dataset_id__in=dataset_ids).values("pk"),
            ).values_list("src_id", "recorded_at", "id"),
            key=lambda edge: edge[1:],
        )
        versions = DatasetVersion.objects.in_bulk([src for src, _, _ in read_edges])
        read = {versions[src].dataset_id: versions[src] for src, _, _ in read_edges}  # the last one read wins
        produced = Edge.objects.filter(
            src_type=NodeType.RUN, src_id=run.pk, kind=EdgeKind.OUTPUT, dst_type=NodeType.DATASET_VERSION
        ).values("dst_id")
        candidates = (
            DatasetVersion.objects.filter(dataset=OuterRef("pk"))
            .exclude(pk__in=produced)
            .exclude(version=produced_key)
            .order_by("-recorded_at", "-id")
            .values("pk")[:1]
        )
        unread = dataset_ids - read.keys()
        if not unread:
            return read, {}
        latest_ids = Dataset.objects.filter(pk__in=unread).values(latest=Subquery(candidates))
        return read, {v.dataset_id: v for v in DatasetVersion.objects.filter(pk__in=latest_ids)}

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
        self.linked_now = _versions_linked_to(run_uuid)
        _check_may_speak_for(self.actor, run_uuid, produced=self.linked_now)
        return obj

    def model_versions(self, refs: list[tuple[DatasetRef, bool]]) -> dict[ModelRef, ModelVersion]:
        """The model version each (ref, output) names, checked in order: an input needs view permission on the
        model, an output (claiming which run produced it) register_version. One statement reads the versions
        (and any others matching a name and a number or digest, ignored) and, on PostgreSQL, the codenames the
        sender holds on their models."""
        if not refs:
            return {}
        numbers = {ref.model.number for ref, _ in refs if ref.model.number is not None}
        digests = {ref.model.digest for ref, _ in refs if ref.model.digest is not None}
        qs = (
            ModelVersion.objects.select_related("model")
            .only("number", "digest", "model__namespace", "model__name")
            .filter(
                model__namespace__in={ref.model.namespace for ref, _ in refs},
                model__name__in={ref.model.name for ref, _ in refs},
            )
            .filter(Q(number__in=numbers) | Q(digest__in=digests))
        )
        by_ref = {}
        column = ModelVersion._meta.get_field("model").column
        for version in _with_codenames(self.actor, qs, column, lambda version: version.model):
            model = (version.model.namespace, version.model.name)
            by_ref[ModelRef(*model, version.number, None)] = version
            by_ref[ModelRef(*model, None, version.digest)] = version
        for ref, output in refs:
            version = by_ref.get(ref.model)
            if version is None or not access.has_perm(self.actor, access.view_codename(version.model), version.model):
                raise InvalidInput(
                    f"Invalid OpenLineage event: {ref.path}.name: no model version {ref.model} that you may view. "
                    "Register the version first (or send the run_id when registering it).",
                    code="invalid_event",
                    detail={f"{ref.path}.name": ["Unknown model version."]},
                )
            if output and not access.has_perm(self.actor, ModelPerm.REGISTER, version.model):
                raise Forbidden(
                    f"{ref.path}: linking a run as the producer of {ref.model} needs the '{ModelPerm.REGISTER}' "
                    f"permission on {version.model}."
                )
        return by_ref

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

    def load_facets(
        self,
        subjects: set[tuple[int, int]],
        facet_sets: list[dict],
        run: Run | None,
        datasets_of: dict[tuple[int, int], tuple[int, int]] | None = None,
    ) -> None:
        """Read the latest stored value of every facet name the event sends about these subjects, as sent with
        `run` (None: without a run): one statement for the whole event. Without a run, also what a reader sees of
        the datasets and dataset versions among them (`shown`: the latest value whoever sent it, a version's
        falling back to its dataset's, `datasets_of`), as the export's DatasetEvents and JobEvents state it."""
        names = {name for facets in facet_sets for name in facets}
        if not subjects or not names:
            return
        self.stored = _latest_facets(subjects, names, Q(run=run))
        if run is None:
            datasets_of = datasets_of or {}
            seen = {s for s in subjects if s[0] in (NodeType.DATASET, NodeType.DATASET_VERSION)}
            latest = _latest_facets(seen | set(datasets_of.values()), names, Q())
            self.shown = {k: v for k, v in latest.items() if tuple(k[:2]) in seen}
            for version, dataset in datasets_of.items():
                for (t, pk, role, name), value in latest.items():
                    if (t, pk) == dataset and role == FacetRole.FACETS:
                        self.shown.setdefault((*version, role, name), value)

    def facets(self, subject: tuple[int, int], role: FacetRole, facets: dict, run: Run | None = None) -> None:
        """Queue the facets whose value differs from the latest one stored or queued (load_facets first), and from
        the export's rendering of it: an exported file sent back records nothing, though the export adds
        `_producer`/`_schemaURL` to a facet stored without them. A facet is kept as its sender wrote it: this
        only skips one that restates a stored facet, never drops a key of one it records."""
        base = _facet_base(subject[0], role)
        for name, value in facets.items():
            if name == ENVIRONMENT_FACET:  # its shape was checked by lineage.openlineage for any subject
                value = _redacted_environment(value)
            value = _redacted_keys(value)  # before comparing: the export's rendering of it is redacted too
            key = (*subject, role, name)
            if not _restates(self.stored.get(key), value, base) and not _restates(self.shown.get(key), value, base):
                self.stored[key] = value
                self.facet_rows.append(
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

    def link(self, version: ModelVersion, run_uuid: uuid.UUID) -> None:
        """Queue a link of the version to the run unless it is linked now."""
        if version.pk in self.linked_now:
            return
        self.linked_now.add(version.pk)
        self.links.append(
            VersionRunLink(
                version=version,
                run_uuid=run_uuid,
                linked=True,
                source=LinkSource.OPENLINEAGE,
                event=self.row,
                recorded_by=_user(self.actor),
                recorded_at=self.now,
            )
        )

    def flush(self) -> None:
        _insert_facets(self.facet_rows)
        self.counts["facets"] += len(self.facet_rows)
        VersionRunLink.objects.bulk_create(self.links)
        self.counts["links"] += len(self.links)
        # An edge already recorded (same source, target, kind) keeps its first recorded_at and event; the insert
        # skips it without saying so, so the edges this event created are counted by their event.
        if self.parsed.kind != EventKind.RUN:
            # Another JobEvent of the job may insert the same edges: in key order (see the class). A RunEvent's
            # edges all touch its run, whose events the run claim lock serializes, and their order is the order
            # the run read its inputs in (_current_versions).
            self.edges.sort(key=lambda e: (e.src_type, e.src_id, e.dst_type, e.dst_id, e.kind))
        if self.edges:
            Edge.objects.bulk_create(self.edges, ignore_conflicts=True)
            self.counts["edges"] += Edge.objects.filter(event=self.row).count()


def _insert_facets(rows: list[Facet]) -> None:
    """Insert facet rows, on PostgreSQL with COPY. Django's bulk insert there is INSERT ... SELECT * FROM
    UNNEST(<arrays>), and psycopg writes a jsonb[] array as one text literal, escaping every quote of every value
    in Python: most of a large event's ingest time (seconds for 1000 inputs and 1000 outputs with schema and column
    lineage facets; docs/lineage.md, "Ingest"). COPY streams each value as jsonb text of its own, in one statement
    whatever the number of rows, each field's value prepared as Django prepares it for an INSERT. Django's query
    log and execute wrappers do not see the COPY."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        Facet.objects.bulk_create(rows)
        return
    fields = [f for f in Facet._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    sql = f"COPY {quote(Facet._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row([f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields])


def _latest_facets(subjects: set[tuple[int, int]], names: set[str], sent: Q) -> dict[tuple, dict]:
    """{(subject type, id, role, name): value}: the latest value of each facet name `sent` selects."""
    key = ["subject_type", "subject_id", "role", "name"]
    latest = (
        Facet.objects.filter(selectors.of_subjects(subjects), sent, name__in=names)
        .annotate(
            rank=Window(
                RowNumber(), partition_by=[F(f) for f in key], order_by=[F("recorded_at").desc(), F("id").desc()]
            )
        )
        .filter(rank=1)
        .values_list(*key, "value")
    )
    return {tuple(row[:4]): row[4] for row in latest}


def _restates(stored, value, base: str) -> bool:
    """Whether `value` says what `stored` says: the same, or the export's rendering of it (lineage.exports adds
    `_producer`/`_schemaURL` to a facet stored without them)."""
    return stored is not None and (stored == value or (isinstance(stored, dict) and as_exported(stored, base) == value))


def _facet_base(subject_type: int, role: FacetRole) -> str:
    """The base facet type a facet of this subject and role extends (the `_schemaURL` the export fills in)."""
    if subject_type == NodeType.RUN:
        return "RunFacet"
    if subject_type == NodeType.JOB:
        return "JobFacet"
    return {FacetRole.INPUT_FACETS: "InputDatasetFacet", FacetRole.OUTPUT_FACETS: "OutputDatasetFacet"}.get(
        role, "DatasetFacet"
    )


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


# Maps keyed by column name (columnLineage's `fields`, dataQualityMetrics' `columnMetrics`): a column called
# `token` or `password` holds lineage and statistics, not a secret.
_COLUMN_MAPS = ("fields", "columnMetrics")


def _redacted_keys(value, columns: bool = False):
    """A facet with the value under every key named like a secret stored as [redacted], at any depth, and so the
    value of a {"name" or "key": <such a name>, "value": …} item (environment variables, execution parameters,
    property lists). By key name only: a digest or any other value under an ordinary key is kept as sent, and so
    are the keys of a map of columns (`columns`). Every reader may see a facet (docs/lineage.md), and the tables
    are append-only: a secret stored could never go.

    A part with nothing to redact is returned as it is, not copied: a large event's facets are mostly schemas and
    column lineage, and copying them cost as much as inserting them."""
    if isinstance(value, dict):
        changed = {}
        for k, v in value.items():
            if not columns and (_secret_key(k) or (k == "value" and _names_secret(value))):
                changed[k] = REDACTED
            elif isinstance(v, dict | list):
                new = _redacted_keys(v, columns=not columns and k in _COLUMN_MAPS and isinstance(v, dict))
                if new is not v:
                    changed[k] = new
        return {**value, **changed} if changed else value
    if isinstance(value, list):
        items = [_redacted_keys(v) for v in value]
        return items if any(new is not old for new, old in zip(items, value, strict=True)) else value
    return value


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """secret_name(key), remembered: a large event repeats a few keys (name, type, field, ...) many thousand times."""
    return secret_name(key)


def _names_secret(item: dict) -> bool:
    named = item.get("name", item.get("key"))
    return isinstance(named, str) and _secret_key(named)


def _check_may_speak_for(
    actor, run_uuid: uuid.UUID, doing: str = "adding to its lineage", hint: str = "", produced: set[int] | None = None
) -> None:
    """A run that produced model versions speaks for their models: its inputs and commit feed the policy's
    require_lineage gate and the trail. Adding to it needs register_version on each of those models, as
    naming a model version as an output does; a run known to produce nothing takes any writer's events.
    Naming the run as the producer of another version (a link, a registration's run_id) adds to it too: a
    model linked to someone else's run would otherwise lock its owner out of it. `produced`: the run's
    _versions_linked_to(), when the caller has it."""
    produced = _versions_linked_to(run_uuid) if produced is None else produced
    if not produced:
        return
    models_of = RegisteredModel.objects.filter(pk__in=ModelVersion.objects.filter(pk__in=produced).values("model_id"))
    for model in _with_codenames(actor, models_of, "id", lambda model: model):
        if not access.has_perm(actor, ModelPerm.REGISTER, model):
            visible = access.has_perm(actor, access.view_codename(model), model)
            produced_what = f"a version of model {model}" if visible else "a model version"
            raise Forbidden(
                f"Run {run_uuid} produced {produced_what}; {doing} needs the 'register_version' "
                f"permission on that model.{hint}"
            )


def _lock_run(run_uuid: uuid.UUID) -> None:
    """Serialize the claims on a run until commit. Naming a run as a version's producer (an event's model output, a
    link, a registration's run_id), and adding to its lineage, is allowed by what the run produced so far
    (_check_may_speak_for): two teams claiming a fresh run at once would each see none of the other's uncommitted
    claim, and both pass. A run may be named before its first event, with no Run row to lock, so the lock is on its
    UUID (core.locks). It comes before any row lock of the transaction (docs/lineage.md, "Run claims")."""
    lock_names("lineage.run_claim", [str(run_uuid)])


def check_may_claim_run(*, actor, run_uuid: uuid.UUID, claimed_for: str) -> None:
    """Before naming run_uuid as the run that produced a version of `claimed_for` (a model or model version):
    a run that already produced versions of other models may be named only by someone who may speak for it
    (_check_may_speak_for); a run with no linked model version, by whoever may register the version.
    Call it in the transaction that records the claim, before its row locks: it locks the run's claims until
    commit (_lock_run). version_link checks it; registry.services.version_register calls it for a registration
    with a run_id."""
    _lock_run(run_uuid)
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


def _sides(event: ParsedEvent) -> list[tuple[DatasetRef, bool]]:
    """An event's datasets, inputs then outputs, each with whether it is an output."""
    return [(ref, False) for ref in event.inputs] + [(ref, True) for ref in event.outputs]


def _run_lineage(w: _Writer, run: Run, job: Job) -> tuple[list[str], list[str]]:
    """A RunEvent's facets, inputs and outputs: returns the input and output node ids."""
    event = w.parsed
    sides = _sides(event)
    model_versions = w.model_versions([(ref, output) for ref, output in sides if ref.model is not None])
    datasets = w.datasets([ref for ref, _ in sides if ref.model is None])
    data_sides = [(datasets[(ref.namespace, ref.name)], ref, output) for ref, output in sides if ref.model is None]
    versions = iter(w.run_versions(run, data_sides))
    resolved = [next(versions) if ref.model is None else model_versions[ref.model] for ref, _ in sides]
    subjects = {(NodeType.RUN, run.pk), (NodeType.JOB, job.pk)}
    subjects |= {
        (NodeType.DATASET_VERSION, v.pk) for (ref, _), v in zip(sides, resolved, strict=True) if ref.model is None
    }
    facet_sets = [event.run_facets, event.job_facets] + [f for ref, _ in sides for f in (ref.facets, ref.role_facets)]
    w.load_facets(subjects, facet_sets, run)
    w.facets((NodeType.RUN, run.pk), FacetRole.FACETS, event.run_facets, run)
    w.facets((NodeType.JOB, job.pk), FacetRole.FACETS, event.job_facets, run)
    inputs: list[str] = []
    outputs: list[str] = []
    for (ref, output), version in zip(sides, resolved, strict=True):
        if ref.model is not None:
            if output:
                w.link(version, run.run_uuid)
            else:
                w.edge((NodeType.MODEL, version.pk), (NodeType.RUN, run.pk), EdgeKind.INPUT)
            node_id = nodes.model_id(version.model.namespace, version.model.name, version.number)
        else:
            node = (NodeType.DATASET_VERSION, version.pk)
            if output:
                w.edge((NodeType.RUN, run.pk), node, EdgeKind.OUTPUT)
            else:
                w.edge(node, (NodeType.RUN, run.pk), EdgeKind.INPUT)
            w.facets(node, FacetRole.FACETS, ref.facets, run)
            w.facets(node, FacetRole.OUTPUT_FACETS if output else FacetRole.INPUT_FACETS, ref.role_facets, run)
            node_id = nodes.dataset_id(ref.namespace, ref.name, version.version)
        (outputs if output else inputs).append(node_id)
    return inputs, outputs


def _declared_lineage(w: _Writer, job: Job) -> tuple[list[str], list[str]]:
    """A JobEvent's facets and declared dataset -> job -> dataset edges: returns the input and output node ids."""
    event = w.parsed
    sides = [(ref, False) for ref in event.inputs] + [(ref, True) for ref in event.outputs]
    datasets = w.datasets([ref for ref, _ in sides])
    versions = w.versions(
        [(datasets[(ref.namespace, ref.name)].pk, ref.version) for ref, _ in sides if ref.version is not None]
    )
    subjects = {(NodeType.JOB, job.pk)}
    datasets_of = {}
    for ref, _ in sides:
        ds = datasets[(ref.namespace, ref.name)]
        if ref.version is not None:
            version = (NodeType.DATASET_VERSION, versions[(ds.pk, ref.version)].pk)
            subjects.add(version)
            datasets_of[version] = (NodeType.DATASET, ds.pk)
        else:
            subjects.add((NodeType.DATASET, ds.pk))
    w.load_facets(subjects, [event.job_facets] + [ref.facets for ref, _ in sides], None, datasets_of)
    w.facets((NodeType.JOB, job.pk), FacetRole.FACETS, event.job_facets)
    inputs: list[str] = []
    outputs: list[str] = []
    for ref, output in sides:
        ds = datasets[(ref.namespace, ref.name)]
        target = (NodeType.DATASET, ds.pk)
        if output:
            w.edge((NodeType.JOB, job.pk), target, EdgeKind.OUTPUT)
        else:
            w.edge(target, (NodeType.JOB, job.pk), EdgeKind.INPUT)
        if ref.version is not None:
            w.facets((NodeType.DATASET_VERSION, versions[(ds.pk, ref.version)].pk), FacetRole.FACETS, ref.facets)
        else:
            w.facets(target, FacetRole.FACETS, ref.facets)
        (outputs if output else inputs).append(nodes.dataset_id(ds.namespace, ds.name))
    return inputs, outputs


def _dataset_description(w: _Writer, dataset: Dataset) -> list[str]:
    """A DatasetEvent's facets, on the version its `version` facet names or else on the dataset."""
    ref = w.parsed.dataset
    subject, version = (NodeType.DATASET, dataset.pk), None
    if ref.version is not None:
        version = ref.version
        subject = (NodeType.DATASET_VERSION, w.versions([(dataset.pk, version)])[(dataset.pk, version)].pk)
    w.load_facets({subject}, [ref.facets], None, {subject: (NodeType.DATASET, dataset.pk)} if version else None)
    w.facets(subject, FacetRole.FACETS, ref.facets)
    return [nodes.dataset_id(dataset.namespace, dataset.name, version)]


def _model_restated(w: _Writer) -> list[str]:
    """A DatasetEvent about a model version records nothing (the version is the registry's): it must name one the
    sender may view and, when it states a version, that model version's digest."""
    ref = w.parsed.dataset
    version = w.model_versions([(ref, False)])[ref.model]
    if ref.version is not None and ref.version != version.digest:
        raise InvalidInput(
            f"Invalid OpenLineage event: dataset.facets.version.datasetVersion: {ref.model} has digest "
            f"{version.digest}, not '{ref.version}'.",
            code="invalid_event",
            detail={"dataset.facets.version.datasetVersion": ["Not the model version's digest."]},
        )
    return [nodes.model_id(version.model.namespace, version.model.name, version.number)]


_RETRIED = {"40P01", "40001"}  # deadlock_detected, serialization_failure: the whole transaction may be run again
INGEST_ATTEMPTS = 3


def event_ingest(*, actor, event: ParsedEvent) -> IngestResult:
    """Record one validated OpenLineage event (lineage.openlineage.parse) and its audit event.

    A transaction PostgreSQL aborted as a deadlock victim (two events creating shared rows in an order the sorted
    inserts cannot fix, such as two new versions of one dataset) runs again from the start, reading what the other
    one committed. Inside a caller's transaction there is nothing to run again: the caller's is aborted too."""
    attempts = 1 if connection.in_atomic_block else INGEST_ATTEMPTS
    for attempt in range(1, attempts):
        try:
            return _ingest(actor=actor, event=event)
        except OperationalError as exc:
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            if sqlstate not in _RETRIED:
                raise
            log.warning("lineage event ingest aborted (SQLSTATE %s), attempt %s of %s", sqlstate, attempt, attempts)
            time.sleep(secrets.randbelow(50) / 1000)  # so the two do not meet again in step
    return _ingest(actor=actor, event=event)


def _ingest(*, actor, event: ParsedEvent) -> IngestResult:
    now = timezone.now()
    w = _Writer(actor=actor, event=event, now=now)
    job_node = run_node = None
    inputs: list[str] = []
    outputs: list[str] = []
    with transaction.atomic():
        if event.run_uuid is not None:  # first: the run's claims, then rows (an event's model output claims it)
            _lock_run(event.run_uuid)
        job = run = dataset = None
        if event.job is not None:
            job = w.job(*event.job)
            job_node = nodes.job_id(job.namespace, job.name)
        if event.run_uuid is not None:
            run = w.run(event.run_uuid, job)  # checks that the sender may speak for the run, a re-send's too
            run_node = nodes.run_id(run.run_uuid)
            stored = _stored_copy(run, event)
            if stored is not None:
                return _resent(w, stored, job_node, run_node)
        if event.dataset is not None and event.dataset.model is None:
            dataset = w.datasets([event.dataset])[(event.dataset.namespace, event.dataset.name)]
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
            inputs, outputs = _run_lineage(w, run, job)
        elif event.kind == EventKind.JOB:
            inputs, outputs = _declared_lineage(w, job)
        elif event.dataset.model is not None:
            outputs = _model_restated(w)
        else:
            outputs = _dataset_description(w, dataset)
        w.flush()
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


def _stored_copy(run: Run, event: ParsedEvent) -> LineageEvent | None:
    """The RunEvent stored before that this one repeats: the same run, eventType, eventTime and canonical body (its
    sha256). The run's claim lock, held by the caller, serializes the run's events, so of two copies sent at once
    the second finds the first. One look-up by the run's index."""
    return (
        LineageEvent.objects.filter(
            run=run,
            kind=EventKind.RUN,
            event_type=event.event_type,
            event_time=event.event_time,
            payload_sha256=event.payload_sha256,
        )
        .order_by("id")
        .first()
    )


def _resent(w: _Writer, stored: LineageEvent, job_node: str | None, run_node: str | None) -> IngestResult:
    """A RunEvent sent again (OpenLineage clients retry a POST whose answer was lost) records nothing, no event row
    nor audit event: its answer is the stored event's, with the node ids its audit event named. The sender must
    still be one who may send it: the run's check is done (_Writer.run), and the model versions it names are
    checked as for a new event (a version's number is not told to whoever may not view its model)."""
    event = w.parsed
    w.model_versions([(ref, output) for ref, output in _sides(event) if ref.model is not None])
    after = (
        AuditEvent.objects.filter(
            action="lineage.event_ingested", subject_type=LineageEvent._meta.label_lower, subject_id=str(stored.pk)
        )
        .values_list("after", flat=True)
        .first()
    )
    named = json.loads(after) if after else {}
    return IngestResult(
        event=stored,
        job=job_node,
        run=run_node,
        inputs=named.get("inputs", []),
        outputs=named.get("outputs", []),
        created={name: 0 for name in w.counts},
        recorded=False,
    )


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
        if linked:  # first: the run's claims (check_may_claim_run locks them), then the version row
            check_may_claim_run(actor=actor, run_uuid=run_uuid, claimed_for=str(version))
        # The version row lock serializes link facts of one version, so their ids are in time order.
        locked = ModelVersion.objects.select_for_update(no_key=True).select_related("model").get(pk=version.pk)
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
    edges: [((src_type, src_id), (dst_type, dst_id), kind)]. Returns how many it created: an edge already
    recorded (same source, target and kind, given twice, or committed by another transaction meanwhile) keeps its
    first recorded_at and is not counted.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("lineage.services.edges_append() must be called inside the caller's transaction.atomic()")
    now = recorded_at or timezone.now()
    fields = ("src_type", "src_id", "dst_type", "dst_id", "kind")
    keys = {(s[0], s[1], d[0], d[1], k) for s, d, k in edges}
    found = _read(Edge, fields, keys)
    _, created = _create(  # in key order, as _Writer inserts shared rows
        Edge,
        fields,
        sorted(keys - found.keys()),
        lambda key: Edge(**dict(zip(fields, key, strict=True)), recorded_at=now),
    )
    return created
