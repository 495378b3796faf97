"""Node ids as clients write them, and the handlers that resolve them to (type, id) pairs.

Ids follow Marquez: `dataset:{namespace}:{name}`, `job:{namespace}:{name}`, `run:{uuid}` and
`dataset:{namespace}:{name}#{version}` for a dataset version; plus `model:{namespace}/{name}:{number}`
for a model version and `release:{target}:{number}` (governance registers that handler).

Namespaces often contain colons (`postgres://db:5432`), so a dataset or job id is resolved against
the database: every split of the text at a colon is a candidate (namespace, name) and the one that
exists wins (the longest namespace first, as Marquez's parser prefers not to split `scheme://` or
`host:port`).
"""

# ruff: noqa: S608 - start-node SQL is assembled from constants; values are bound parameters

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q

from core.errors import InvalidInput, NotFound
from lineage.choices import NodeType

MODEL_ID = re.compile(r"^(?P<namespace>[^/:]+)/(?P<name>[^/:]+):(?P<number>[0-9]{1,10})$")
# OpenLineage datasets in this namespace name model versions: "{namespace}/{name}:{number}".
MODEL_DATASET_NAMESPACE = "registry"


@dataclass(frozen=True)
class Start:
    """Where a walk starts: the node the client named, and the walkable nodes it stands for.

    A dataset stands for its versions (and itself, for JobEvent declared lineage), a job for its
    runs (and itself); other nodes stand for themselves.
    """

    node_id: str
    type: str
    pk: int
    sql: str  # SELECT <type> AS t, <id> AS id ...: the walkable start nodes (named params only)
    params: dict = field(default_factory=dict)


def dataset_id(namespace: str, name: str, version: str | None = None) -> str:
    base = f"dataset:{namespace}:{name}"
    return base if version is None else f"{base}#{version}"


def job_id(namespace: str, name: str) -> str:
    return f"job:{namespace}:{name}"


def run_id(run_uuid) -> str:
    return f"run:{run_uuid}"


def model_id(namespace: str, name: str, number: int) -> str:
    return f"model:{namespace}/{name}:{number}"


def _asof(column: str, as_of: datetime | None) -> str:
    return f" AND {column} <= %(as_of)s" if as_of is not None else ""


def _splits(text: str) -> list[tuple[str, str]]:
    """(namespace, name) candidates of "ns:name", longest namespace first."""
    positions = [i for i, ch in enumerate(text) if ch == ":"]
    return [(text[:i], text[i + 1 :]) for i in reversed(positions) if i > 0 and i < len(text) - 1]


def _named(model, text: str, as_of: datetime | None):
    candidates = _splits(text)
    if not candidates:
        return None
    query = Q()
    for namespace, name in candidates:
        query |= Q(namespace=namespace, name=name)
    found = {(o.namespace, o.name): o for o in model.objects.filter(query)}
    for candidate in candidates:
        obj = found.get(candidate)
        if obj is not None and (as_of is None or obj.recorded_at <= as_of):
            return obj
    return None


def _existed(obj, as_of: datetime | None, node_id: str):
    if obj is None or (as_of is not None and obj.recorded_at > as_of):
        suffix = f" as of {as_of.isoformat()}" if as_of else ""
        raise NotFound(f"No lineage node '{node_id}'{suffix}.", code="node_not_found")
    return obj


def _resolve_dataset(node_id: str, rest: str, user, as_of) -> Start:
    from lineage.models import Dataset, DatasetVersion

    dataset = _named(Dataset, rest, as_of)
    if dataset is not None:
        return Start(
            node_id,
            "dataset",
            dataset.pk,
            f"SELECT {NodeType.DATASET_VERSION:d} AS t, v.id AS id FROM lineage_datasetversion v"
            f" WHERE v.dataset_id = %(start_pk)s{_asof('v.recorded_at', as_of)}"
            f" UNION ALL SELECT {NodeType.DATASET:d} AS t, %(start_pk)s AS id",
            {"start_pk": dataset.pk},
        )
    # dataset:{namespace}:{name}#{version}: the version may itself contain '#' or ':'
    for at in [i for i, ch in enumerate(rest) if ch == "#"]:
        dataset = _named(Dataset, rest[:at], as_of)
        if dataset is None:
            continue
        version = DatasetVersion.objects.filter(dataset=dataset, version=rest[at + 1 :]).first()
        version = _existed(version, as_of, node_id)
        return Start(
            node_id,
            "datasetVersion",
            version.pk,
            f"SELECT {NodeType.DATASET_VERSION:d} AS t, %(start_pk)s AS id",
            {"start_pk": version.pk},
        )
    return _existed(None, as_of, node_id)


def _resolve_job(node_id: str, rest: str, user, as_of) -> Start:
    from lineage.models import Job

    job = _existed(_named(Job, rest, as_of), as_of, node_id)
    return Start(
        node_id,
        "job",
        job.pk,
        f"SELECT {NodeType.RUN:d} AS t, r.id AS id FROM lineage_run r WHERE r.job_id = %(start_pk)s"
        f"{_asof('r.recorded_at', as_of)} UNION ALL SELECT {NodeType.JOB:d} AS t, %(start_pk)s AS id",
        {"start_pk": job.pk},
    )


def _resolve_run(node_id: str, rest: str, user, as_of) -> Start:
    from lineage.models import Run

    try:
        run_uuid = uuid.UUID(rest)
    except ValueError:
        raise InvalidInput(f"nodeId '{node_id}': a run id is run:<uuid>.", detail={"nodeId": ["Bad run id."]}) from None
    run = _existed(Run.objects.filter(run_uuid=run_uuid).first(), as_of, node_id)
    return Start(node_id, "run", run.pk, f"SELECT {NodeType.RUN:d} AS t, %(start_pk)s AS id", {"start_pk": run.pk})


def resolve_model_version(text: str, user, *, as_of=None, node_id: str | None = None):
    """'{namespace}/{name}:{number}' -> a ModelVersion the user may view (404 otherwise, hiding it)."""
    from accounts import access
    from registry.models import ModelVersion

    node_id = node_id or f"model:{text}"
    match = MODEL_ID.match(text)
    if match is None:
        raise InvalidInput(
            f"'{node_id}' is not model:{{namespace}}/{{name}}:{{number}}.", detail={"nodeId": ["Bad model id."]}
        )
    version = (
        ModelVersion.objects.select_related("model")
        .filter(model__namespace=match["namespace"], model__name=match["name"], number=int(match["number"]))
        .first()
    )
    if version is None or not access.has_perm(user, access.view_codename(version.model), version.model):
        raise NotFound(f"No lineage node '{node_id}'.", code="node_not_found")
    if as_of is not None and version.created_at > as_of:
        raise NotFound(f"No lineage node '{node_id}' as of {as_of.isoformat()}.", code="node_not_found")
    return version


def _resolve_model(node_id: str, rest: str, user, as_of) -> Start:
    version = resolve_model_version(rest, user, as_of=as_of, node_id=node_id)
    return Start(
        node_id, "model", version.pk, f"SELECT {NodeType.MODEL:d} AS t, %(start_pk)s AS id", {"start_pk": version.pk}
    )


@dataclass(frozen=True)
class NodeTypeHandler:
    """How another app makes its objects lineage nodes (governance: releases).

    resolve(node_id, rest, user, as_of) -> Start (raise NotFound when missing or hidden);
    describe(ids, user, as_of) -> {id: node dict with at least "id" and "type"} for ids of this type;
    visible_sql(user) -> None when every node of the type is visible to the user, else
    (sql, params) selecting the ids the user may see (used inside the traversal query).
    """

    type: NodeType
    prefix: str
    resolve: Callable[..., Start]
    describe: Callable[..., dict] | None = None
    visible_sql: Callable[..., tuple[str, list] | None] | None = None


_HANDLERS: dict[str, NodeTypeHandler] = {}


def register_node_type(handler: NodeTypeHandler) -> None:
    """Called from another app's AppConfig.ready() (lineage never imports that app)."""
    _HANDLERS[handler.prefix] = handler


def handler_for(node_type: int) -> NodeTypeHandler | None:
    return next((h for h in _HANDLERS.values() if h.type == node_type), None)


BUILTIN = {
    "dataset": _resolve_dataset,
    "job": _resolve_job,
    "run": _resolve_run,
    "model": _resolve_model,
}


def resolve(node_id: str, user, as_of: datetime | None = None) -> Start:
    """Parse and resolve a node id; 400 for a malformed id, 404 for one that does not exist (or is hidden)."""
    prefix, sep, rest = (node_id or "").partition(":")
    if not sep or not rest:
        raise InvalidInput(
            f"nodeId '{node_id}' is not a lineage node id: use dataset:{{namespace}}:{{name}}[#{{version}}], "
            "job:{namespace}:{name}, run:{uuid}, model:{namespace}/{name}:{number} or release:{target}:{number}.",
            detail={"nodeId": ["Unknown node id format."]},
        )
    if prefix in BUILTIN:
        return BUILTIN[prefix](node_id, rest, user, as_of)
    handler = _HANDLERS.get(prefix)
    if handler is not None:
        return handler.resolve(node_id, rest, user, as_of)
    if prefix == "release":
        raise InvalidInput(
            f"nodeId '{node_id}': release nodes are provided by the governance app, which has not registered them.",
            code="unsupported_node",
            detail={"nodeId": ["Release nodes are not available."]},
        )
    raise InvalidInput(
        f"nodeId '{node_id}': unknown node type '{prefix}' (dataset, job, run, model, release).",
        detail={"nodeId": ["Unknown node type."]},
    )
