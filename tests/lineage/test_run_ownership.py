"""A run that produced a model version speaks for that model: its inputs and code commit feed the policy's
require_lineage gate and the lineage trail. Only someone who may register versions of the model may add to
it; anyone with lineage:write could before (a review forged a dataset and a commit that way)."""

import uuid

from lineage import selectors as lineage_selectors
from lineage.models import LineageEvent
from tests.lineage.conftest import digest_of, ol_dataset, post_event, run_event


def forged(run: uuid.UUID) -> dict:
    return run_event(
        "COMPLETE",
        run,
        ("ml", "train-churn"),
        commit="e0e0e0",
        time="2026-01-02T00:00:00Z",
        inputs=[ol_dataset("s3://fake", "approved-data", version=digest_of("fake"))],
    )


def test_only_those_who_may_register_the_model_add_to_the_run_that_produced_it(personas, make_version):
    run = uuid.uuid4()
    owner = personas["owner"].client()
    post_event(owner, run_event("START", run, ("ml", "train-churn"), commit="abc123"))
    version = make_version("churn", run_id=run)
    before = lineage_selectors.version_summary(version=version)
    events = LineageEvent.objects.count()

    for persona, shown in (("outsider", False), ("auditor", True), ("ci_bot", False)):
        refused = personas[persona].client().post("/api/v1/lineage", forged(run), format="json")
        assert refused.status_code == 403, (persona, refused.json())
        message = refused.json()["error"]["message"]
        assert f"Run {run}" in message and "register_version" in message
        assert ("acme/churn" in message) == shown  # a model the caller may not view is not named
    assert LineageEvent.objects.count() == events
    assert lineage_selectors.version_summary(version=version) == before

    post_event(owner, forged(run))  # the model's owner may
    after = lineage_selectors.version_summary(version=version)
    assert after["code_commit"] == "e0e0e0" and after["datasets_with_digest"] == 1


def test_a_version_registered_before_its_run_sent_events_is_protected_too(personas, make_version):
    """A version may name its run before the run's first OpenLineage event arrives."""
    run = uuid.uuid4()
    version = make_version("churn", run_id=run)
    refused = personas["outsider"].client().post("/api/v1/lineage", forged(run), format="json")
    assert refused.status_code == 403
    assert lineage_selectors.version_summary(version=version)["producing_runs"] == []


def test_a_run_that_produced_no_model_version_takes_events_from_any_writer(personas):
    run = uuid.uuid4()
    post_event(personas["owner"].client(), run_event("START", run, ("etl", "ingest")))
    post_event(personas["outsider"].client(), run_event("COMPLETE", run, ("etl", "ingest")))
    assert LineageEvent.objects.filter(run__run_uuid=run).count() == 2


def test_links_decide_which_runs_speak_for_a_model(personas, make_version):
    """The latest link fact wins: a run linked afterwards is protected, one unlinked as a correction is not."""
    wrong, right = uuid.uuid4(), uuid.uuid4()
    owner, outsider = personas["owner"].client(), personas["outsider"].client()
    make_version("churn", run_id=wrong)
    post_event(owner, run_event("START", right, ("ml", "train-churn")))
    post_event(outsider, run_event("START", uuid.uuid4(), ("ml", "train-churn")))  # an unrelated run
    for run, linked in ((right, True), (wrong, False)):
        body = {"nodeId": "model:acme/churn:1", "runId": str(run), "linked": linked, "reason": "fix"}
        assert owner.post("/api/v1/lineage/links", body, format="json").status_code == 201
    assert outsider.post("/api/v1/lineage", forged(right), format="json").status_code == 403
    wrong_job = run_event("COMPLETE", wrong, ("ml", "train-churn"))
    assert outsider.post("/api/v1/lineage", wrong_job, format="json").status_code == 201
