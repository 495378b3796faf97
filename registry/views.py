"""Server-rendered pages for models (reviewers and owners).

Where a version serves and its promotion history are governance facts; these pages read them through
`governance.ui_selectors`, imported inside the views: the page composes both apps, while the registry's
models, services and selectors never depend on governance.
"""

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render
from django.utils.http import urlencode

from core import unicode
from core.keyset import keyset_page
from registry import cards, selectors, ui_selectors

HOME_PAGE_SIZE = 50
PAGE_SIZE = 25


def _not_found(request, what: str):
    return render(request, "ui/404.html", {"what": what}, status=404)


def _page(request, items, param: str = "page"):
    return Paginator(items, PAGE_SIZE).get_page(request.GET.get(param))


@login_required
def home(request):
    """The models the user may view, by namespace and name, paged by position; `q` keeps those whose
    namespace/name holds it."""
    visible = selectors.models_visible(user=request.user)
    wanted = request.GET.get("q", "").strip()[:200]
    models = ui_selectors.models_named(models=visible, text=wanted)
    page = keyset_page(models, request.GET, positions=visible, order=("namespace", "name"), size=HOME_PAGE_SIZE)
    return render(request, "home.html", {"page": page, "q": unicode.printable(wanted)})


@login_required
def model_detail(request, namespace: str, name: str):
    from governance import ui_selectors as governance_ui

    model = ui_selectors.model_for(user=request.user, namespace=namespace, name=name)
    if model is None:
        return _not_found(request, f"model {namespace}/{name}")
    # By position (core/keyset.py): a model with 100,000 versions pages as fast at its last page as at its first.
    page = keyset_page(
        ui_selectors.version_list(model=model),
        request.GET,
        positions=selectors.versions(model=model),
        order=("-number",),
    )
    versions = page.object_list
    serving = governance_ui.serving_by_version(user=request.user, versions=versions)
    return render(
        request,
        "registry/model_detail.html",
        {
            "model": model,
            "page": page,
            "rows": [
                {
                    "version": v,
                    "serving": serving.get(v.pk, []),
                    "metrics": [(k, ui_selectors.metric_text(val)) for k, val in sorted(v.metrics.items())[:3]],
                }
                for v in versions
            ],
            "aliases": selectors.aliases(model=model),
        },
    )


@login_required
def version_detail(request, namespace: str, name: str, number: int):
    from governance import ui_selectors as governance_ui

    model = ui_selectors.model_for(user=request.user, namespace=namespace, name=name)
    version = ui_selectors.version_for(model=model, number=number) if model else None
    if version is None:
        return _not_found(request, f"version {number} of {namespace}/{name}")
    revisions = list(ui_selectors.card_revisions(version=version).only("revision", "created_at", "created_by"))
    card = None
    wanted = request.GET.get("revision")
    if revisions:
        known = {r.revision for r in revisions}
        # Bounded: int() refuses strings over 4,300 digits (a 500); any value not a known revision shows the latest.
        number = int(wanted) if wanted and wanted.isascii() and wanted.isdecimal() and len(wanted) <= 9 else None
        shown = number if number in known else revisions[0].revision
        card = version.card_revisions.select_related("created_by").get(revision=shown)
    sections, report = [], None
    if card is not None:
        sections = ui_selectors.card_sections(card.content)
        report = cards.completeness(card.content)
    signature = selectors.latest_signature(version)
    promotions = _page(request, governance_ui.version_promotions(user=request.user, version=version), "promotions_page")
    files = _page(request, version.manifest.get("files", []), "files_page")
    metrics = [
        {"name": k, "value": ui_selectors.metric_text(v), "source": version.metric_sources.get(k, {})}
        for k, v in sorted(version.metrics.items())
    ]
    return render(
        request,
        "registry/version_detail.html",
        {
            "model": model,
            "version": version,
            "metrics": metrics,
            "revisions": revisions,
            "card": card,
            "sections": sections,
            "report": report,
            "aliases": version.aliases.order_by("name"),
            "signature": signature,
            "serving": governance_ui.serving_by_version(user=request.user, versions=[version]).get(version.pk, []),
            "promotions": promotions,
            "files": files,
            "trail_url": "/api/v1/lineage/trail?"
            + urlencode({"nodeId": f"model:{model}:{version.number}", "format": "html"}),
        },
    )
