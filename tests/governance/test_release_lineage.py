"""Releases in the lineage graph: an approval's release is downstream of the model version it
deployed (a stored `deployed` edge), so the graph API answers "what data and code produced the
model that served this traffic" from either end, as of any time, for the readers who may see it."""

# ruff: noqa: F811 - tests take the imported `released` fixture as an argument

import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from guardian.shortcuts import assign_perm
from prov.model import ProvActivity, ProvDocument, ProvUsage

from accounts import access
from governance.models import Release
from lineage.choices import EdgeKind, NodeType
from lineage.models import Edge
from tests.conftest import bearer
from tests.governance.test_trail_sections import released  # noqa: F401 - the seeded scenario
from tests.lineage.conftest import make_version, scenario  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db

GRAPH = "/api/v1/lineage/graph"
EXPORT = "/api/v1/lineage/export"
DEPLOYED = EdgeKind.DEPLOYED.label


def graph(client, node_id, **params) -> dict:
    response = client.get(GRAPH, {"nodeId": node_id, **params})
    assert response.status_code == 200, response.content
    return response.json()


def edges(body) -> set[tuple[str, str, str]]:
    return {(e["source"], e["target"], e["kind"]) for e in body["edges"]}


def ids(body) -> set[str]:
    return {n["id"] for n in body["nodes"]}


def test_release_start_stores_the_deployed_edge_as_of_the_release(released):
    for release, version in ((released["r1"], released["v1"]), (released["r2"], released["v2"])):
        edge = Edge.objects.get(dst_type=NodeType.RELEASE, dst_id=release.pk)
        assert (edge.src_type, edge.src_id, edge.kind) == (NodeType.MODEL, version.pk, EdgeKind.DEPLOYED)
        assert edge.recorded_at == release.created_at
    # a rollback makes no release, so no new edge: one per release
    assert Edge.objects.filter(kind=EdgeKind.DEPLOYED).count() == Release.objects.count() == 2


def test_upstream_of_a_release_is_its_version_and_what_trained_it(personas, released):
    body = graph(personas["auditor"].client(), "release:prod:2", direction="upstream", granularity="version")
    runs = released["runs"]
    assert ("model:acme/churn:2", "release:prod:2", DEPLOYED) in edges(body)
    assert (f"run:{runs['C']}", "model:acme/churn:2", "output") in edges(body)
    depth = {n["id"]: n["depth"] for n in body["nodes"]}
    assert depth["release:prod:2"] == 0 and depth["model:acme/churn:2"] == 1 and depth[f"run:{runs['C']}"] == 2
    assert "model:acme/base:1" in depth  # the base model the training run read
    assert any(i.startswith("dataset:s3://lake:features#") for i in depth)
    # only this release: not release 1, not the other version
    assert "release:prod:1" not in depth and "model:acme/churn:1" not in depth
    release = next(n for n in body["nodes"] if n["id"] == "release:prod:2")
    assert (release["type"], release["target"], release["number"]) == ("release", "prod", 2)
    assert release["version"] == "model:acme/churn:2"


def test_downstream_of_the_training_data_reaches_every_release(personas, released):
    body = graph(personas["auditor"].client(), "dataset:s3://lake:features", direction="downstream")
    assert {("model:acme/churn:1", "release:prod:1", DEPLOYED), ("model:acme/churn:2", "release:prod:2", DEPLOYED)} <= (
        edges(body)
    )
    # depth limits the walk: features -> train -> churn -> release is 3 steps
    short = graph(personas["auditor"].client(), "dataset:s3://lake:features", direction="downstream", depth=2)
    assert "release:prod:1" not in ids(short) and "model:acme/churn:1" in ids(short) and short["truncated"]


def test_as_of_before_a_release_does_not_show_it(personas, released):
    before = (released["r2"].created_at - timedelta(microseconds=1)).isoformat()
    body = graph(personas["auditor"].client(), "dataset:s3://lake:features", direction="downstream", as_of=before)
    assert "release:prod:1" in ids(body) and "release:prod:2" not in ids(body)
    assert not any(target == "release:prod:2" for _, target, _ in edges(body))
    gone = personas["auditor"].client().get(GRAPH, {"nodeId": "release:prod:2", "as_of": before})
    assert gone.status_code == 404


def test_a_reader_who_may_not_see_the_target_gets_no_release_nor_its_edge(personas, released, make_token):
    reader = get_user_model().objects.create_user(username="model-only")
    assign_perm(access.view_codename(released["v1"].model), reader, released["v1"].model)
    client = bearer(make_token(reader, ["read"]))
    body = graph(client, "model:acme/churn:1", direction="downstream")
    assert ids(body) == {"model:acme/churn:1", "job:pipelines:evaluate", "dataset:s3://lake:eval/report"}
    assert not any("release:" in s + t for s, t, _ in edges(body))
    assert client.get(GRAPH, {"nodeId": "release:prod:1"}).status_code == 404
    # the same walk as the auditor, who may see the target, does show it
    assert "release:prod:1" in ids(graph(personas["auditor"].client(), "model:acme/churn:1", direction="downstream"))


def test_a_release_the_reader_may_not_see_does_not_mark_the_graph_truncated(personas, released, make_token):
    """Hidden releases were dropped only when described: at depth 0 `truncated` said the version had something
    downstream (a release on a target the reader may not see), and the export said so too."""
    reader = get_user_model().objects.create_user(username="model-only")
    assign_perm(access.view_codename(released["v2"].model), reader, released["v2"].model)
    client = bearer(make_token(reader, ["read"]))
    body = graph(client, "model:acme/churn:2", direction="downstream", depth=0)
    assert (ids(body), body["truncated"]) == ({"model:acme/churn:2"}, False)
    export = client.get(
        EXPORT, {"nodeId": "model:acme/churn:2", "direction": "downstream", "depth": 0, "format": "csv"}
    )
    assert export.status_code == 200 and export["X-Lineage-Truncated"] == "false"
    # the auditor, who may see the target, is told there is more
    assert graph(personas["auditor"].client(), "model:acme/churn:2", direction="downstream", depth=0)["truncated"]


def test_prov_json_has_the_release_as_an_activity_that_used_the_version(personas, released):
    response = (
        personas["auditor"]
        .client()
        .get(EXPORT, {"nodeId": "release:prod:1", "format": "prov-json", "direction": "upstream"})
    )
    assert response.status_code == 200
    doc = ProvDocument.deserialize(content=b"".join(response.streaming_content).decode(), format="json")
    activities = {str(a.identifier): a for a in doc.get_records(ProvActivity)}
    release = activities["lin:release%3Aprod%3A1"]
    assert {str(v) for v in release.get_attribute("lin:target")} == {"prod"}
    assert {str(v) for v in release.get_attribute("prov:type")} == {"lin:Release"}
    used = {(str(u.args[0]), str(u.args[1])) for u in doc.get_records(ProvUsage)}
    assert ("lin:release%3Aprod%3A1", "lin:model%3Aacme%2Fchurn%3A1") in used


def test_the_migration_backfills_releases_made_before_the_edge(personas, released):
    target = released["prod"]
    old = Release.objects.create(target=target, version=released["v1"], number=3, state="superseded")
    assert not Edge.objects.filter(dst_type=NodeType.RELEASE, dst_id=old.pk).exists()
    migration = importlib.import_module("governance.migrations.0006_release_lineage_edges")
    migration.backfill(apps, None)
    migration.backfill(apps, None)  # idempotent: the edge is unique
    edge = Edge.objects.get(dst_type=NodeType.RELEASE, dst_id=old.pk)
    assert (edge.src_id, edge.kind, edge.recorded_at) == (released["v1"].pk, EdgeKind.DEPLOYED, old.created_at)
    assert Edge.objects.filter(kind=EdgeKind.DEPLOYED).count() == 3
