"""Reads for the registry, always permission-filtered for the asking user."""

import re
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet

from accounts import access
from core.errors import InvalidInput
from core.rows import SelectedColumns, fetch_one
from registry.models import Alias, ModelCardRevision, ModelVersion, RegisteredModel, VersionSignature
from registry.storage import blob_store

METRIC_FILTER = re.compile(r"^(?P<name>[A-Za-z0-9_.\-/]{1,100})(?P<op>>=|<=|=|>|<)(?P<value>-?[0-9.eE+-]+)$")
_OPS = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt", "=": "exact"}


def models_visible(*, user) -> QuerySet[RegisteredModel]:
    return access.visible(user, RegisteredModel.objects.all()).order_by("id")


# --- by path: /models/{namespace}/{name}/... ------------------------------------------------------
# Every request under a model path reads its model, version or alias this way: hand-written, because
# the ORM spent about 4M instructions building and compiling the joined version query and 0.4M
# running it (bench/README.md). Callers check access on the model (registry.api.views.ModelScopedView).

_M = SelectedColumns(RegisteredModel, "m")
_V = SelectedColumns(ModelVersion, "v")
_A = SelectedColumns(Alias, "a")
_U = SelectedColumns(get_user_model(), "u")  # the version's creator, the alias's last editor
_AT_MODEL = f"{_M.column('namespace')} = %s AND {_M.column('name')} = %s"
_MODEL_AT = f"SELECT {_M.sql} FROM {_M.table} WHERE {_AT_MODEL}"  # noqa: S608 - names from _meta
_VERSION_AT = " ".join(
    [
        f"SELECT {_V.sql}, {_M.sql}, {_U.sql} FROM {_V.table}",  # noqa: S608 - names from _meta
        f"JOIN {_M.table} ON {_M.column('pk')} = {_V.column('model')}",
        f"LEFT JOIN {_U.table} ON {_U.column('pk')} = {_V.column('created_by')}",
        f"WHERE {_AT_MODEL} AND {_V.column('number')} = %s",
    ]
)
_ALIAS_AT = " ".join(
    [
        f"SELECT {_A.sql}, {_V.sql}, {_M.sql}, {_U.sql} FROM {_A.table}",  # noqa: S608 - names from _meta
        f"JOIN {_M.table} ON {_M.column('pk')} = {_A.column('model')}",
        f"JOIN {_V.table} ON {_V.column('pk')} = {_A.column('version')}",
        f"LEFT JOIN {_U.table} ON {_U.column('pk')} = {_A.column('updated_by')}",
        f"WHERE {_AT_MODEL} AND {_A.column('name')} = %s",
    ]
)


def model_at(namespace: str, name: str) -> RegisteredModel | None:
    row = fetch_one(_MODEL_AT, [namespace, name])
    return _M.instance(row) if row else None


def version_at(namespace: str, name: str, number: int) -> ModelVersion | None:
    """The version with its model and creator."""
    row = fetch_one(_VERSION_AT, [namespace, name, number])
    if row is None:
        return None
    version = _V.instance(row)
    version.model = _M.instance(row, _V.width)
    version.created_by = _U.instance(row, _V.width + _M.width)
    return version


def alias_at(namespace: str, name: str, alias: str) -> Alias | None:
    """The alias with its version, model and last editor."""
    row = fetch_one(_ALIAS_AT, [namespace, name, alias])
    if row is None:
        return None
    found = _A.instance(row)
    found.version = _V.instance(row, _A.width)
    found.model = found.version.model = _M.instance(row, _A.width + _V.width)
    found.updated_by = _U.instance(row, _A.width + _V.width + _M.width)
    return found


def versions(
    *,
    model: RegisteredModel,
    status: str | None = None,
    tags: list[str] | None = None,
    metrics: list[str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[ModelVersion]:
    """Versions of a model the caller already may view. tags: "key" or "key:value";
    metrics: "name>=0.9" style thresholds (>=, <=, >, <, =)."""
    qs = ModelVersion.objects.filter(model=model).select_related("model", "created_by")
    if status:
        qs = qs.filter(status=status)
    for tag in tags or []:
        key, sep, value = tag.partition(":")
        qs = qs.filter(tags__has_key=key) if not sep else qs.filter(Q(**{f"tags__{key}": value}))
    for expr in metrics or []:
        match = METRIC_FILTER.match(expr)
        try:
            number = float(match["value"]) if match else None
        except ValueError:
            number = None
        if match is None or number is None:
            raise InvalidInput(
                f"metric filter '{expr}' is not of the form <name><op><number>, op one of >=, <=, >, <, =.",
                detail={"metric": [f"Bad filter '{expr}'."]},
            )
        qs = qs.filter(**{f"metrics__{match['name']}__{_OPS[match['op']]}": number})
    if created_after:
        qs = qs.filter(created_at__gte=created_after)
    if created_before:
        qs = qs.filter(created_at__lt=created_before)
    return qs


def aliases(*, model: RegisteredModel) -> QuerySet[Alias]:
    return Alias.objects.filter(model=model).select_related("version", "updated_by").order_by("name")


def stored_file_problems(manifest: dict) -> tuple[list[str], list[str]]:
    """For the registry's own storage: (files not stored, files stored with another size)."""
    store = blob_store()
    missing, wrong = [], []
    for f in manifest["files"]:
        size = store.size(f["sha256"])
        if size is None:
            missing.append(f["path"])
        elif size != f["size"]:
            wrong.append(f"{f['path']} (declared {f['size']} bytes, stored {size})")
    return missing, wrong


def latest_card(version: ModelVersion) -> ModelCardRevision | None:
    return version.card_revisions.order_by("-revision").first()


def latest_signature(version: ModelVersion) -> VersionSignature | None:
    return version.signatures.order_by("-created_at", "-id").first()
