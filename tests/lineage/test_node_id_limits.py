"""Node ids a client may send anything in: resolving one costs one lookup, whatever its ':' and '#'; ids no
node can have (too long, too many readings, a NUL) are a 400 naming nodeId on the page and in the API; the
answers for real ids stay those of docs/lineage.md "Node ids". And the page reads `as_of` as the API does."""

import random
import re
import uuid
from html import unescape

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from core.errors import InvalidInput, NotFound
from lineage import nodes
from tests.lineage.conftest import ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

PAGE = "/lineage/"
GRAPH = "/api/v1/lineage/graph"


def login(user) -> Client:
    client = Client(raise_request_exception=False)  # a 500 is a status to assert on, not an exception
    client.force_login(user)
    return client


def test_a_dataset_id_is_looked_up_in_one_query_whatever_its_separators(personas):
    user = personas["reviewer"].user
    # ":#" * 14 reads as 91 (namespace, name[, version]) candidates, one query per '#' before
    for node_id in ("dataset:" + ":#" * 2, "dataset:" + ":#" * 14, "job:" + ":a" * 90):
        with CaptureQueriesContext(connection) as ctx, pytest.raises(NotFound):
            nodes.resolve(node_id, user)
        assert len(ctx.captured_queries) == 1, (node_id, len(ctx.captured_queries))
    # a namespace or name longer than the fields hold cannot exist: not even looked up
    with CaptureQueriesContext(connection) as ctx, pytest.raises(NotFound):
        nodes.resolve("dataset:" + "n" * 1001 + ":x", user)
    assert not ctx.captured_queries


@pytest.mark.parametrize(
    ("node_id", "message"),
    [
        ("dataset:" + ":#" * 400, "more than 100 (namespace, name) pairs"),  # was 9 s and 48 MB of SQL
        ("job:" + ":a" * 200, "more than 100 (namespace, name) pairs"),
        ("dataset:" + "a" * 2503, "at most 2502 characters after its prefix, not 2503"),
        ("job:" + "a" * 2002, "at most 2001 characters after its prefix, not 2002"),
    ],
)
def test_ids_no_node_can_have_are_a_400_naming_node_id(personas, node_id, message):
    with CaptureQueriesContext(connection) as ctx, pytest.raises(InvalidInput) as refused:
        nodes.resolve(node_id, personas["reviewer"].user)
    assert not ctx.captured_queries
    assert message in refused.value.message and list(refused.value.detail) == ["nodeId"]
    page = login(personas["reviewer"].user).get(PAGE, {"nodeId": node_id})
    assert page.status_code == 400 and message in unescape(page.content.decode())
    api = personas["reviewer"].client()
    for path, extra in ((GRAPH, {}), ("/api/v1/lineage/export", {"format": "csv"})):
        response = api.get(path, {"nodeId": node_id, **extra})
        assert response.status_code == 400, (path, response.status_code)
        assert message in response.json()["error"]["message"] and "nodeId" in response.json()["error"]["detail"]


def test_the_page_takes_node_ids_up_to_the_apis_3000_characters(personas):
    client, api = login(personas["reviewer"].user), personas["reviewer"].client()
    too_long = "model:" + "a" * 2995
    page = client.get(PAGE, {"nodeId": too_long})
    assert page.status_code == 400 and "at most 3000 characters, not 3001" in page.content.decode()
    assert api.get(GRAPH, {"nodeId": too_long}).status_code == 400
    at_the_limit = client.get(PAGE, {"nodeId": "model:a/b:" + "1" * 2990})  # 3000 characters: read, not refused
    assert at_the_limit.status_code == 400 and "is not model:" in unescape(at_the_limit.content.decode())


def test_a_nul_in_the_node_id_is_a_400_for_every_node_type(personas):
    client = login(personas["reviewer"].user)
    for node_id in ("job:a\x00:b", "dataset:a\x00:b", "model:a\x00/b:1", "release:p\x00:1", "run:\x00"):
        response = client.get(PAGE, {"nodeId": node_id})
        assert response.status_code == 400, (node_id, response.status_code)  # was a 500 (PostgreSQL DataError)
        assert "holds \\u0000" in response.content.decode()
        with pytest.raises(InvalidInput):  # in lineage.nodes, so every caller gets it (governance's releases too)
            nodes.resolve(node_id, personas["reviewer"].user)
        assert personas["reviewer"].client().get(GRAPH, {"nodeId": node_id}).status_code == 400


@pytest.mark.parametrize(
    ("as_of", "read"),
    [
        ("9999-12-31T23:59:59-14:00", False),  # year 10000 in UTC: the page drew it, its export links were a 400
        ("0001-01-01T00:00:00+14:00", False),  # year 0 in UTC
        ("yesterday", False),
        ("9999-12-31T23:59:59+14:00", True),
        ("9999-12-31T23:59:59Z", True),
        ("9999-12-31T12:00:00", False),  # no offset: refused by both (a local time read as UTC would shift it)
    ],
)
def test_the_page_reads_as_of_as_the_api_does(personas, as_of, read):
    post_event(personas["ci_bot"].client(), run_event("COMPLETE", uuid.uuid4(), ("etl", "t")))
    query = {"nodeId": "job:etl:t", "as_of": as_of}
    assert personas["reviewer"].client().get(GRAPH, query).status_code == (200 if read else 400)
    client = login(personas["reviewer"].user)
    page = client.get(PAGE, query)
    assert page.status_code == (200 if read else 400), page.status_code
    if not read:
        assert "as_of must be an RFC 3339 time" in page.content.decode()
        return
    links = re.findall(r'href="(/api/v1/lineage/export\?[^"]+)"', page.content.decode())
    assert len(links) == 3
    for link in links:
        assert client.get(unescape(link)).status_code == 200, link


# --- the answers for real ids are those of the documented rule ---------------------------------------------

DATASETS = [
    ("postgres://db:5432", "shop.public.orders"),
    ("postgres://db", "5432:shop.public.orders"),
    ("s3://lake", "x#y"),
    ("s3://lake", "x"),
    ("s3://lake:x#y", "z"),
    ("kafka://h:9092", "topic:part#1"),
]
LATER = [("a", "b:c"), ("a:b", "c"), ("s3://lake:x", "y")]  # recorded after `between`
VERSIONS = ["v1", "run:abc", "y#z", "1:2#3"]
JOBS = [("airflow://prod:8080", "dag.task"), ("airflow://prod", "8080:dag.task"), ("j", "a:b"), ("j:a", "b")]


def documented(node_id: str, datasets: dict, versions: dict, jobs: dict, as_of) -> tuple[str, int] | None:
    """docs/lineage.md "Node ids" as nodes.py implemented it before its candidates were bounded: every split at a
    colon, the longest namespace first, the first that existed (as of); then, for a dataset, each '#' from the
    left: the first whose left side names a dataset decides, and its version must exist."""

    def named(table, text):
        for i in reversed([i for i, ch in enumerate(text) if ch == ":"]):
            obj = table.get((text[:i], text[i + 1 :])) if 0 < i < len(text) - 1 else None
            if obj is not None and (as_of is None or obj.recorded_at <= as_of):
                return obj
        return None

    prefix, _, rest = node_id.partition(":")
    if prefix == "job":
        job = named(jobs, rest)
        return ("job", job.pk) if job else None
    dataset = named(datasets, rest)
    if dataset is not None:
        return ("dataset", dataset.pk)
    for at in [i for i, ch in enumerate(rest) if ch == "#"]:
        dataset = named(datasets, rest[:at])
        if dataset is None:
            continue
        version = versions.get((dataset.pk, rest[at + 1 :]))
        if version is None or (as_of is not None and version.recorded_at > as_of):
            return None
        return ("datasetVersion", version.pk)
    return None


def resolved(node_id: str, user, as_of) -> tuple[str, int] | None:
    try:
        start = nodes.resolve(node_id, user, as_of)
    except NotFound:
        return None
    return start.type, start.pk


def test_real_ids_resolve_as_documented(personas):
    from lineage.models import Dataset, DatasetVersion, Job

    ci = personas["ci_bot"].client()
    for k, version in enumerate(VERSIONS):
        inputs = [ol_dataset(ns, name, version=version) for ns, name in DATASETS]
        post_event(ci, run_event("COMPLETE", uuid.uuid4(), JOBS[k], inputs=inputs))
    between = Dataset.objects.order_by("-recorded_at").first().recorded_at
    post_event(ci, run_event("COMPLETE", uuid.uuid4(), JOBS[0], inputs=[ol_dataset(*d, version="v9") for d in LATER]))
    datasets = {(d.namespace, d.name): d for d in Dataset.objects.all()}
    versions = {(v.dataset_id, v.version): v for v in DatasetVersion.objects.all()}
    jobs = {(j.namespace, j.name): j for j in Job.objects.all()}
    assert len(datasets) == len(DATASETS) + len(LATER) and len(jobs) == len(JOBS)

    texts = [f"{ns}:{name}" for ns, name in datasets]
    ids = [f"dataset:{t}" for t in texts] + [f"dataset:{t}#{v}" for t in texts for v in [*VERSIONS, "v9", "nope"]]
    ids += [f"job:{ns}:{name}" for ns, name in JOBS]
    pieces = sorted({p for t in texts + VERSIONS + [f"{ns}:{n}" for ns, n in JOBS] for p in re.split("[:#]", t)})
    rng = random.Random(20260101)
    for _ in range(400):
        words = rng.choices(pieces, k=rng.randint(2, 6))
        joined = words[0] + "".join(rng.choice(":#") + w for w in words[1:])
        ids.append(f"{rng.choice(['dataset', 'job'])}:{joined}")

    user = personas["reviewer"].user
    found = 0
    for as_of in (None, between):
        for node_id in ids:
            expected = documented(node_id, datasets, versions, jobs, as_of)
            assert resolved(node_id, user, as_of) == expected, (node_id, as_of)
            found += expected is not None
    assert found >= 40  # ids that exist, datasets and versions: the comparison is not between two 404s
    assert resolved("dataset:postgres://db:5432:shop.public.orders", user, None) == (
        "dataset",
        datasets[("postgres://db:5432", "shop.public.orders")].pk,
    )  # the longest namespace first
    assert resolved("dataset:a:b:c", user, between) is None and resolved("dataset:a:b:c", user, None) == (
        "dataset",
        datasets[("a:b", "c")].pk,
    )
