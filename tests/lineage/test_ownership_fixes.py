"""Three holes around run ownership and idempotent ingest, each reproduced through the API:

1. a JobEvent (which any lineage writer may send, and which carries no run) set the commit and kind of
   someone else's training run: a run's own attributes are now only what that run sent;
2. another team could link its model to a run that produced a version of ours (or register a version with
   its run_id) and so lock us out of our own run: naming a run as a producer now needs the same permission
   as adding to it;
3. re-sending a RunEvent (HTTP clients retry POSTs) re-resolved inputs sent without a version, so an
   incremental job (reads and writes table t) was recorded as reading its own output.
"""

import uuid

from lineage import selectors as lineage_selectors
from lineage.choices import EdgeKind, NodeType
from lineage.models import DatasetVersion, Edge, LineageEvent, Run, VersionRunLink
from registry.models import ModelVersion
from tests.lineage.conftest import PRODUCER, ol_dataset, post_event, run_event
from tests.registry.helpers import register_body, s3_manifest

JOB = ("ml", "train-churn")
SOURCE_COMMIT = "c0ffee" * 6 + "c0ff"  # 40 hex digits


def create_model(client, namespace: str, name: str) -> None:
    response = client.post("/api/v1/models/", {"namespace": namespace, "name": name}, format="json")
    assert response.status_code == 201, response.json()


def register(client, namespace: str, name: str, *, run_id=None, weights: bytes = b"w", status: int = 201):
    body = register_body(s3_manifest(weights), source={"commit": SOURCE_COMMIT})
    if run_id is not None:
        body["run_id"] = str(run_id)
    response = client.post(f"/api/v1/models/{namespace}/{name}/versions/", body, format="json")
    assert response.status_code == status, response.json()
    return response.json()


def link(client, node_id: str, run, *, linked: bool = True):
    body = {"nodeId": node_id, "runId": str(run), "linked": linked, "reason": "test"}
    return client.post("/api/v1/lineage/links", body, format="json")


def job_event(job: tuple[str, str], *, commit: str, job_type: str) -> dict:
    """A JobEvent for the job, its facets as a training run would send them (but with no run)."""
    facets = run_event("START", uuid.uuid4(), job, commit=commit, job_type=job_type)["job"]["facets"]
    return {
        "eventTime": "2026-01-02T00:00:00Z",
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent",
        "job": {"namespace": job[0], "name": job[1], "facets": facets},
        "inputs": [],
        "outputs": [],
    }


# --- 1. a JobEvent does not speak for a run -------------------------------------------------------


def test_a_job_event_from_anyone_does_not_set_a_runs_commit_or_kind(personas):
    run = uuid.uuid4()
    owner, outsider = personas["owner"].client(), personas["outsider"].client()
    post_event(owner, run_event("START", run, JOB))  # no sourceCodeLocation, no jobType
    post_event(owner, run_event("COMPLETE", run, JOB, time="2026-01-01T01:00:00Z"))
    create_model(owner, "acme", "churn")
    register(owner, "acme", "churn", run_id=run)
    version = ModelVersion.objects.get(model__namespace="acme", model__name="churn", number=1)
    before = lineage_selectors.version_summary(version=version)
    assert (before["code_commit"], before["commit_from"]) == (SOURCE_COMMIT, "source")

    # The outsider may not add to the run ...
    refused = outsider.post("/api/v1/lineage", run_event("OTHER", run, JOB, commit="f0f0f0"), format="json")
    assert refused.status_code == 403
    # ... and a JobEvent for its job is still accepted (static lineage, no run) ...
    post_event(outsider, job_event(JOB, commit="f0f0f0", job_type="TRAINING"))

    # ... but says nothing about the run: not its commit (require_lineage), nor its code or kind (the trail).
    assert lineage_selectors.version_summary(version=version) == before
    trail = owner.get("/api/v1/lineage/trail", {"nodeId": "model:acme/churn:1"})
    assert trail.status_code == 200, trail.json()
    (entry,) = trail.json()["trail"]["runs"]
    assert entry["id"] == f"run:{run}"
    assert entry["code"] is None and entry["kind"] == "other"
    assert "f0f0f0" not in trail.content.decode()

    # What the run itself sends is its commit and kind, as before.
    post_event(owner, run_event("OTHER", run, JOB, commit="abc123", job_type="TRAINING"))
    after = lineage_selectors.version_summary(version=version)
    assert (after["code_commit"], after["commit_from"]) == ("abc123", f"run:{run}")
    (entry,) = owner.get("/api/v1/lineage/trail", {"nodeId": "model:acme/churn:1"}).json()["trail"]["runs"]
    assert entry["code"]["commit"] == "abc123" and entry["kind"] == "training"


# --- 2. naming someone else's run as a producer ----------------------------------------------------


def test_another_team_cannot_link_its_model_to_our_run(personas):
    run = uuid.uuid4()
    owner, other = personas["owner"].client(), personas["ci_bot"].client()  # ci_bot: another team
    post_event(owner, run_event("START", run, JOB))
    create_model(owner, "acme", "churn")
    register(owner, "acme", "churn", run_id=run)
    create_model(other, "teamb", "x")
    register(other, "teamb", "x")
    links = VersionRunLink.objects.count()

    refused = link(other, "model:teamb/x:1", run)
    assert refused.status_code == 403, refused.json()
    message = refused.json()["error"]["message"]
    assert f"Run {run}" in message and "register_version" in message and "teamb/x:1" in message
    assert "acme/churn" not in message  # a model the caller may not view is not named
    assert VersionRunLink.objects.count() == links
    assert link(other, "model:teamb/x:1", run).status_code == 403  # no state in which it got through

    # The owner still speaks for their run.
    post_event(owner, run_event("COMPLETE", run, JOB, time="2026-01-01T01:00:00Z"))
    assert LineageEvent.objects.filter(run__run_uuid=run).count() == 2


def test_another_team_cannot_register_a_version_naming_our_run(personas):
    run = uuid.uuid4()
    owner, other = personas["owner"].client(), personas["ci_bot"].client()
    post_event(owner, run_event("START", run, JOB))
    create_model(owner, "acme", "churn")
    register(owner, "acme", "churn", run_id=run)
    create_model(other, "teamb", "x")

    refused = register(other, "teamb", "x", run_id=run, status=403)
    message = refused["error"]["message"]
    assert f"Run {run}" in message and "register_version" in message and "teamb/x" in message
    assert not ModelVersion.objects.filter(model__namespace="teamb").exists()

    post_event(owner, run_event("COMPLETE", run, JOB, time="2026-01-01T01:00:00Z"))
    assert LineageEvent.objects.filter(run__run_uuid=run).count() == 2


def test_the_owner_still_links_and_registers_against_their_runs(personas):
    run, fresh = uuid.uuid4(), uuid.uuid4()
    owner, other = personas["owner"].client(), personas["ci_bot"].client()
    post_event(owner, run_event("START", run, JOB))
    create_model(owner, "acme", "churn")
    create_model(owner, "acme", "churn-small")
    register(owner, "acme", "churn", run_id=run)
    # A second version, and another model of theirs, from the same run: by registration and by link.
    register(owner, "acme", "churn", run_id=run, weights=b"w2")
    register(owner, "acme", "churn-small")
    assert link(owner, "model:acme/churn-small:1", run).status_code == 201
    assert link(owner, "model:acme/churn-small:1", run).status_code == 200  # idempotent
    assert link(owner, "model:acme/churn-small:1", run, linked=False).status_code == 201
    # A run with no linked model version is named by whoever registers the version, as before.
    create_model(other, "teamb", "x")
    register(other, "teamb", "x", run_id=fresh)
    post_event(other, run_event("START", fresh, ("teamb", "train")))
    register(other, "teamb", "x", weights=b"x2")
    assert link(other, "model:teamb/x:2", fresh).status_code == 201
    post_event(owner, run_event("COMPLETE", run, JOB, time="2026-01-01T01:00:00Z"))


# --- 3. re-sending an event is idempotent ----------------------------------------------------------


def input_versions(run_uuid) -> list[str]:
    run = Run.objects.get(run_uuid=run_uuid)
    src = Edge.objects.filter(
        dst_type=NodeType.RUN, dst_id=run.pk, kind=EdgeKind.INPUT, src_type=NodeType.DATASET_VERSION
    ).values("src_id")
    return sorted(DatasetVersion.objects.filter(pk__in=src).values_list("version", flat=True))


def test_resending_an_incremental_jobs_event_changes_nothing(personas):
    client = personas["ci_bot"].client()
    earlier, run, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    table = ol_dataset("pg://w", "t")
    post_event(client, run_event("COMPLETE", earlier, ("dbt", "incremental"), outputs=[table]))
    complete = run_event("COMPLETE", run, ("dbt", "incremental"), inputs=[table], outputs=[table])
    post_event(client, complete)
    assert input_versions(run) == [f"run:{earlier}"]
    edges = Edge.objects.count()

    # The client's HTTP transport retried the POST: the same event (200, nothing recorded), or the same facts
    # in another one (here another eventType), which resolves its input again.
    retried = {**complete, "eventType": "OTHER"}
    assert client.post("/api/v1/lineage", complete, format="json").status_code == 200
    post_event(client, retried)
    assert Edge.objects.count() == edges
    assert input_versions(run) == [f"run:{earlier}"]  # not its own output: no self-cycle

    # Another run writes t meanwhile: a retry still names what the run read then.
    post_event(client, run_event("COMPLETE", other, ("dbt", "incremental"), outputs=[table]))
    edges = Edge.objects.count()
    assert client.post("/api/v1/lineage", complete, format="json").status_code == 200
    post_event(client, {**retried, "eventTime": "2026-01-01T00:00:01Z"})
    assert Edge.objects.count() == edges
    assert input_versions(run) == [f"run:{earlier}"]


def test_a_run_never_reads_its_own_output_through_an_unversioned_input(personas):
    client = personas["ci_bot"].client()
    run = uuid.uuid4()
    table = ol_dataset("pg://w", "t")
    # Its output is announced first (START), its input only with COMPLETE.
    post_event(client, run_event("START", run, ("dbt", "incremental"), outputs=[table]))
    post_event(client, run_event("COMPLETE", run, ("dbt", "incremental"), inputs=[table], outputs=[table]))
    assert input_versions(run) == [""]  # the table's initial version, not run:<run>
    graph = client.get("/api/v1/lineage/graph", {"nodeId": f"run:{run}", "granularity": "version", "depth": 5})
    edges = {(e["source"], e["target"], e["kind"]) for e in graph.json()["edges"]}
    assert (f"dataset:pg://w:t#run:{run}", f"run:{run}", "input") not in edges
