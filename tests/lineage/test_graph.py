"""Graph queries: directions, depth and truncation, as_of, run_id joins and links, visibility."""

import time
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from guardian.shortcuts import assign_perm

from lineage import graph as graphs
from lineage import nodes
from tests.lineage.conftest import RAW, ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

GRAPH = "/api/v1/lineage/graph"


def graph(client, node_id, **params):
    response = client.get(GRAPH, {"nodeId": node_id, **params})
    assert response.status_code == 200, response.json()
    return response.json()


def ids(body) -> list[str]:
    return [n["id"] for n in body["nodes"]]


def edges(body) -> set[tuple[str, str, str]]:
    return {(e["source"], e["target"], e["kind"]) for e in body["edges"]}


def test_model_upstream_is_its_run_job_and_the_runs_inputs(personas, scenario):
    body = graph(personas["owner"].client(), "model:acme/churn:1", direction="upstream")
    assert ids(body) == [
        "model:acme/churn:1",
        "job:pipelines:train",
        "dataset:s3://lake:features",
        "model:acme/base:1",
        "job:pipelines:featurize",
        "dataset:s3://lake:raw/events",
        "job:etl:ingest",
    ]
    assert [n["depth"] for n in body["nodes"]] == [0, 1, 2, 2, 3, 4, 5]
    assert edges(body) == {
        ("job:pipelines:train", "model:acme/churn:1", "output"),
        ("dataset:s3://lake:features", "job:pipelines:train", "input"),
        ("model:acme/base:1", "job:pipelines:train", "input"),
        ("job:pipelines:featurize", "dataset:s3://lake:features", "output"),
        ("dataset:s3://lake:raw/events", "job:pipelines:featurize", "input"),
        ("job:etl:ingest", "dataset:s3://lake:raw/events", "output"),
    }
    assert body["truncated"] is False
    nodes_by_id = {n["id"]: n for n in body["nodes"]}
    assert nodes_by_id["model:acme/churn:1"] == {
        "id": "model:acme/churn:1",
        "type": "model",
        "namespace": "acme",
        "name": "churn",
        "number": 1,
        "digest": scenario["churn"].digest,
        "status": "registered",
        "depth": 0,
    }
    assert nodes_by_id["dataset:s3://lake:raw/events"]["versions"] == [{"version": RAW, "digest": RAW}]
    assert nodes_by_id["job:pipelines:train"]["runs"] == [{"runId": str(scenario["runs"]["C"]), "state": "COMPLETE"}]


def test_downstream_and_both(personas, scenario):
    client = personas["owner"].client()
    down = graph(client, "dataset:s3://lake:raw/events", direction="downstream")
    assert ids(down) == [
        "dataset:s3://lake:raw/events",
        "job:pipelines:featurize",
        "dataset:s3://lake:features",
        "job:pipelines:train",
        "model:acme/churn:1",
        "job:pipelines:evaluate",
        "dataset:s3://lake:eval/report",
    ]
    both = graph(client, "job:pipelines:train", direction="both")
    assert set(ids(both)) == {
        "job:pipelines:train",
        "dataset:s3://lake:features",
        "model:acme/base:1",
        "model:acme/churn:1",
        "job:pipelines:featurize",
        "job:pipelines:evaluate",
        "dataset:s3://lake:raw/events",
        "dataset:s3://lake:eval/report",
        "job:etl:ingest",
    }
    # "both" is upstream plus downstream of the start, not everything connected: the evaluation's
    # other input (holdout) is a sibling, neither upstream nor downstream of the training job.
    assert "dataset:s3://lake:holdout" not in ids(both)


def test_version_granularity_shows_dataset_versions_and_runs(personas, scenario):
    body = graph(personas["owner"].client(), "model:acme/churn:1", direction="upstream", granularity="version", depth=2)
    runs = scenario["runs"]
    assert ids(body) == [
        "model:acme/churn:1",
        f"run:{runs['C']}",
        f"dataset:s3://lake:features#run:{runs['B']}",
        "model:acme/base:1",
    ]
    run_node = body["nodes"][1]
    assert run_node == {
        "id": f"run:{runs['C']}",
        "type": "run",
        "runId": str(runs["C"]),
        "state": "COMPLETE",
        "job": "job:pipelines:train",
        "depth": 1,
    }
    assert body["truncated"] is True  # the features version has a producer beyond depth 2


def test_start_at_a_dataset_version_or_a_run(personas, scenario):
    client = personas["owner"].client()
    runs = scenario["runs"]
    body = graph(client, f"dataset:s3://lake:raw/events#{RAW}", direction="downstream", depth=1, granularity="version")
    assert ids(body) == [f"dataset:s3://lake:raw/events#{RAW}", f"run:{runs['B']}"]
    body = graph(client, f"run:{runs['B']}", direction="upstream", granularity="version")
    assert ids(body) == [f"run:{runs['B']}", f"dataset:s3://lake:raw/events#{RAW}", f"run:{runs['A']}"]


def test_depth_limit_sets_truncated(personas, scenario):
    client = personas["owner"].client()
    body = graph(client, "model:acme/churn:1", direction="upstream", depth=2)
    assert ids(body) == ["model:acme/churn:1", "job:pipelines:train", "dataset:s3://lake:features", "model:acme/base:1"]
    assert body["truncated"] is True
    assert graph(client, "model:acme/churn:1", direction="upstream", depth=5)["truncated"] is False
    assert graph(client, "model:acme/churn:1", direction="upstream", depth=0) | {"edges": []} == {
        "nodeId": "model:acme/churn:1",
        "direction": "upstream",
        "depth": 0,
        "nodes": [graph(client, "model:acme/churn:1", direction="upstream")["nodes"][0]],
        "edges": [],
        "truncated": True,
    }


def test_row_budget_truncates(personas, scenario):
    start = nodes.resolve("model:acme/churn:1", personas["owner"].user)
    result = graphs.walk(user=personas["owner"].user, start=start, direction="upstream", budget=3)
    assert len(result.nodes) == 3
    assert result.truncated is True


def test_one_database_round_trip_per_traversal(personas, scenario):
    user = personas["outsider"].user  # the permission filter is part of the same statement
    start = nodes.resolve("dataset:s3://lake:raw/events", user)
    seen = graphs.visibility(user)  # the user's permissions, resolved before the walk
    assert seen.model_sql is not None
    with CaptureQueriesContext(connection) as queries:
        result = graphs.walk(user=user, start=start, direction="both", as_of=timezone.now(), seen=seen)
    assert len(queries.captured_queries) == 1
    assert queries.captured_queries[0]["sql"].startswith("WITH RECURSIVE")
    assert len(result.nodes) > 3


def test_node_ids_with_colons_in_namespaces(personas):
    client = personas["ci_bot"].client()
    run = uuid.uuid4()
    source = ol_dataset("postgres://db.internal:5432", "shop.public.orders")
    target = ol_dataset("postgres://db.internal:5432", "shop.public.orders:daily")
    post_event(
        client, run_event("COMPLETE", run, ("airflow://prod:8080", "dag.task"), inputs=[source], outputs=[target])
    )
    body = graph(client, "dataset:postgres://db.internal:5432:shop.public.orders", direction="downstream")
    assert ids(body) == [
        "dataset:postgres://db.internal:5432:shop.public.orders",
        "job:airflow://prod:8080:dag.task",
        "dataset:postgres://db.internal:5432:shop.public.orders%3Adaily",  # a name's ':' is escaped in its id
    ]
    assert graph(client, "job:airflow://prod:8080:dag.task")["nodes"][0]["namespace"] == "airflow://prod:8080"
    old_id = graph(client, "dataset:postgres://db.internal:5432:shop.public.orders:daily")  # unescaped: one reading
    assert old_id["nodes"][0]["id"] == "dataset:postgres://db.internal:5432:shop.public.orders%3Adaily"


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"nodeId": "table:x"}, 400, "nodeId"),
        ({"nodeId": "nothing"}, 400, "nodeId"),
        ({"nodeId": "dataset:s3://lake:nope"}, 404, None),
        ({"nodeId": "run:not-a-uuid"}, 400, "nodeId"),
        ({"nodeId": f"run:{uuid.uuid4()}"}, 404, None),
        ({"nodeId": "model:acme/churn"}, 400, "nodeId"),
        ({"nodeId": "model:acme/churn:9"}, 404, None),
        ({"nodeId": "release:prod:1"}, 404, None),  # governance resolves releases; there is none
        ({"nodeId": "release:prod"}, 400, "nodeId"),
        ({"nodeId": "model:acme/churn:1", "direction": "sideways"}, 400, "direction"),
        ({"nodeId": "model:acme/churn:1", "depth": "101"}, 400, "depth"),
        ({"nodeId": "model:acme/churn:1", "as_of": "yesterday"}, 400, "as_of"),
        ({"nodeId": "model:acme/churn:1", "colour": "red"}, 400, "colour"),
        ({}, 400, "nodeId"),
    ],
)
def test_bad_queries(personas, scenario, params, status, field):
    response = personas["owner"].client().get(GRAPH, params)
    assert response.status_code == status, response.json()
    if field:
        assert field in response.json()["error"]["detail"]


def test_as_of_returns_the_graph_as_it_was(personas, make_version):
    client = personas["ci_bot"].client()
    run = uuid.uuid4()
    post_event(client, run_event("START", run, ("p", "job"), inputs=[ol_dataset("s3://b", "in")]))
    time.sleep(0.01)
    t1 = timezone.now()
    time.sleep(0.01)
    post_event(client, run_event("COMPLETE", run, ("p", "job"), outputs=[ol_dataset("s3://b", "out")]))
    time.sleep(0.01)
    t2 = timezone.now()
    time.sleep(0.01)
    make_version("late", run_id=run)

    now = graph(client, "dataset:s3://b:in", direction="downstream")
    then1 = graph(client, "dataset:s3://b:in", direction="downstream", as_of=t1.isoformat())
    then2 = graph(client, "dataset:s3://b:in", direction="downstream", as_of=t2.isoformat())
    owner_now = graph(personas["owner"].client(), "dataset:s3://b:in", direction="downstream")
    assert ids(then1) == ["dataset:s3://b:in", "job:p:job"]
    assert then1["nodes"][1]["runs"] == [{"runId": str(run), "state": "START"}]
    assert ids(then2) == ["dataset:s3://b:in", "job:p:job", "dataset:s3://b:out"]
    assert then2["nodes"][1]["runs"][0]["state"] == "COMPLETE"
    assert ids(now) == ids(then2)  # the ci_bot may not view the owner's model
    assert ids(owner_now) == [*ids(then2), "model:acme/late:1"]
    # Before the output dataset existed, it is not a node at all.
    response = client.get(GRAPH, {"nodeId": "dataset:s3://b:out", "as_of": t1.isoformat()})
    assert response.status_code == 404


def test_model_registered_before_its_run_is_known_links_when_events_arrive(personas, make_version):
    run = uuid.uuid4()
    make_version("early", run_id=run)
    owner = personas["owner"].client()
    assert ids(graph(owner, "model:acme/early:1")) == ["model:acme/early:1"]
    post_event(owner, run_event("COMPLETE", run, ("p", "trainer"), inputs=[ol_dataset("s3://b", "x")]))
    assert ids(graph(owner, "model:acme/early:1", direction="upstream")) == [
        "model:acme/early:1",
        "job:p:trainer",
        "dataset:s3://b:x",
    ]


def test_linked_afterwards_and_unlinked_as_a_correction(personas, make_version):
    owner = personas["owner"].client()
    wrong, right = uuid.uuid4(), uuid.uuid4()
    ci = personas["ci_bot"].client()
    post_event(ci, run_event("COMPLETE", wrong, ("p", "train-old"), inputs=[ol_dataset("s3://b", "old")]))
    post_event(ci, run_event("COMPLETE", right, ("p", "train"), inputs=[ol_dataset("s3://b", "new")]))
    make_version("fixed", run_id=wrong)
    before = timezone.now()
    time.sleep(0.01)

    response = owner.post("/api/v1/lineage/links", {"nodeId": "model:acme/fixed:1", "runId": str(right)}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["recorded"] is True
    again = owner.post("/api/v1/lineage/links", {"nodeId": "model:acme/fixed:1", "runId": str(right)}, format="json")
    assert (again.status_code, again.json()["recorded"]) == (200, False)
    response = owner.post(
        "/api/v1/lineage/links",
        {
            "nodeId": "model:acme/fixed:1",
            "runId": str(wrong),
            "linked": False,
            "reason": "registered with the wrong run",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    nothing = owner.post(
        "/api/v1/lineage/links", {"nodeId": "model:acme/fixed:1", "runId": str(wrong), "linked": False}, format="json"
    )
    assert nothing.status_code == 409

    up = graph(owner, "model:acme/fixed:1", direction="upstream")
    assert ids(up) == ["model:acme/fixed:1", "job:p:train", "dataset:s3://b:new"]
    old = graph(owner, "model:acme/fixed:1", direction="upstream", as_of=before.isoformat())
    assert ids(old) == ["model:acme/fixed:1", "job:p:train-old", "dataset:s3://b:old"]
    # The correction is a new fact: relinking the wrong run later makes it count again.
    relink = owner.post("/api/v1/lineage/links", {"nodeId": "model:acme/fixed:1", "runId": str(wrong)}, format="json")
    assert relink.status_code == 201
    assert "job:p:train-old" in ids(graph(owner, "model:acme/fixed:1", direction="upstream"))


@pytest.mark.parametrize("run_id", [True, 1, 2**31])
def test_a_run_id_that_is_not_a_uuid_string_is_400(personas, make_version, run_id):
    """DRF's UUIDField took a JSON number as the UUID's integer (true as ...0001): a link to a run nobody named."""
    make_version("fixed")
    owner = personas["owner"].client()
    response = owner.post("/api/v1/lineage/links", {"nodeId": "model:acme/fixed:1", "runId": run_id}, format="json")
    assert response.status_code == 400, response.json()
    assert "runId" in response.json()["error"]["message"]


def test_linking_needs_register_permission_and_the_write_scope(personas, make_token, make_version):
    make_version("guarded")
    body = {"nodeId": "model:acme/guarded:1", "runId": str(uuid.uuid4())}
    assert personas["reviewer"].client().post("/api/v1/lineage/links", body, format="json").status_code == 403
    assert personas["outsider"].client().post("/api/v1/lineage/links", body, format="json").status_code == 404
    from tests.conftest import bearer

    read_only = bearer(make_token(personas["owner"].user, ["read"]))
    response = read_only.post("/api/v1/lineage/links", body, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (403, "insufficient_scope")


def test_outsider_cannot_see_model_nodes(personas, scenario):
    outsider = personas["outsider"].client()
    # Datasets, jobs and runs are visible to any reader; model versions only with view permission.
    down = graph(outsider, "dataset:s3://lake:raw/events", direction="downstream")
    assert ids(down) == [
        "dataset:s3://lake:raw/events",
        "job:pipelines:featurize",
        "dataset:s3://lake:features",
        "job:pipelines:train",
    ]
    assert all(not n["id"].startswith("model:") for n in down["nodes"])
    assert all("model:" not in e["source"] + e["target"] for e in down["edges"])
    # The walk does not pass through the hidden model: the evaluation that read it is not reached.
    assert "job:pipelines:evaluate" not in ids(down)
    response = outsider.get(GRAPH, {"nodeId": "model:acme/churn:1"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "node_not_found"
    # Same answer as for a model that does not exist: existence is not revealed.
    assert outsider.get(GRAPH, {"nodeId": "model:acme/nothing:1"}).json()["error"]["message"] == (
        "No lineage node 'model:acme/nothing:1'."
    )
    up = graph(outsider, "job:pipelines:train", direction="upstream")
    assert "model:acme/base:1" not in ids(up)
    # Reviewers see every model.
    assert "model:acme/churn:1" in ids(graph(personas["reviewer"].client(), "dataset:s3://lake:raw/events"))


def test_a_model_visible_only_by_object_permission(personas, scenario):
    outsider = personas["outsider"]
    assign_perm("view_registeredmodel", outsider.user, scenario["churn"].model)
    body = graph(outsider.client(), "model:acme/churn:1", direction="both")
    assert "model:acme/churn:1" in ids(body)
    assert "job:pipelines:evaluate" in ids(body)
    assert "model:acme/base:1" not in ids(body)  # still hidden


def test_declared_job_lineage_cycles_terminate(personas):
    client = personas["ci_bot"].client()
    job_event = {
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": "https://example.com/dbt",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent",
        "job": {"namespace": "dbt", "name": "incremental"},
        "inputs": [{"namespace": "pg://w", "name": "t"}],
        "outputs": [{"namespace": "pg://w", "name": "t"}],
    }
    post_event(client, job_event)
    body = graph(client, "dataset:pg://w:t", depth=10)
    assert ids(body) == ["dataset:pg://w:t", "job:dbt:incremental"]
    assert edges(body) == {
        ("dataset:pg://w:t", "job:dbt:incremental", "input"),
        ("job:dbt:incremental", "dataset:pg://w:t", "output"),
    }
    assert body["truncated"] is False
