"""Reads for the registry's server-rendered pages, permission-filtered like the API."""

import yaml
from django.db.models import Count, OuterRef, Prefetch, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Concat

from core import unicode
from registry import cards, selectors
from registry.models import Alias, ModelCardRevision, ModelVersion, RegisteredModel


def models_named(*, models: QuerySet[RegisteredModel], text: str) -> QuerySet[RegisteredModel]:
    """Of `models`, those whose "namespace/name" holds `text` (any case); all of them for no text."""
    if not text:
        return models
    if unicode.unstorable(text):  # no name holds a NUL or a lone surrogate (nor can PostgreSQL compare with one)
        return models.none()
    return models.annotate(full_name=Concat("namespace", Value("/"), "name")).filter(full_name__icontains=text)


def model_for(*, user, namespace: str, name: str) -> RegisteredModel | None:
    """The model if the user may view it, else None (the page answers 404 either way)."""
    return selectors.models_visible(user=user).filter(namespace=namespace, name=name).first()


def version_list(*, model: RegisteredModel) -> QuerySet[ModelVersion]:
    """Versions newest first, each with its aliases and number of card revisions, in a fixed number of queries.

    The revisions are counted by a subquery per row shown, not by a join and GROUP BY: grouping aggregated every
    version of the model before the page's LIMIT (a 100,000-version model's page took 200 ms in that one query)."""
    revisions = (
        ModelCardRevision.objects.filter(version=OuterRef("pk")).order_by().values("version").annotate(n=Count("pk"))
    )
    return (
        selectors.versions(model=model)
        .annotate(card_count=Coalesce(Subquery(revisions.values("n")), 0))
        .prefetch_related(Prefetch("aliases", queryset=Alias.objects.order_by("name")))
        .order_by("-number")
    )


def version_for(*, model: RegisteredModel, number: int) -> ModelVersion | None:
    return selectors.versions(model=model).filter(number=number).first()


def card_revisions(*, version: ModelVersion):
    return version.card_revisions.select_related("created_by").order_by("-revision")


def metric_text(value) -> str:
    """A metric value for display: numbers in short form, anything else as given, absent as ''."""
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.6g}"
    return str(value)


def _yaml(value) -> str:
    return yaml.safe_dump(value, sort_keys=True, allow_unicode=True, default_flow_style=False).rstrip()


def card_sections(content: dict | None) -> list[tuple[str, str, str]]:
    """A card as (key, heading, text) in reading order; structured parts as YAML text."""
    if not content:
        return []
    out = []
    if content.get("title"):
        out.append(("title", "Title", content["title"]))
    if content.get("summary"):
        out.append(("summary", "Summary", content["summary"]))
    for key in cards.MITCHELL_SECTIONS:
        if key in content:
            out.append((key, cards.HEADINGS[key], content[key]))
    for key, heading in ((cards.GOVERNANCE, "Governance"), ("metadata", "Metadata")):
        if content.get(key):
            out.append((key, heading, _yaml(content[key])))
    for section in content.get("other_sections", []):
        out.append((f"other:{section['title']}", section["title"], section["text"]))
    return out
