"""Reads for the registry, always permission-filtered for the asking user."""

import re
from datetime import datetime

from django.db.models import Q, QuerySet

from accounts import access
from core.errors import InvalidInput
from registry.models import Alias, ModelCardRevision, ModelVersion, RegisteredModel, VersionSignature
from registry.storage import blob_store

METRIC_FILTER = re.compile(r"^(?P<name>[A-Za-z0-9_.\-/]{1,100})(?P<op>>=|<=|=|>|<)(?P<value>-?[0-9.eE+-]+)$")
_OPS = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt", "=": "exact"}


def models_visible(*, user) -> QuerySet[RegisteredModel]:
    return access.visible(user, RegisteredModel.objects.all()).order_by("id")


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
