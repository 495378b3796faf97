"""Codes stored in the lineage tables. Stored as small integers: the edge table is the big one."""

from django.db import models


class NodeType(models.IntegerChoices):
    """What a node of the lineage graph is. The edge table refers to nodes as (type, id).

    Codes 1-3 and 5-6 are lineage's and the registry's; 4 (release) is reserved for governance,
    which registers a handler for it (lineage.nodes.register_node_type) and appends its edges.
    """

    DATASET_VERSION = 1, "datasetVersion"  # lineage_datasetversion.id
    RUN = 2, "run"  # lineage_run.id
    MODEL = 3, "model"  # registry_modelversion.id
    RELEASE = 4, "release"  # governance: its release table's id
    DATASET = 5, "dataset"  # lineage_dataset.id (JobEvent declared lineage only)
    JOB = 6, "job"  # lineage_job.id (JobEvent declared lineage only)


class EdgeKind(models.IntegerChoices):
    """How data flows along an edge (source -> target).

    INPUT: the target run (or job) read the source (a dataset version, a base model).
    OUTPUT: the source run (or job) wrote the target (a dataset version, a model version).
    DEPLOYED: reserved for governance (model version -> release).
    """

    INPUT = 1, "input"
    OUTPUT = 2, "output"
    DEPLOYED = 3, "deployed"


class EventKind(models.TextChoices):
    RUN = "RunEvent"
    DATASET = "DatasetEvent"
    JOB = "JobEvent"


class RunState(models.TextChoices):
    """OpenLineage 2-0-2 eventType values. A run's state: lineage.graph._Query.run_state (docs/lineage.md,
    "Run state")."""

    START = "START"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    ABORT = "ABORT"
    FAIL = "FAIL"
    OTHER = "OTHER"


TERMINAL_STATES = {RunState.COMPLETE, RunState.ABORT, RunState.FAIL}


class FacetRole(models.IntegerChoices):
    """Where a facet was sent: an entity's own `facets`, or a dataset's `inputFacets` / `outputFacets`."""

    FACETS = 0, "facets"
    INPUT_FACETS = 1, "inputFacets"
    OUTPUT_FACETS = 2, "outputFacets"


class LinkSource(models.TextChoices):
    """Why a model version is linked to a run (besides ModelVersion.run_id, read by a join)."""

    LINK = "link"  # POST /api/v1/lineage/links, after registration
    OPENLINEAGE = "openlineage"  # an OpenLineage output in the `registry` namespace
