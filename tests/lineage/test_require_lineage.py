"""The policy rule `require_lineage` on real lineage: dataset digests upstream of the version's run and
the code commit of that run (else the version's source), read from the lineage graph."""

import hashlib
import uuid

import pytest

from governance import selectors
from governance import services as governance
from lineage import selectors as lineage_selectors
from registry import services as registry_services
from tests.lineage.conftest import RAW, ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

RULES = {"approvals_required": 1, "approver_groups": ["reviewers"], "require_lineage": True}


def lineage_check(version, target):
    (check,) = [c for c in selectors.promotion_evaluate(version=version, target=target).checks if c.rule == "lineage"]
    return check.passed, check.reason


def register(owner, name: str, *, source: dict, run_id=None):
    model = registry_services.model_create(actor=owner, namespace="acme", name=name)
    body = name.encode()
    manifest = {"files": [{"path": "m.bin", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}]}
    version, _ = registry_services.version_register(
        actor=owner,
        model=model,
        content=registry_services.VersionContent(
            manifest=manifest, artifact_uri="s3://bucket/x", source=source, run_id=run_id
        ),
    )
    return version


@pytest.fixture
def prod(personas):
    return governance.target_create(
        actor=personas["admin"].user, name="prod", kind="self_hosted", stage="production", config={}, policy=RULES
    )


def test_passes_with_a_dataset_digest_upstream_and_the_runs_commit(personas, scenario, prod):
    churn = scenario["churn"]  # registered with source.commit c0ffee; its training run ran def456
    assert lineage_check(churn, prod) == (True, "lineage names 1 dataset version(s) with digests and commit def456.")
    summary = lineage_selectors.version_summary(version=churn)
    assert summary == {
        "datasets_with_digest": 1,
        "datasets": [f"dataset:s3://lake:raw/events#{RAW}"],  # two hops up: raw -> featurize -> features -> train
        "producing_runs": [f"run:{scenario['runs']['C']}"],
        "code_commit": "def456",
        "commit_from": f"run:{scenario['runs']['C']}",
    }


def test_fails_without_lineage_and_passes_once_the_run_is_linked(personas, scenario, prod):
    owner = personas["owner"]
    orphan = register(owner.user, "orphan", source={})
    assert lineage_check(orphan, prod) == (
        False,
        "lineage has no input dataset version with a digest and no code commit.",
    )
    # approval is blocked by the failing rule, through the API
    request = governance.promotion_request(actor=owner.user, version=orphan, target=prod)
    refused = personas["reviewer"].client().post(f"/api/v1/promotions/{request.pk}/approve", {}, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "rules_failing"
    assert "lineage: lineage has no input dataset version" in refused.json()["error"]["message"]

    # the training run that produced it is linked afterwards: the same rule now passes
    link = {"nodeId": "model:acme/orphan:1", "runId": str(scenario["runs"]["C"]), "reason": "found the run"}
    assert owner.client().post("/api/v1/lineage/links", link, format="json").status_code == 201
    assert lineage_check(orphan, prod) == (True, "lineage names 1 dataset version(s) with digests and commit def456.")
    approved = personas["reviewer"].client().post(f"/api/v1/promotions/{request.pk}/approve", {}, format="json")
    assert approved.status_code == 200 and approved.json()["state"] == "approved", approved.json()


def test_datasets_without_digests_do_not_count_and_the_source_commit_is_the_fallback(personas, prod):
    owner = personas["owner"]
    run = uuid.uuid4()
    # a run with no sourceCodeLocation reading a dataset version that states no digest
    post_event(
        owner.client(),
        run_event("COMPLETE", run, ("pipelines", "fit"), inputs=[ol_dataset("s3://lake", "clicks", version="2026-02")]),
    )
    version = register(owner.user, "clicks", source={"commit": "abc999"}, run_id=run)
    assert lineage_check(version, prod) == (False, "lineage has no input dataset version with a digest.")
    summary = lineage_selectors.version_summary(version=version)
    assert (summary["datasets_with_digest"], summary["code_commit"], summary["commit_from"]) == (0, "abc999", "source")

    # a later run of the same job reads a digested version and produces the next version
    digest = "sha256:" + hashlib.sha256(b"clicks v2").hexdigest()
    run2 = uuid.uuid4()
    post_event(
        owner.client(),
        run_event("COMPLETE", run2, ("pipelines", "fit"), inputs=[ol_dataset("s3://lake", "clicks", version=digest)]),
    )
    model = version.model
    body = b"clicks 2"
    manifest = {"files": [{"path": "m.bin", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}]}
    v2, _ = registry_services.version_register(
        actor=owner.user,
        model=model,
        content=registry_services.VersionContent(
            manifest=manifest, artifact_uri="s3://bucket/x", source={"commit": "abc999"}, run_id=run2
        ),
    )
    assert lineage_check(v2, prod) == (True, "lineage names 1 dataset version(s) with digests and commit abc999.")
    assert lineage_check(version, prod)[0] is False  # the first version's lineage did not change
