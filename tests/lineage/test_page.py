"""The lineage page: the graph picture (server-rendered SVG), links, exports, access, query count."""

import re
import uuid
from datetime import timedelta
from xml.etree import ElementTree

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from lineage import picture
from tests.lineage.conftest import ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

PAGE = "/lineage/"
SVG_NS = "{http://www.w3.org/2000/svg}"


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def svg_of(html: str) -> ElementTree.Element:
    match = re.search(r"<svg .*?</svg>", html, re.S)
    assert match, "no picture on the page"
    return ElementTree.fromstring(match.group(0))  # noqa: S314 - our own markup


def boxes(svg: ElementTree.Element) -> dict[str, dict]:
    """node id -> {"href", "x", "y", "w", "h", "texts"} for every node box in the picture."""
    found = {}
    for g in svg.iter(f"{SVG_NS}g"):
        node_id = g.get("data-node-id")
        if node_id is None:
            continue
        link = g.find(f"{SVG_NS}a")
        rect = g.find(f".//{SVG_NS}rect")
        found[node_id] = {
            "href": link.get("href") if link is not None else None,
            "x": float(rect.get("x")),
            "y": float(rect.get("y")),
            "w": float(rect.get("width")),
            "h": float(rect.get("height")),
            "texts": [t.text for t in g.iter(f"{SVG_NS}text")],
        }
    return found


def test_version_page_draws_the_graph_with_links_and_exports(personas, scenario):
    client = login(personas["owner"].user)
    response = client.get(PAGE, {"nodeId": "model:acme/churn:1"})
    assert response.status_code == 200
    html = response.content.decode()
    found = boxes(svg_of(html))
    assert set(found) == {
        "dataset:s3://lake:raw/events",
        "dataset:s3://lake:features",
        "dataset:s3://lake:eval/report",
        "job:etl:ingest",
        "job:pipelines:featurize",
        "job:pipelines:train",
        "job:pipelines:evaluate",
        "model:acme/churn:1",
        "model:acme/base:1",
    }
    # upstream on the left, downstream on the right, along the whole chain
    chain = [
        "job:etl:ingest",
        "dataset:s3://lake:raw/events",
        "job:pipelines:featurize",
        "dataset:s3://lake:features",
        "job:pipelines:train",
        "model:acme/churn:1",
        "job:pipelines:evaluate",
        "dataset:s3://lake:eval/report",
    ]
    xs = [found[n]["x"] for n in chain]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    # every node links to its page: model versions to the version page, the rest to their lineage page
    assert found["model:acme/churn:1"]["href"] == "/models/acme/churn/versions/1/"
    assert found["model:acme/base:1"]["href"] == "/models/acme/base/versions/1/"
    assert found["dataset:s3://lake:features"]["href"] == (
        "/lineage/?nodeId=dataset%3As3%3A%2F%2Flake%3Afeatures&granularity=dataset"
    )
    assert found["model:acme/churn:1"]["texts"] == ["model version", "acme/churn v1", "registered"]
    assert found["job:pipelines:train"]["texts"] == ["job", "train", "pipelines · 1 run"]
    # export buttons hit the API with the session, and each answers
    exports = dict(re.findall(r'<li><a href="([^"]+)"[^>]*>([^<]+)</a></li>', html))
    by_label = {label: url.replace("&amp;", "&") for url, label in exports.items()}
    assert set(by_label) == {
        "OpenLineage (NDJSON)",
        "PROV-JSON",
        "CSV",
        "Trail (JSON)",
        "Trail (HTML, printable)",
    }
    assert (
        by_label["CSV"] == "/api/v1/lineage/export?nodeId=model%3Aacme%2Fchurn%3A1&format=csv&direction=both&depth=20"
    )
    for label, url in by_label.items():
        answer = client.get(url)
        assert answer.status_code == 200, (label, answer.content[:300])
        body = b"".join(answer.streaming_content) if answer.streaming else answer.content
        assert b"acme/churn" in body, label


def test_version_granularity_and_direction(personas, scenario):
    client = login(personas["owner"].user)
    html = client.get(
        PAGE, {"nodeId": "model:acme/churn:1", "granularity": "version", "direction": "upstream"}
    ).content.decode()
    found = boxes(svg_of(html))
    run_c = f"run:{scenario['runs']['C']}"
    assert run_c in found and "job:pipelines:evaluate" not in found
    assert found[run_c]["texts"] == ["run", "train", f"run {str(scenario['runs']['C'])[:8]} · COMPLETE"]
    assert found[run_c]["href"] == f"/lineage/?nodeId=run%3A{scenario['runs']['C']}&granularity=version"
    assert 'value="upstream" selected' in html


def test_page_access_and_bad_input(personas, scenario, client):
    assert client.get(PAGE, {"nodeId": "model:acme/churn:1"}).status_code == 302  # log in first
    outsider = login(personas["outsider"].user)
    hidden = outsider.get(PAGE, {"nodeId": "model:acme/churn:1"})
    assert hidden.status_code == 404 and b"lineage node model:acme/churn:1" in hidden.content
    missing = outsider.get(PAGE, {"nodeId": "model:acme/churn:9"})
    assert missing.status_code == 404 and b"There is no lineage node model:acme/churn:9 that you may view" in (
        missing.content
    )
    # datasets are not governed: the outsider sees the data graph, without the hidden model versions
    data = outsider.get(PAGE, {"nodeId": "dataset:s3://lake:features"})
    assert data.status_code == 200
    assert not [n for n in boxes(svg_of(data.content.decode())) if n.startswith("model:")]
    owner = login(personas["owner"].user)
    for params, message in (
        ({"nodeId": "table:x"}, "unknown node type"),
        ({}, "Name a lineage node"),
        ({"nodeId": "model:acme/churn:1", "depth": "101"}, "depth must be"),
        ({"nodeId": "model:acme/churn:1", "direction": "sideways"}, "direction must be"),
        ({"nodeId": "model:acme/churn:1", "as_of": "yesterday"}, "as_of must be"),
    ):
        response = owner.get(PAGE, params)
        assert response.status_code == 400, params
        assert message in response.content.decode(), params


def test_as_of_on_the_page(personas, scenario):
    from lineage.models import LineageEvent

    evaluate = LineageEvent.objects.filter(run__run_uuid=scenario["runs"]["D"]).get()
    before = (evaluate.recorded_at - timedelta(microseconds=1)).isoformat()
    html = login(personas["owner"].user).get(PAGE, {"nodeId": "model:acme/churn:1", "as_of": before}).content.decode()
    found = boxes(svg_of(html))
    assert "job:pipelines:train" in found and "job:pipelines:evaluate" not in found
    assert "as_of=" in found["dataset:s3://lake:features"]["href"]


def test_version_and_target_pages_link_to_the_lineage_page(personas, scenario):
    from governance.choices import ReleaseState
    from tests.ui import builders

    prod = builders.target(personas["admin"].user)
    builders.release(prod, scenario["churn"], 1, state=ReleaseState.LIVE)
    client = login(personas["owner"].user)
    version_page = client.get("/models/acme/churn/versions/1/").content.decode()
    assert 'href="/lineage/?nodeId=model%3Aacme%2Fchurn%3A1"' in version_page
    target_page = client.get("/targets/prod/").content.decode()
    assert target_page.count('href="/lineage/?nodeId=release%3Aprod%3A1"') == 2  # serving now + history

    response = client.get(PAGE, {"nodeId": "release:prod:1"})
    assert response.status_code == 200
    html = response.content.decode()
    found = boxes(svg_of(html))
    assert found["release:prod:1"]["href"] == "/targets/prod/"
    assert found["release:prod:1"]["texts"] == ["release", "prod release 1", "live"]
    assert found["release:prod:1"]["x"] > found["model:acme/churn:1"]["x"] > found["job:pipelines:train"]["x"]
    assert 'data-node-id="release:prod:1"' in html and "stroke-dasharray" in html  # the deployed edge
    assert "/api/v1/lineage/trail?nodeId=release%3Aprod%3A1&amp;format=html" in html
    assert "/api/v1/lineage/export?nodeId=release%3Aprod%3A1&amp;format=openlineage" in html
    trail = client.get("/api/v1/lineage/trail", {"nodeId": "release:prod:1"})
    assert trail.status_code == 200 and trail.json()["trail"]["subject"]["id"] == "release:prod:1"
    assert login(personas["outsider"].user).get(PAGE, {"nodeId": "release:prod:1"}).status_code == 404


def wide_pipeline(client, prefix: str, jobs: int) -> None:
    """`jobs` jobs in a chain, each reading the previous output and a side table: 3 nodes per job."""
    previous = ol_dataset("s3://lake", f"{prefix}/raw")
    for i in range(jobs):
        output = ol_dataset("s3://lake", f"{prefix}/step{i}", version=f"v{i}")
        side = ol_dataset("s3://lake", f"{prefix}/side{i}", version="1")
        post_event(
            client,
            run_event(
                "COMPLETE", uuid.uuid4(), ("big", f"{prefix}-step{i}"), inputs=[previous, side], outputs=[output]
            ),
        )
        previous = ol_dataset("s3://lake", f"{prefix}/step{i}")


def count_queries(client, params) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(PAGE, params)
    assert response.status_code == 200
    return len(ctx.captured_queries), response.content.decode()


def test_query_count_does_not_grow_with_the_graph_and_60_nodes_stay_legible(personas):
    ci = personas["ci_bot"].client()
    wide_pipeline(ci, "small", 2)
    wide_pipeline(ci, "large", 20)
    client = login(personas["owner"].user)
    count_queries(client, {"nodeId": "dataset:s3://lake:small/raw"})  # warm caches (content types)
    small, small_html = count_queries(
        client, {"nodeId": "dataset:s3://lake:small/raw", "direction": "downstream", "depth": 60}
    )
    large, large_html = count_queries(
        client, {"nodeId": "dataset:s3://lake:large/raw", "direction": "downstream", "depth": 60}
    )
    assert len(boxes(svg_of(small_html))) == 5
    found = boxes(svg_of(large_html))
    assert len(found) == 41  # raw + 20 x (job, output); downstream of raw does not reach the side tables
    assert small == large, (small, large)

    both, both_html = count_queries(
        client, {"nodeId": "dataset:s3://lake:large/step19", "direction": "upstream", "depth": 60}
    )
    found = boxes(svg_of(both_html))
    assert len(found) == 61 and both == large  # + 20 side tables
    # legible: full-size boxes (never scaled down), none overlapping, labels shortened to fit
    for a, b in ((a, b) for a in found.values() for b in found.values() if a is not b):
        assert (
            a["x"] + a["w"] <= b["x"]
            or b["x"] + b["w"] <= a["x"]
            or a["y"] + a["h"] <= b["y"]
            or (b["y"] + b["h"] <= a["y"])
        )
    assert all(len(text) <= picture.LABEL_CHARS + 6 for box in found.values() for text in box["texts"])
    svg = svg_of(both_html)
    assert float(svg.get("width")) == float(svg.get("viewBox").split()[2])


# --- the layout itself --------------------------------------------------------------------------------


def graph(edges, extra=()) -> dict:
    ids = sorted({n for e in edges for n in e[:2]} | set(extra))
    return {
        "nodes": [{"id": i, "type": "dataset", "namespace": "ns", "name": i, "depth": 0} for i in ids],
        "edges": [{"source": s, "target": t, "kind": "input"} for s, t in edges],
    }


def test_layout_layers_left_to_right_and_routes_long_edges_around_nodes():
    g = graph([("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("x", "c")])
    lay = picture.layout(g)
    layer = {n: box.layer for n, box in lay.boxes.items()}
    # longest path from the sources; the side source x sits next to its reader, not in column 0
    assert layer == {"a": 0, "b": 1, "x": 1, "c": 2, "d": 3}
    for source, target, _, route in lay.edges:
        assert lay.boxes[source].x < lay.boxes[target].x
        assert route[0][0] == lay.boxes[source].x + picture.NODE_W and route[-1][0] == lay.boxes[target].x
    (long_route,) = [route for s, t, _, route in lay.edges if (s, t) == ("a", "d")]
    assert len(long_route) == 4  # a dummy point in each of the two layers it crosses
    assert lay.crossings == 0


def test_layout_orders_layers_to_remove_crossings():
    # two independent chains given in an order that crosses if laid out naively
    g = graph([("a1", "z2"), ("a2", "z1"), ("z1", "q1"), ("z2", "q2")])
    lay = picture.layout(g)
    assert lay.crossings == 0
    order = {n: b.order for n, b in lay.boxes.items()}
    assert (order["a1"] < order["a2"]) == (order["z2"] < order["z1"])


def test_layout_survives_cycles():
    # JobEvent declared lineage can read and write the same table
    lay = picture.layout(graph([("t", "job"), ("job", "t"), ("job", "out")]))
    assert lay.reversed_edges == {("t", "job")}  # broken for layering only
    assert {n: b.layer for n, b in lay.boxes.items()} == {"job": 0, "out": 1, "t": 1}
    assert sorted((s, t) for s, t, _, _ in lay.edges) == [("job", "out"), ("job", "t"), ("t", "job")]
    markup, _ = picture.svg(graph([("t", "job"), ("job", "t")]), href=lambda n: None)
    assert ElementTree.fromstring(markup).get("viewBox")  # noqa: S314


def test_svg_escapes_names():
    g = {
        "nodes": [{"id": 'dataset:ns:<script>"x"', "type": "dataset", "namespace": "ns", "name": '<script>"x"'}],
        "edges": [],
    }
    markup, _ = picture.svg(g, href=lambda n: '/lineage/?nodeId="&<>')
    assert "<script>" not in markup
    root = ElementTree.fromstring(markup)  # noqa: S314
    (box,) = [g for g in root.iter(f"{SVG_NS}g") if g.get("data-node-id")]
    assert box.get("data-node-id") == 'dataset:ns:<script>"x"'
    assert box.find(f"{SVG_NS}a").get("href") == '/lineage/?nodeId="&<>'
