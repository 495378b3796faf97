"""Node ids as clients write them, and the handlers that resolve them to (type, id) pairs.

Ids follow Marquez: `dataset:{namespace}:{name}`, `job:{namespace}:{name}`, `run:{uuid}` and
`dataset:{namespace}:{name}#{version}` for a dataset version; plus `model:{namespace}/{name}:{number}`
for a model version and `release:{target}:{number}` (governance registers that handler).

Namespaces often contain colons (`postgres://db:5432`), names seldom do. So the ids written here escape
'%', ':' and '#' in names ('#' only in dataset names) and '%' and '#' in dataset namespaces: an id splits one
way only (the last ':' before the first '#' ends the namespace) and two datasets never share one, while the
ids of names without those characters are what they always were. Resolving reads an id that way first;
when that names no node, the ids written before escaping still resolve as they did, against the database:
every split of the text at a colon is a candidate (namespace, name) and the one that exists wins (the
longest namespace first, as Marquez's parser prefers not to split `scheme://` or `host:port`).
Candidates the fields cannot hold are skipped, and an id with more candidates than MAX_CANDIDATES is
refused: real ids have a few colons, and every candidate costs a condition in the lookup.
"""

# ruff: noqa: S608 - start-node SQL is assembled from constants; values are bound parameters

import re
import uuid
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q

from core.errors import InvalidInput, NotFound
from core.unicode import control, control_message, printable, unstorable
from lineage.choices import NodeType

MODEL_ID = re.compile(r"^(?P<namespace>[^/:]+)/(?P<name>[^/:]+):(?P<number>[0-9]{1,10})$")
# OpenLineage datasets in this namespace name model versions: "{namespace}/{name}:{number}".
MODEL_DATASET_NAMESPACE = "registry"
MAX_NODE_ID = 3000  # characters, for every node id (API and page)
MAX_CANDIDATES = 100  # (namespace, name[, version]) readings of one dataset or job id


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


# Characters percent-encoded in (namespace, name) of an id: without a raw ':' in names and a raw '#' in either
# part, an id splits one way only. Namespaces keep their colons (`s3://lake`), so normal ids do not change.
_ESCAPES = {"%": "%25", ":": "%3A", "#": "%23"}
DATASET_ESCAPED = ("%#", "%:#")
JOB_ESCAPED = ("", "%:")  # a job id has no version: '#' needs no escaping


def _escape(text: str, chars: str) -> str:
    return "".join(_ESCAPES[ch] if ch in chars else ch for ch in text)


def _unescape(text: str, chars: str) -> str | None:
    """The text that _escape(text, chars) wrote, or None when no text escapes to `text` (a raw ':', '%3a')."""
    if not chars:
        return text
    codes = "|".join(_ESCAPES[ch][1:] for ch in chars)
    plain = re.sub(f"%({codes})", lambda m: chr(int(m[1], 16)), text)
    return plain if _escape(plain, chars) == text else None


def dataset_id(namespace: str, name: str, version: str | None = None) -> str:
    ns_chars, name_chars = DATASET_ESCAPED
    base = f"dataset:{_escape(namespace, ns_chars)}:{_escape(name, name_chars)}"
    return base if version is None else f"{base}#{version}"


def job_id(namespace: str, name: str) -> str:
    return f"job:{namespace}:{_escape(name, JOB_ESCAPED[1])}"  # the last ':' ends the namespace


def run_id(run_uuid) -> str:
    return f"run:{run_uuid}"


def model_id(namespace: str, name: str, number: int) -> str:
    return f"model:{namespace}/{name}:{number}"


def _asof(column: str, as_of: datetime | None) -> str:
    return f" AND {column} <= %(as_of)s" if as_of is not None else ""


def _bad_id(node_id: str, message: str, reason: str):
    shown = printable(node_id if len(node_id) <= 200 else node_id[:200] + "…")
    raise InvalidInput(f"nodeId '{shown}': {message}", detail={"nodeId": [reason]})


def _limits(model) -> tuple[int, int]:
    return model._meta.get_field("namespace").max_length, model._meta.get_field("name").max_length


def _candidates(node_id: str, rest: str, model, *, versions: bool) -> list[tuple[str, str, str | None]]:
    """(namespace, name, version) readings of `rest` in the order they are preferred: "ns:name" split at a
    colon, the longest namespace first; then, with `versions`, "ns:name#version" split at each '#' from the
    left (the version may itself hold '#' or ':'). Splits whose namespace or name the fields cannot hold are
    skipped (nothing can match them); more than MAX_CANDIDATES is a 400."""
    namespace_max, name_max = _limits(model)
    colons = [i for i, ch in enumerate(rest) if ch == ":"]
    ends = [len(rest)] + ([at for at, ch in enumerate(rest) if ch == "#"] if versions else [])
    found = []
    for end in ends:
        # a colon at i splits rest[:end] into namespace rest[:i] and name rest[i + 1 : end], both non-empty
        low, high = max(1, end - 1 - name_max), min(end - 2, namespace_max)
        for i in reversed(colons[bisect_left(colons, low) : bisect_left(colons, high + 1)]):
            found.append((rest[:i], rest[i + 1 : end], rest[end + 1 :] if end < len(rest) else None))
            if len(found) > MAX_CANDIDATES:
                _bad_id(
                    node_id,
                    f"it can be read as more than {MAX_CANDIDATES} (namespace, name) pairs; no real id has that "
                    "many ':' and '#' in it.",
                    "Too many ':' and '#' to resolve.",
                )
    return found


def _canonical(rest: str, model, escaped: tuple[str, str], *, versions: bool) -> tuple[str, str, str | None] | None:
    """The (namespace, name, version) that dataset_id/job_id wrote as `rest`, or None when they wrote no such id
    (or one the fields cannot hold): the first '#' starts the version, the last ':' before it ends the namespace."""
    base, sep, version = rest.partition("#") if versions else (rest, "", "")
    namespace, colon, name = base.rpartition(":")
    namespace, name = _unescape(namespace, escaped[0]), _unescape(name, escaped[1])
    namespace_max, name_max = _limits(model)
    if not (colon and namespace and name) or len(namespace) > namespace_max or len(name) > name_max:
        return None
    return namespace, name, version if sep else None


def _existing(model, readings: list[tuple[str, str, str | None]]) -> dict:
    """{(namespace, name): object} for the readings that exist, whenever they began; one query for all of them."""
    if not readings:
        return {}
    query = Q()
    for namespace, name, _ in readings:
        query |= Q(namespace=namespace, name=name)
    return {(o.namespace, o.name): o for o in model.objects.filter(query)}


def _as_of(existing: dict, as_of: datetime | None) -> dict:
    """`existing` without the objects recorded after `as_of`."""
    return {k: o for k, o in existing.items() if as_of is None or o.recorded_at <= as_of}


def _first(readings: list[tuple[str, str, str | None]], existing: dict):
    """The first reading that exists, with its version text."""
    for namespace, name, version in readings:
        obj = existing.get((namespace, name))
        if obj is not None:
            return obj, version
    return None, None


def _existed(obj, as_of: datetime | None, node_id: str):
    if obj is None or (as_of is not None and obj.recorded_at > as_of):
        suffix = f" as of {as_of.isoformat()}" if as_of else ""
        raise NotFound(f"No lineage node '{node_id}'{suffix}.", code="node_not_found")
    return obj


def _longest(node_id: str, rest: str, longest: int, form: str) -> None:
    if len(rest) - 2 * rest.count("%") > longest:  # an escape ("%3A") stands for one character
        _bad_id(
            node_id,
            f"{form} is at most {longest} characters after its prefix, not {len(rest)}.",
            "Longer than any id of its type.",
        )


def _resolve_dataset(node_id: str, rest: str, user, as_of) -> Start:
    from lineage.models import Dataset, DatasetVersion

    field = Dataset._meta.get_field
    longest = field("namespace").max_length + 1 + field("name").max_length
    longest += 1 + DatasetVersion._meta.get_field("version").max_length
    _longest(node_id, rest, longest, "dataset:{namespace}:{name}[#{version}]")
    canonical = _canonical(rest, Dataset, DATASET_ESCAPED, versions=True)
    readings = _candidates(node_id, rest, Dataset, versions=True)
    existing = _existing(Dataset, ([canonical] if canonical else []) + readings)
    # the id as dataset_id writes it, when it names a node (one that did not exist yet as of is no other node's
    # id then); else an id written before escaping, as it was read
    named = existing.get(canonical[:2]) if canonical else None
    if named is not None and (start := _dataset_start(node_id, _existed(named, as_of, node_id), canonical[2], as_of)):
        return start
    dataset, version_text = _first(readings, _as_of(existing, as_of))
    return _dataset_start(node_id, dataset, version_text, as_of) or _existed(None, as_of, node_id)


def _dataset_start(node_id: str, dataset, version_text: str | None, as_of) -> Start | None:
    """The dataset, or its version named `version_text`; None when that version does not exist (as of)."""
    from lineage.models import DatasetVersion

    if dataset is None:
        return None
    if version_text is None:
        return Start(
            node_id,
            "dataset",
            dataset.pk,
            f"SELECT {NodeType.DATASET_VERSION:d} AS t, v.id AS id FROM lineage_datasetversion v"
            f" WHERE v.dataset_id = %(start_pk)s{_asof('v.recorded_at', as_of)}"
            f" UNION ALL SELECT {NodeType.DATASET:d} AS t, %(start_pk)s AS id",
            {"start_pk": dataset.pk},
        )
    version = DatasetVersion.objects.filter(dataset=dataset, version=version_text).first()
    if version is None or (as_of is not None and version.recorded_at > as_of):
        return None
    return Start(
        node_id,
        "datasetVersion",
        version.pk,
        f"SELECT {NodeType.DATASET_VERSION:d} AS t, %(start_pk)s AS id",
        {"start_pk": version.pk},
    )


def _resolve_job(node_id: str, rest: str, user, as_of) -> Start:
    from lineage.models import Job

    longest = Job._meta.get_field("namespace").max_length + 1 + Job._meta.get_field("name").max_length
    _longest(node_id, rest, longest, "job:{namespace}:{name}")
    canonical = _canonical(rest, Job, JOB_ESCAPED, versions=False)
    readings = ([canonical] if canonical else []) + _candidates(node_id, rest, Job, versions=False)
    existing = _existing(Job, readings)
    named = existing.get(canonical[:2]) if canonical else None  # as for datasets: this id's node, whenever it began
    job = named if named is not None else _first(readings, _as_of(existing, as_of))[0]
    job = _existed(job, as_of, node_id)
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
    node_id = node_id or ""
    if len(node_id) > MAX_NODE_ID:
        _bad_id(node_id, f"a node id is at most {MAX_NODE_ID} characters, not {len(node_id)}.", "Too long.")
    char = unstorable(node_id)
    if char is not None:  # no stored name holds one, and PostgreSQL refuses a NUL in a query (a 500)
        _bad_id(node_id, f"it holds \\u{ord(char):04x}, which no node id contains: remove it.", "Bad character.")
    if found := control(node_id):  # the ingest refuses them in every name and version (lineage.openlineage)
        _bad_id(node_id, control_message(found[1], found[0]), "Bad character.")
    prefix, sep, rest = node_id.partition(":")
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
