"""Lineage facts. Every table is append-only (database triggers, migration 0002): a correction is a
new fact, and every row carries `recorded_at`, so the graph can be read as of any past time.

Identity rows (Dataset, DatasetVersion, Job, Run) are written once, when first seen. What is said
about them over time (schemas, row counts, code locations, run states) lives in Facet and
LineageEvent rows; edges between nodes live in Edge. A model version's producing run is read by a
join on ModelVersion.run_id (set at registration) plus VersionRunLink facts (linked afterwards,
or unlinked as a correction).
"""

from django.conf import settings
from django.db import models

from lineage.choices import EventKind, LinkSource
from registry.models import ModelVersion

NAME_MAX = 1000  # namespaces and names (OpenLineage allows URIs and long paths)


class Dataset(models.Model):
    namespace = models.CharField(max_length=NAME_MAX)
    name = models.CharField(max_length=NAME_MAX)
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["namespace", "name"], name="lineage_dataset_unique_name")]

    def __str__(self) -> str:
        return f"{self.namespace}:{self.name}"


class Job(models.Model):
    namespace = models.CharField(max_length=NAME_MAX)
    name = models.CharField(max_length=NAME_MAX)
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["namespace", "name"], name="lineage_job_unique_name")]

    def __str__(self) -> str:
        return f"{self.namespace}:{self.name}"


class Run(models.Model):
    """One run of a job (training, evaluation, ...), identified by its OpenLineage run UUID."""

    run_uuid = models.UUIDField(unique=True)
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="runs")
    recorded_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["job", "recorded_at"], name="lineage_run_job_idx")]

    def __str__(self) -> str:
        return str(self.run_uuid)


class DatasetVersion(models.Model):
    """One version of a dataset.

    `version` is the OpenLineage `version` facet's datasetVersion when sent; otherwise a run's
    output gets "run:<runId>" and a dataset first seen as an input gets "" (its initial version).
    `digest` is set when the version is a content digest ("sha256:<hex>").
    """

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="versions")
    version = models.CharField(max_length=500, blank=True)
    digest = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField()  # eventTime of the event that first named it
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dataset", "version"], name="lineage_datasetversion_unique_version")
        ]
        indexes = [models.Index(fields=["dataset", "recorded_at"], name="lineage_dsv_dataset_idx")]

    def __str__(self) -> str:
        return f"{self.dataset}#{self.version}"


class LineageEvent(models.Model):
    """One accepted OpenLineage event: what it was and who sent it (its facts are in Edge/Facet)."""

    kind = models.CharField(max_length=20, choices=EventKind.choices)
    event_type = models.CharField(max_length=10, blank=True)
    event_time = models.DateTimeField()
    producer = models.CharField(max_length=2000)
    schema_url = models.CharField(max_length=2000)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    payload_sha256 = models.CharField(max_length=64)
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    recorded_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["run", "recorded_at"], name="lineage_event_run_idx"),
            models.Index(fields=["job", "recorded_at"], name="lineage_event_job_idx"),
            models.Index(fields=["dataset", "recorded_at"], name="lineage_event_dataset_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.event_type} #{self.pk}"


class Facet(models.Model):
    """One OpenLineage facet as sent about a subject (type, id). Stored only when it changed.

    `run` is the run whose event carried it: a job's sourceCodeLocation sent with a run's event
    says which code *that run* executed.
    """

    subject_type = models.PositiveSmallIntegerField()  # lineage.choices.NodeType
    subject_id = models.BigIntegerField()
    role = models.PositiveSmallIntegerField()  # lineage.choices.FacetRole
    name = models.CharField(max_length=200)
    value = models.JSONField()
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    event = models.ForeignKey(LineageEvent, on_delete=models.PROTECT, related_name="facets")
    recorded_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(
                fields=["subject_type", "subject_id", "name", "recorded_at"], name="lineage_facet_subject_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} of {self.subject_type}:{self.subject_id}"


class Edge(models.Model):
    """A directed lineage fact, source -> target in the direction data flows.

    Nodes are (type, id) pairs (lineage.choices.NodeType) so that other apps' objects (model
    versions, governance's releases) are nodes without lineage importing them. The unique
    constraint doubles as the downstream index; `lineage_edge_upstream_idx` serves upstream walks
    and covers every column a step reads (an index-only scan on PostgreSQL).
    """

    src_type = models.PositiveSmallIntegerField()
    src_id = models.BigIntegerField()
    dst_type = models.PositiveSmallIntegerField()
    dst_id = models.BigIntegerField()
    kind = models.PositiveSmallIntegerField()  # lineage.choices.EdgeKind
    event = models.ForeignKey(LineageEvent, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["src_type", "src_id", "dst_type", "dst_id", "kind"], name="lineage_edge_unique"
            )
        ]
        indexes = [
            models.Index(
                fields=["dst_type", "dst_id"],
                include=["src_type", "src_id", "kind", "recorded_at"],
                name="lineage_edge_upstream_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.src_type}:{self.src_id} -{self.kind}-> {self.dst_type}:{self.dst_id}"


class VersionRunLink(models.Model):
    """A fact about which run produced a model version, recorded after registration.

    linked=True links the version to the run; linked=False retracts an earlier link (or the
    run_id given at registration) from `recorded_at` on. Runs are named by UUID, as in
    ModelVersion.run_id, so a link may precede the run's OpenLineage events.
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    run_uuid = models.UUIDField()
    linked = models.BooleanField()
    source = models.CharField(max_length=20, choices=LinkSource.choices)
    reason = models.TextField(blank=True)
    event = models.ForeignKey(LineageEvent, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    recorded_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["run_uuid", "recorded_at"], name="lineage_link_run_idx"),
            models.Index(fields=["version", "recorded_at"], name="lineage_link_version_idx"),
        ]

    def __str__(self) -> str:
        return f"{'link' if self.linked else 'unlink'} version {self.version_id} run {self.run_uuid}"
