"""Reads for the registry, always permission-filtered for the asking user."""

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import NoReturn

from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.db.models.fields.json import KeyTransform

from accounts import access
from core.errors import InvalidInput
from core.rows import SelectedColumns, fetch_one
from registry.cli import tag_key_problem
from registry.models import (
    Alias,
    BlobHolding,
    ModelCardRevision,
    ModelVersion,
    RegisteredModel,
    VersionSignature,
)
from registry.storage import blob_store

METRIC_FILTER = re.compile(r"^(?P<name>[A-Za-z0-9_.\-/]{1,100})(?P<op>>=|<=|=|>|<)(?P<value>-?[0-9.eE+-]+)$")
_OPS = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt", "=": "exact"}


def models_visible(*, user) -> QuerySet[RegisteredModel]:
    return access.visible(user, RegisteredModel.objects.all()).order_by("id")


def blobs_held(*, user, shas) -> set[str]:
    """Of these sha256s, the ones a model the user may view holds (registry.models.BlobHolding)."""
    models = access.visible(user, RegisteredModel.objects.all())
    return set(BlobHolding.objects.filter(sha256__in=list(shas), model__in=models).values_list("sha256", flat=True))


# --- by path: /models/{namespace}/{name}/... ------------------------------------------------------
# Every request under a model path reads its model, version or alias this way: hand-written, because
# the ORM spent about 4M instructions building and compiling the joined version query and 0.4M
# running it (bench/README.md). Given the asking user, the same statement also reads every codename
# the user holds on the model (accounts.access.codenames_column), so the access check that follows
# (ModelScopedView) needs no query of its own.

_M = SelectedColumns(RegisteredModel, "m")
_V = SelectedColumns(ModelVersion, "v")
_A = SelectedColumns(Alias, "a")
_U = SelectedColumns(get_user_model(), "u")  # the version's creator, the alias's last editor
_AT_MODEL = f"{_M.column('namespace')} = %s AND {_M.column('name')} = %s"
_FROM = {  # what follows the selected columns: tables, joins, the path's conditions
    "model": f"FROM {_M.table} WHERE {_AT_MODEL}",
    "version": " ".join(
        [
            f"FROM {_V.table} JOIN {_M.table} ON {_M.column('pk')} = {_V.column('model')}",
            f"LEFT JOIN {_U.table} ON {_U.column('pk')} = {_V.column('created_by')}",
            f"WHERE {_AT_MODEL} AND {_V.column('number')} = %s",
        ]
    ),
    "alias": " ".join(
        [
            f"FROM {_A.table} JOIN {_M.table} ON {_M.column('pk')} = {_A.column('model')}",
            f"JOIN {_V.table} ON {_V.column('pk')} = {_A.column('version')}",
            f"LEFT JOIN {_U.table} ON {_U.column('pk')} = {_A.column('updated_by')}",
            f"WHERE {_AT_MODEL} AND {_A.column('name')} = %s",
        ]
    ),
}
_COLUMNS = {"model": [_M], "version": [_V, _M, _U], "alias": [_A, _V, _M, _U]}
_SELECT = {kind: "SELECT " + ", ".join(c.sql for c in columns) for kind, columns in _COLUMNS.items()}
_MODEL_PK = _M.column("pk")


def _at(kind: str, params: list, user) -> list | None:
    """The row's instances, in _COLUMNS order, with the user's codenames on the model remembered."""
    perms_sql, perms_params = access.codenames_column(user, RegisteredModel, _MODEL_PK) or ("NULL", [])
    row = fetch_one(f"{_SELECT[kind]}, {perms_sql} {_FROM[kind]}", [*perms_params, *params])  # noqa: S608 - from _meta
    if row is None:
        return None
    start, found = 0, []
    for selected in _COLUMNS[kind]:
        found.append(selected.instance(row, start))
        start += selected.width
    if row[-1] is not None:
        access.remember(user, found[_COLUMNS[kind].index(_M)], row[-1])
    return found


def model_at(namespace: str, name: str, *, user=None) -> RegisteredModel | None:
    found = _at("model", [namespace, name], user)
    return found[0] if found else None


def version_at(namespace: str, name: str, number: int, *, user=None) -> ModelVersion | None:
    """The version with its model and creator."""
    found = _at("version", [namespace, name, number], user)
    if found is None:
        return None
    version, version.model, version.created_by = found
    return version


def alias_at(namespace: str, name: str, alias: str, *, user=None) -> Alias | None:
    """The alias with its version, model and last editor."""
    found = _at("alias", [namespace, name, alias], user)
    if found is None:
        return None
    alias_, version, model, alias_.updated_by = found
    alias_.version, alias_.model, version.model = version, model, model
    return alias_


def versions(
    *,
    model: RegisteredModel,
    status: str | None = None,
    tags: list[str] | None = None,
    metrics: list[str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[ModelVersion]:
    """Versions of a model the caller already may view. tags: "key", "key=value" or "key:value" (_tag_filter);
    metrics: "name>=0.9" style thresholds (>=, <=, >, <, =)."""
    qs = ModelVersion.objects.filter(model=model).select_related("model", "created_by")
    if status:
        qs = qs.filter(status=status)
    # Keys go in as KeyTransform, never spliced into a lookup string: a tag or metric named "a__gt" is that key,
    # not key "a" with lookup "gt" (which gave wrong matches, or a 500 for a lookup jsonb lacks).
    for i, tag in enumerate(tags or []):
        key, value = _tag_filter(tag)
        if value is not None:
            qs = qs.alias(**{f"_tag{i}": KeyTransform(key, "tags")}).filter(**{f"_tag{i}": value})
        else:
            qs = qs.filter(tags__has_key=key)
    for i, expr in enumerate(metrics or []):
        name, op, number = _metric_threshold(expr)
        qs = qs.alias(**{f"_metric{i}": KeyTransform(name, "metrics")}).filter(**{f"_metric{i}__{op}": number})
    if created_after:
        qs = qs.filter(created_at__gte=created_after)
    if created_before:
        qs = qs.filter(created_at__lt=created_before)
    return qs


TAG_FORMS = (
    'key (has the tag), key=value (as registry-cli --tag writes it) or key:value; a key holding ":" or "=" or '
    'starting with \'"\' is written as a JSON string: "k8s:ns"=prod, "k8s:ns"'
)


def _tag_filter(text: str) -> tuple[str, str | None]:
    """A tag filter as (key, value), value None for "has the key"; InvalidInput naming the accepted forms for one
    that reads two ways or not at all. `key=value` splits at the first "=" (the CLI's --tag), `key:value` at the
    first ":" (the older form, kept); `a:b=c` is both (key a:b, or key a with value b=c), so it is refused."""
    if text.startswith('"'):  # a JSON string key, then nothing, or "=" or ":" and the value
        try:
            key, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            key, end = None, 0
        rest = text[end:]
        if key is None or (rest and rest[0] not in "=:"):
            _bad_tag(text, "has a quoted key that is not one JSON string followed by nothing, = or :")
        value = rest[1:] if rest else None
    else:
        equals, colon = text.find("="), text.find(":")
        key_a, _, value_a = text.partition(":")
        if equals >= 0 and 0 <= colon < equals and not tag_key_problem(key_a):
            key_b, _, value_b = text.partition("=")
            _bad_tag(
                text,
                f"reads two ways: write {key_a}={value_a} for key {key_a!r} with value {value_a!r}, or "
                f"{json.dumps(key_b, ensure_ascii=False)}={value_b} for key {key_b!r} with value {value_b!r}",
            )
        separator = "=" if equals >= 0 else ":" if colon >= 0 else None
        key, _, value = text.partition(separator) if separator else (text, None, None)
    problem = tag_key_problem(key)
    if problem:
        _bad_tag(text, f"names no key a tag can have ({problem})")
    return key, value


def _bad_tag(text: str, problem: str) -> NoReturn:
    raise InvalidInput(
        f"tag filter '{text[:200]}' {problem}. Accepted: {TAG_FORMS}.", detail={"tag": [f"Bad filter '{text[:200]}'."]}
    )


def _metric_threshold(expr: str) -> tuple[str, str, float]:
    """ "auc>=0.9" -> ("auc", "gte", 0.9), or InvalidInput naming the filter."""
    match = METRIC_FILTER.match(expr)
    try:
        number = float(match["value"]) if match else math.nan
    except ValueError:
        number = math.nan
    if match is None or math.isnan(number):
        problem = "is not of the form <name><op><number>, op one of >=, <=, >, <, ="
    elif math.isinf(number):  # 1e400: beyond a double, and jsonb holds no infinity
        problem = "has a number beyond a double's range (about 1.8e308)"
    else:
        return match["name"], _OPS[match["op"]], number
    raise InvalidInput(f"metric filter '{expr}' {problem}.", detail={"metric": [f"Bad filter '{expr}'."]})


def aliases(*, model: RegisteredModel) -> QuerySet[Alias]:
    return Alias.objects.filter(model=model).select_related("version", "updated_by").order_by("name")


def stored_file_problems(manifest: dict, *, look_up: list[str] | None = None) -> tuple[list[str], list[str]]:
    """For the registry's own storage: (files not stored, files stored with another size). `look_up`: the sha256s
    to ask the storage about (default: every file's); a file whose sha256 is not among them counts as not stored."""
    shas = sorted({f["sha256"] for f in manifest["files"]}) if look_up is None else look_up
    with ThreadPoolExecutor(max_workers=min(16, len(shas) or 1)) as pool:  # a HEAD each on S3: not one by one
        stored = dict(zip(shas, pool.map(blob_store().size, shas), strict=True))
    missing, wrong = [], []
    for f in manifest["files"]:
        size = stored.get(f["sha256"])
        if size is None:
            missing.append(f["path"])
        elif size != f["size"]:
            wrong.append(f"{f['path']} (declared {f['size']} bytes, stored {size})")
    return missing, wrong


def latest_card(version: ModelVersion) -> ModelCardRevision | None:
    return version.card_revisions.order_by("-revision").first()


def latest_signature(version: ModelVersion) -> VersionSignature | None:
    return version.signatures.order_by("-created_at", "-id").first()
