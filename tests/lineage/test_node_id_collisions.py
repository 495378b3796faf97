"""Node ids are unique and read back to their node (docs/lineage.md "Node ids").

Datasets (namespace "a:b", name "c") and ("a", "b:c") both had the id `dataset:a:b:c`: /graph and the CSV showed one
and lost the other's edge, PROV-JSON held two entities under one id, and a lineage writer could merge its dataset
into a real one (namespace "s3", name "//lake:raw/events"). A name's ':' (and '#', '%') is now escaped in its id;
ids of names without them are unchanged, and ids written before still resolve where they name one node.
"""

import csv
import io
import json
import uuid
from urllib.parse import unquote

import pytest
from prov.model import ProvDocument, ProvEntity

from core.errors import NotFound
from lineage import nodes
from lineage.models import Dataset, DatasetVersion, Job
from tests.lineage.conftest import digest_of, ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

GRAPH = "/api/v1/lineage/graph"
EXPORT = "/api/v1/lineage/export"
TRAIL = "/api/v1/lineage/trail"
COLLIDING = {("a:b", "c"): "dataset:a:b:c", ("a", "b:c"): "dataset:a:b%3Ac"}


def get(client, path, **params):
    response = client.get(path, params)
    assert response.status_code == 200, response.content
    return response


def graph(client, node_id, **params) -> dict:
    return get(client, GRAPH, nodeId=node_id, **params).json()


def export(client, node_id, fmt, **params) -> str:
    return b"".join(get(client, EXPORT, nodeId=node_id, format=fmt, **params).streaming_content).decode()


def read_colliding(client, *, job=("etl", "collide"), outputs=()) -> uuid.UUID:
    """The review's repro: one RunEvent reading both colliding datasets."""
    run = uuid.uuid4()
    inputs = [ol_dataset(ns, name, version=digest_of(ns + name)) for ns, name in COLLIDING]
    post_event(client, run_event("COMPLETE", run, job, inputs=inputs, outputs=list(outputs)))
    return run


def named(nodes_: list[dict], node_type: str) -> dict[tuple[str, str], str]:
    """{(namespace, name): id} of the nodes of a type."""
    return {(n["namespace"], n["name"]): n["id"] for n in nodes_ if n["type"] == node_type}


def test_the_ingest_names_each_dataset_by_its_own_id(personas):
    run = uuid.uuid4()
    inputs = [ol_dataset(ns, name) for ns, name in COLLIDING]
    body = post_event(personas["ci_bot"].client(), run_event("COMPLETE", run, ("etl", "t"), inputs=inputs))
    assert body["inputs"] == ["dataset:a:b:c#", "dataset:a:b%3Ac#"]


def test_csv_lists_both_datasets_and_both_edges(personas):
    """The review's repro: `run:<id>` as CSV had 2 node rows instead of 3."""
    run = read_colliding(personas["ci_bot"].client())
    rows = list(csv.DictReader(io.StringIO(export(personas["reviewer"].client(), f"run:{run}", "csv"))))
    node_rows = [r for r in rows if r["record"] == "node"]
    assert len(node_rows) == 3 and len({r["id"] for r in node_rows}) == 3
    versions = {(r["namespace"], r["name"]): r["id"] for r in node_rows if r["type"] == "datasetVersion"}
    assert versions == {key: f"{base}#{digest_of(''.join(key))}" for key, base in COLLIDING.items()}
    edges = {(r["source"], r["target"], r["kind"]) for r in rows if r["record"] == "edge"}
    assert edges == {(node_id, f"run:{run}", "input") for node_id in versions.values()}


def test_graph_lists_both_datasets_at_each_granularity(personas):
    run = read_colliding(personas["ci_bot"].client())
    reader = personas["reviewer"].client()
    by_version = graph(reader, f"run:{run}", granularity="version")
    assert len(by_version["nodes"]) == 3
    versions = named(by_version["nodes"], "datasetVersion")
    assert set(versions) == set(COLLIDING)
    assert {n["dataset"] for n in by_version["nodes"] if n["type"] == "datasetVersion"} == set(COLLIDING.values())
    assert {(e["source"], e["target"]) for e in by_version["edges"]} == {(i, f"run:{run}") for i in versions.values()}

    by_dataset = graph(reader, f"run:{run}")
    assert named(by_dataset["nodes"], "dataset") == COLLIDING
    assert {(e["source"], e["target"]) for e in by_dataset["edges"]} == {
        (i, "job:etl:collide") for i in COLLIDING.values()
    }


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate JSON keys: {keys}"
    return dict(pairs)


def test_prov_json_has_one_entity_per_id_and_a_usage_of_each(personas):
    run = read_colliding(personas["ci_bot"].client())
    text = export(personas["reviewer"].client(), f"run:{run}", "prov-json")
    body = json.loads(text, object_pairs_hook=_unique_keys)  # every record id is used once
    versions = [e for e in body["entity"].values() if e["prov:type"]["$"] == "lin:DatasetVersion"]
    entities = {(e["lin:namespace"], e["lin:name"]): e["lin:nodeId"] for e in versions}
    assert len(versions) == 2
    assert set(entities) == set(COLLIDING)
    assert {e.split("#")[0] for e in entities.values()} == set(COLLIDING.values())
    used = sorted(u["prov:entity"] for u in body["used"].values())
    assert len(used) == 2 and len(set(used)) == 2
    doc = ProvDocument.deserialize(content=text, format="json")  # and `prov` reads the same
    assert set(entities.values()) <= {unquote(r.identifier.localpart) for r in doc.get_records(ProvEntity)}


def test_every_node_id_reads_back_to_its_node(personas):
    run = read_colliding(personas["ci_bot"].client())
    reader, user = personas["reviewer"].client(), personas["reviewer"].user
    listed = graph(reader, f"run:{run}", granularity="version")["nodes"] + graph(reader, f"run:{run}")["nodes"]
    checked = 0
    for node in listed:
        if node["type"] not in ("dataset", "datasetVersion"):
            continue
        dataset = Dataset.objects.get(namespace=node["namespace"], name=node["name"])
        start = nodes.resolve(node["id"], user)
        if node["type"] == "dataset":
            assert (start.type, start.pk) == ("dataset", dataset.pk), node["id"]
        else:
            assert (start.type, start.pk) == (
                "datasetVersion",
                DatasetVersion.objects.get(dataset=dataset, version=node["version"]).pk,
            ), node["id"]
        granularity = "version" if node["type"] == "datasetVersion" else "dataset"
        found = {n["id"]: n for n in graph(reader, node["id"], granularity=granularity)["nodes"]}
        assert (found[node["id"]]["namespace"], found[node["id"]]["name"]) == (node["namespace"], node["name"])
        checked += 1
    assert checked == 4


def test_a_lineage_writer_cannot_merge_its_dataset_into_a_real_one(personas):
    ci = personas["ci_bot"].client()
    post_event(
        ci, run_event("COMPLETE", uuid.uuid4(), ("etl", "ingest"), outputs=[ol_dataset("s3://lake", "raw/events")])
    )
    post_event(
        ci, run_event("COMPLETE", uuid.uuid4(), ("evil", "shadow"), outputs=[ol_dataset("s3", "//lake:raw/events")])
    )
    reader = personas["reviewer"].client()
    real = graph(reader, "dataset:s3://lake:raw/events")
    assert [n["id"] for n in real["nodes"]] == ["dataset:s3://lake:raw/events", "job:etl:ingest"]
    assert real["nodes"][0]["versions"] == [{"version": real["nodes"][0]["versions"][0]["version"], "digest": None}]
    shadow = graph(reader, "dataset:s3://lake%3Araw/events")
    assert {(n["id"], n.get("namespace")) for n in shadow["nodes"]} == {
        ("dataset:s3://lake%3Araw/events", "s3"),
        ("job:evil:shadow", "evil"),
    }


def test_jobs_whose_texts_collide_are_two_nodes(personas):
    ci = personas["ci_bot"].client()
    shared = ol_dataset("s3://lake", "shared", version="v1")
    for job in (("j:a", "b"), ("j", "a:b")):
        post_event(ci, run_event("COMPLETE", uuid.uuid4(), job, inputs=[shared]))
    body = graph(personas["reviewer"].client(), "dataset:s3://lake:shared", direction="downstream")
    jobs = named(body["nodes"], "job")
    assert jobs == {("j:a", "b"): "job:j:a:b", ("j", "a:b"): "job:j:a%3Ab"}
    user = personas["reviewer"].user
    for (ns, name), node_id in jobs.items():
        assert nodes.resolve(node_id, user).pk == Job.objects.get(namespace=ns, name=name).pk


def test_ids_written_before_escaping_resolve_while_they_name_one_node(personas):
    ci, user = personas["ci_bot"].client(), personas["reviewer"].user
    post_event(ci, run_event("COMPLETE", uuid.uuid4(), ("j", "a:b"), inputs=[ol_dataset("a", "b:c", version="v1")]))
    alone = Dataset.objects.get(namespace="a", name="b:c")
    assert nodes.resolve("dataset:a:b:c", user).pk == alone.pk  # the old id: no other reading exists
    assert nodes.resolve("dataset:a:b:c#v1", user).pk == alone.versions.get(version="v1").pk
    assert nodes.resolve("job:j:a:b", user).pk == Job.objects.get(namespace="j", name="a:b").pk
    read_colliding(ci)  # now ("a:b", "c") exists: the unescaped text is its id, as the longest namespace was before
    assert nodes.resolve("dataset:a:b:c", user).pk == Dataset.objects.get(namespace="a:b", name="c").pk
    assert nodes.resolve("dataset:a:b%3Ac", user).pk == alone.pk
    assert nodes.resolve("dataset:a:b%3Ac#v1", user).pk == alone.versions.get(version="v1").pk


def test_an_id_naming_a_node_that_began_later_is_not_found_as_of_before(personas):
    """As of a time before (a:b, c) existed, its id names no node then, not the older (a, b:c) that an id written
    before escaping also read as."""
    ci, user = personas["ci_bot"].client(), personas["reviewer"].user
    post_event(ci, run_event("COMPLETE", uuid.uuid4(), ("j", "x"), inputs=[ol_dataset("a", "b:c")]))
    between = Dataset.objects.get(namespace="a", name="b:c").recorded_at
    post_event(ci, run_event("COMPLETE", uuid.uuid4(), ("j", "y"), inputs=[ol_dataset("a:b", "c")]))
    with pytest.raises(NotFound):
        nodes.resolve("dataset:a:b:c", user, between)
    assert nodes.resolve("dataset:a:b%3Ac", user, between).pk == Dataset.objects.get(namespace="a", name="b:c").pk
    assert nodes.resolve("dataset:a:b:c", user).pk == Dataset.objects.get(namespace="a:b", name="c").pk


# Names holding the separators and escapes, and the namespaces that share their text.
TRICKY = [
    ("a:b", "c"),
    ("a", "b:c"),
    ("s3://lake", "raw/events"),
    ("s3", "//lake:raw/events"),
    ("s3://lake", "x"),
    ("s3://lake", "x#y"),
    ("s3://lake:x#y", "z"),
    ("p%3Aq", "r"),
    ("p:q", "r"),
    ("p", "q%3Ar"),
    ("p", "q:r"),
    ("n#1", "t"),
    ("n", "50%"),
    ("n", "50%25"),
]
VERSIONS = ["v1", "run:abc", "y#z", "1:2#3", "%3A"]
JOBS = [("j", "a:b"), ("j:a", "b"), ("j", "a%3Ab"), ("j", "a#b"), ("j#", "x%")]


def test_every_written_id_is_unique_and_resolves_to_its_node(personas):
    ci, user = personas["ci_bot"].client(), personas["reviewer"].user
    for job, version in zip(JOBS, VERSIONS, strict=True):
        inputs = [ol_dataset(ns, name, version=version) for ns, name in TRICKY]
        post_event(ci, run_event("COMPLETE", uuid.uuid4(), job, inputs=inputs))
    written = {}
    for dataset in Dataset.objects.all():
        written[nodes.dataset_id(dataset.namespace, dataset.name)] = ("dataset", dataset.pk)
        for v in dataset.versions.all():
            written[nodes.dataset_id(dataset.namespace, dataset.name, v.version)] = ("datasetVersion", v.pk)
    for job in Job.objects.all():
        written[nodes.job_id(job.namespace, job.name)] = ("job", job.pk)
    assert len(written) == len(TRICKY) * (1 + len(VERSIONS)) + len(JOBS)  # no two nodes share an id
    for node_id, expected in written.items():
        start = nodes.resolve(node_id, user)
        assert (start.type, start.pk) == expected, node_id
    assert nodes.dataset_id("s3://lake", "raw/events", "run:1") == "dataset:s3://lake:raw/events#run:1"  # unchanged
    assert nodes.dataset_id("n#1", "50%") == "dataset:n%231:50%25"


def test_the_trail_names_each_input_by_its_own_id(personas, make_version):
    owner = personas["owner"].client()
    make_version("churn")
    run = read_colliding(owner, job=("pipelines", "train"), outputs=[ol_dataset("registry", "acme/churn:1")])
    trail = get(owner, TRAIL, nodeId="model:acme/churn:1").json()["trail"]
    expected = {key: f"{base}#{digest_of(''.join(key))}" for key, base in COLLIDING.items()}
    assert trail["runs"][0]["id"] == f"run:{run}"
    assert trail["runs"][0]["inputs"] == sorted(expected.values())
    assert {(d["namespace"], d["name"]): d["id"] for d in trail["datasets"]} == expected
