"""What the lineage picture costs is bounded by its edges: crossings are counted by sorting (the same counts as
comparing every pair of edges), and a graph with more edge segments than picture.MAX_SEGMENTS is listed, not
drawn. How fast the page is lives in bench/, not here; see docs/lineage.md "The lineage page"."""

import random
import uuid

import pytest
from django.test import Client

from lineage import picture
from tests.lineage.conftest import ol_dataset, post_event, run_event

PAGE = "/lineage/"


def every_pair(columns: list[list[str]], links: dict[str, list[str]]) -> int:
    """The definition: two edges between adjacent layers cross when one leaves above the other and arrives below."""
    total = 0
    for left, right in zip(columns, columns[1:], strict=False):
        pos = {n: i for i, n in enumerate(right)}
        edges = [(i, pos[t]) for i, s in enumerate(left) for t in links.get(s, []) if t in pos]
        total += sum(1 for a in edges for b in edges if a[0] < b[0] and a[1] > b[1])
    return total


def fan_in(n: int) -> dict:
    """n jobs each reading the same n tables and writing one feature table, all read by one training job."""
    sources = [f"dataset:lake:src/{k}" for k in range(n)]
    edges = [(s, f"job:etl:f{m}") for m in range(n) for s in sources]
    edges += [(f"job:etl:f{m}", f"dataset:lake:features/{m}") for m in range(n)]
    edges += [(f"dataset:lake:features/{m}", "job:etl:train") for m in range(n)]
    ids = sorted({n for e in edges for n in e})
    return {
        "nodes": [{"id": i, "type": i.split(":")[0], "namespace": "x", "name": i, "depth": 0} for i in ids],
        "edges": [{"source": s, "target": t, "kind": "input"} for s, t in edges],
    }


def test_crossings_are_those_of_every_pair_of_edges():
    rng = random.Random(42)
    for _ in range(500):
        columns = [[f"{c}.{i}" for i in range(rng.randint(0, 12))] for c in range(rng.randint(1, 5))]
        links = {}
        for left, right in zip(columns, columns[1:], strict=False):
            for s in left:  # repeated targets (an edge and its reversed twin) and targets outside the next layer
                links[s] = [rng.choice([*right, "elsewhere"]) for _ in range(rng.randint(0, 6))]
        assert picture._crossings(columns, links) == every_pair(columns, links), (columns, links)
    # every table read by every job: two edges cross unless they share an end, C(30, 2) ** 2 pairs
    left, right = [f"s{i}" for i in range(30)], [f"j{i}" for i in range(30)]
    assert picture._crossings([left, right], dict.fromkeys(left, right)) == (30 * 29 // 2) ** 2


def test_a_dense_picture_under_the_limit_reports_the_crossings_it_drew():
    graph = fan_in(30)  # 960 edges
    lay = picture.layout(graph)
    columns = [[] for _ in range(lay.layers)]
    for node_id, box in sorted(lay.boxes.items(), key=lambda kv: kv[1].order):
        columns[box.layer].append(node_id)
    links: dict[str, list[str]] = {}
    for source, target, _, _ in lay.edges:  # the fan-in has no long edges: every edge joins adjacent layers
        links.setdefault(source, []).append(target)
    assert lay.crossings == every_pair(columns, links)
    assert len(lay.edges) == 960 and lay.layers == 4


def test_past_the_segment_limit_layout_refuses_before_ordering():
    edges = len(fan_in(45)["edges"])  # 45 * 45 + 90
    with pytest.raises(picture.TooBig) as too_big:
        picture.layout(fan_in(45))
    assert too_big.value.segments == edges > picture.MAX_SEGMENTS
    # dummy points count: 137 edges among 70 nodes, but the long ones cross up to 68 layers each
    chain = [(f"n{i}", f"n{i + 1}") for i in range(69)] + [(f"n{i}", "n69") for i in range(68)]
    graph = {
        "nodes": [{"id": f"n{i}", "type": "dataset", "namespace": "x", "name": f"n{i}"} for i in range(70)],
        "edges": [{"source": s, "target": t, "kind": "input"} for s, t in chain],
    }
    with pytest.raises(picture.TooBig) as too_big:
        picture.layout(graph)
    assert too_big.value.segments == 69 + sum(69 - i for i in range(68)) > picture.MAX_SEGMENTS


@pytest.mark.django_db
def test_the_page_lists_a_fan_in_too_dense_to_draw(personas):
    # 80 jobs each reading the same 80 tables took the page 15-21 s, comparing every pair of 6,400 edges 9 times;
    # 45 x 45 is past the limit too
    n = 45
    ci, sources = personas["ci_bot"].client(), [ol_dataset("s3://lake", f"src/{k}") for k in range(n)]
    for m in range(n):
        inputs, outputs = sources, [ol_dataset("s3://lake", f"features/{m}")]
        post_event(ci, run_event("COMPLETE", uuid.uuid4(), ("etl", f"f{m}"), inputs=inputs, outputs=outputs))
    features = [ol_dataset("s3://lake", f"features/{m}") for m in range(n)]
    post_event(ci, run_event("COMPLETE", uuid.uuid4(), ("etl", "train"), inputs=features))
    client = Client()
    client.force_login(personas["reviewer"].user)

    response = client.get(PAGE, {"nodeId": "job:etl:train", "direction": "upstream"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<svg" not in html and "<details open>" in html  # the list, opened, instead of the picture
    assert f"limits are 400 nodes and {picture.MAX_SEGMENTS} edge segments" in html  # why, with few nodes
    assert f"{2 * n + n + 1} nodes" in html and f"{n * n + 2 * n} edges" in html
    assert html.count('href="/lineage/?nodeId=dataset%3As3%3A%2F%2Flake%3Asrc%2F') == n
    assert "/api/v1/lineage/export?nodeId=job%3Aetl%3Atrain&amp;format=csv" in html

    one_job = client.get(PAGE, {"nodeId": "job:etl:f0", "direction": "upstream"}).content.decode()
    assert "<svg" in one_job  # its 45 inputs are drawn
