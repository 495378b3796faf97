"""The lineage page: a node's graph as a picture (server-rendered SVG), a node list and export links.

`/lineage/?nodeId=model:acme/churn:3` (or any other node id: dataset, job, run, release). The same
resolution and visibility as the API (`lineage.nodes.resolve`): a node the user may not view is a
404 page; the walk is the API's single statement, so the page's query count does not depend on the
size of the graph. The export links call the API with the browser's session.
"""

import contextlib

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from rest_framework.exceptions import ValidationError

from core.errors import InvalidInput, NotFound
from lineage import graph as graphs
from lineage import nodes as node_ids
from lineage import picture, selectors
from lineage.api import serializers as api_serializers

DEFAULT_PAGE_DEPTH = 20
MAX_PICTURE_NODES = 400  # beyond this (or picture.MAX_SEGMENTS) the page lists the nodes and offers the exports

EXPORTS = [
    ("openlineage", "OpenLineage (NDJSON)"),
    ("prov-json", "PROV-JSON"),
    ("csv", "CSV"),
]


def _error(request, status: int, message: str, **form):
    """The error page; with `form` (the options form's context) it offers that form again, as the user filled it."""
    return render(request, "lineage/error.html", {"message": message, **form}, status=status)


def _options_form(node_id: str, options: dict) -> dict:
    """What the options form (lineage/options_form.html) shows."""
    return {
        "node_id": node_id,
        "options": options,
        "directions": selectors.DIRECTIONS,
        "granularities": selectors.GRANULARITIES,
        "max_depth": graphs.MAX_DEPTH,
    }


def _options(request) -> tuple[dict, list[str]]:
    """The page's query (direction, depth, granularity, as_of), with defaults and the problems found."""
    problems = []
    direction = request.GET.get("direction", "both")
    if direction not in selectors.DIRECTIONS:
        problems.append(f"direction must be one of {', '.join(selectors.DIRECTIONS)}.")
    granularity = request.GET.get("granularity", "dataset")
    if granularity not in selectors.GRANULARITIES:
        problems.append(f"granularity must be one of {', '.join(selectors.GRANULARITIES)}.")
    raw_depth = request.GET.get("depth", str(DEFAULT_PAGE_DEPTH))
    # Bounded ASCII digits: int() refuses strings over 4,300 digits (a 500); those are a bad depth like any other.
    depth = int(raw_depth) if raw_depth.isascii() and raw_depth.isdecimal() and len(raw_depth) <= 9 else -1
    if not 0 <= depth <= graphs.MAX_DEPTH:
        problems.append(f"depth must be a whole number from 0 to {graphs.MAX_DEPTH}.")
    raw_as_of = request.GET.get("as_of", "").strip()
    as_of = None
    if raw_as_of:
        try:  # as the API reads it: the export links pass it on
            as_of = api_serializers.as_of(raw_as_of)
        except ValidationError as exc:
            problems.append(
                "as_of must be an RFC 3339 time with its offset (Z or ±HH:MM), within years 1-9999 in UTC, "
                "e.g. 2026-01-31T12:00:00Z: " + " ".join(exc.detail)
            )
    return {
        "direction": direction,
        "depth": depth,
        "depth_text": raw_depth,  # as typed: the form shows it again beside the problem
        "granularity": granularity,
        "as_of": as_of,
        "as_of_text": raw_as_of,
    }, problems


def page_url(node_id: str, **params) -> str:
    query = {"nodeId": node_id, **{k: v for k, v in params.items() if v not in (None, "")}}
    return reverse("ui-lineage") + "?" + urlencode(query)


def _href(granularity: str, as_of_text: str):
    def href(node: dict) -> str:
        if node.get("type") == "model":
            return reverse("ui-version", args=[node["namespace"], node["name"], node["number"]])
        if node.get("type") == "release":
            try:  # governance's target page, when that app provides one
                return reverse("ui-target", args=[node["target"]])
            except NoReverseMatch:
                pass
        return page_url(node["id"], granularity=granularity, as_of=as_of_text)

    return href


@login_required
def lineage_page(request):
    node_id = request.GET.get("nodeId", "").strip()
    if not node_id:
        return _error(request, 400, "Name a lineage node: ?nodeId=model:{namespace}/{name}:{number}, dataset:…, job:….")
    options, problems = _options(request)
    if problems:  # the form again, with what the user typed, to correct it there
        return _error(request, 400, " ".join(problems), **_options_form(node_id, options))
    as_of = options["as_of"]
    try:
        start = node_ids.resolve(node_id, request.user, as_of)
    except NotFound:
        return render(request, "ui/404.html", {"what": f"lineage node {node_id}"}, status=404)
    except InvalidInput as exc:
        return _error(request, 400, exc.message)

    result = graphs.walk(
        user=request.user, start=start, direction=options["direction"], depth=options["depth"], as_of=as_of
    )
    selectors.describe_extension_nodes(result, request.user, as_of)
    graph = selectors.present(result, granularity=options["granularity"])
    subject = next((n for n in graph["nodes"] if n["id"] == node_id), None)

    svg, layout = None, None
    if len(graph["nodes"]) <= MAX_PICTURE_NODES:
        # too many edges to draw legibly (or quickly): the list, as for too many nodes
        with contextlib.suppress(picture.TooBig):
            markup, layout = picture.svg(
                graph, href=_href(options["granularity"], options["as_of_text"]), start=node_id
            )
            svg = mark_safe(markup)  # noqa: S308 - built by lineage.picture, which escapes every text

    common = {"nodeId": node_id, **({"as_of": options["as_of_text"]} if options["as_of_text"] else {})}
    walk_params = {"direction": options["direction"], "depth": options["depth"]}
    exports = [
        (label, reverse("api-lineage-export") + "?" + urlencode({**common, "format": fmt, **walk_params}))
        for fmt, label in EXPORTS
    ]
    if start.type in ("model", "release"):
        exports += [
            (f"Trail ({label})", reverse("api-lineage-trail") + "?" + urlencode({**common, "format": fmt}))
            for fmt, label in (("json", "JSON"), ("html", "HTML, printable"))
        ]
    nodes_by_type: dict[str, list[dict]] = {}
    href = _href(options["granularity"], options["as_of_text"])
    for node in sorted(graph["nodes"], key=lambda n: (n["type"], n["id"])):
        nodes_by_type.setdefault(node["type"], []).append({"node": node, "href": href(node)})
    return render(
        request,
        "lineage/graph.html",
        {
            **_options_form(node_id, options),  # node_id, options and the options form's choices
            "start": start,
            "subject": subject,
            "subject_href": href(subject) if subject and subject.get("type") in ("model", "release") else None,
            "graph": graph,
            "svg": svg,
            "layout": layout,
            "too_big": svg is None,
            "max_nodes": MAX_PICTURE_NODES,
            "max_segments": picture.MAX_SEGMENTS,
            "exports": exports,
            "nodes_by_type": sorted(nodes_by_type.items()),
            "api_graph": reverse("api-lineage-graph")
            + "?"
            + urlencode({**common, **walk_params, "granularity": options["granularity"]}),
        },
    )
