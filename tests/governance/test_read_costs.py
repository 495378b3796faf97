"""What the governance reads cost: the review queue, the promotion page and the API's promotion detail cost a
number of queries (and storage requests) that does not grow with their rows, approvals or policy history, and
ask the storage or walk the lineage graph only when a policy rule looks at the answer."""

import contextlib
import hashlib
import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from governance import selectors, services, ui_selectors
from governance.models import PromotionRequest
from lineage import selectors as lineage_selectors
from registry import services as registry
from registry.storage import blob_key, blob_store
from tests.lineage.conftest import digest_of, make_version, ol_dataset, post_event, run_event, scenario  # noqa: F401
from tests.registry.helpers import s3_manifest
from tests.registry.test_s3 import BUCKET, moto_server, s3  # noqa: F401
from tests.ui import builders

LINEAGE_POLICY = {**builders.POLICY, "require_lineage": True}
DIGEST_POLICY = {**builders.POLICY, "metric_gates": [], "require_verified_digest": True}


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def count_queries(client, path) -> int:
    with CaptureQueriesContext(connection) as ctx:
        r = client.get(path)
    assert r.status_code == 200, r.content[:500]
    return len(ctx.captured_queries)


def produced_version(owner, model, seed: str):
    """A version whose training run (commit abc<seed>) read a digested dataset version."""
    run = uuid.uuid4()
    inputs = [ol_dataset("s3://lake", f"data/{seed}", version=digest_of(seed))]
    post_event(
        owner.client(), run_event("COMPLETE", run, ("pipelines", f"train-{seed}"), inputs=inputs, commit=f"abc{seed}")
    )
    version, _ = registry.version_register(
        actor=owner.user,
        model=model,
        content=registry.VersionContent(
            manifest=s3_manifest(seed.encode()),
            artifact_uri="s3://bucket/models/x",
            metrics={"auc": 0.9},
            source={"commit": "c0ffee"},
            run_id=run,
        ),
    )
    registry.card_revision_add(actor=owner.user, version=version, content=builders.CARD_WITH_TRAINING_DATA)
    return version


def test_review_queue_queries_do_not_grow_under_require_lineage(personas):
    """One lineage walk (and one read of the producing runs) for the whole page, not one per row."""
    owner = personas["owner"]
    prod, churn = builders.target(personas["admin"].user, policy=LINEAGE_POLICY), builders.model(owner.user)
    client = login(personas["reviewer"].user)

    def add(start, stop):
        for i in range(start, stop):
            if i % 2:
                version = builders.version(owner.user, churn, f"l{i}", card=builders.CARD_WITH_TRAINING_DATA)
            else:
                version = produced_version(owner, churn, f"l{i}")
            services.promotion_request(actor=owner.user, version=version, target=prod)

    add(0, 2)
    count_queries(client, "/reviews/")  # warm caches (content types, permissions)
    two = count_queries(client, "/reviews/")
    add(2, 12)
    twelve = count_queries(client, "/reviews/")
    assert client.get("/reviews/").content.decode().count("Review #") == 12
    assert twelve == two, (two, twelve)


def test_batched_lineage_gives_the_per_version_summary(personas, scenario, make_version):  # noqa: F811
    """version_summaries() answers for each version exactly as version_summary() (a walk from it alone), and the queue's
    batch evaluation exactly as promotion_evaluate(), on a graph where versions share upstream nodes."""
    owner = personas["owner"]
    runs = scenario["runs"]
    orphan = make_version("orphan")
    linked = make_version("linked")  # produced by the training run C, linked afterwards
    link = {"nodeId": "model:acme/linked:1", "runId": str(runs["C"]), "reason": "found the run"}
    assert owner.client().post("/api/v1/lineage/links", link, format="json").status_code == 201
    # a model trained on churn:1 (and a dataset of its own): everything upstream of churn:1 is upstream of it
    distilled_run = uuid.uuid4()
    inputs = [ol_dataset("registry", "acme/churn:1"), ol_dataset("s3://lake", "extra", version=digest_of("extra"))]
    post_event(owner.client(), run_event("COMPLETE", distilled_run, ("pipelines", "distil"), inputs=inputs))
    distilled = make_version("distilled", run_id=distilled_run)
    versions = [scenario["churn"], scenario["base"], orphan, linked, distilled]

    batch = lineage_selectors.version_summaries(versions)
    assert batch == {v.pk: lineage_selectors.version_summary(version=v) for v in versions}
    assert batch[distilled.pk]["datasets_with_digest"] == 2 and batch[distilled.pk]["commit_from"] == "source"
    assert batch[linked.pk]["code_commit"] == "def456"

    prod = builders.target(personas["admin"].user, policy={**LINEAGE_POLICY, "require_verified_digest": True})
    for version in versions:
        services.promotion_request(actor=owner.user, version=version, target=prod)
    requests = list(PromotionRequest.objects.select_related("version__model", "target"))
    evaluations = ui_selectors.evaluations_many([(r.version, r.target) for r in requests])
    for r in requests:
        assert (
            evaluations[(r.version_id, r.target_id)].checks
            == selectors.promotion_evaluate(version=r.version, target=r.target).checks
        )
    lineage = {
        r.version_id: next(c for c in evaluations[(r.version_id, r.target_id)].checks if c.rule == "lineage")
        for r in requests
    }
    assert [lineage[v.pk].passed for v in versions] == [True, False, False, True, True]


def test_promotion_page_and_api_queries_do_not_grow_with_approvals(personas):
    admin, owner = personas["admin"].user, personas["owner"].user
    prod = builders.target(admin, policy={**builders.POLICY, "approvals_required": 20, "metric_gates": []})
    version = builders.version(owner, builders.model(owner), "v", card=builders.CARD_WITH_TRAINING_DATA)
    request = services.promotion_request(actor=owner, version=version, target=prod)
    page, api = login(personas["reviewer"].user), personas["reviewer"].client()
    paths = ((page, f"/promotions/{request.pk}/"), (api, f"/api/v1/promotions/{request.pk}"))
    services.promotion_approve(actor=builders.reviewer("r0"), request_id=request.pk)
    for client, path in paths:
        count_queries(client, path)
    one = [count_queries(client, path) for client, path in paths]
    for i in range(1, 6):
        services.promotion_approve(actor=builders.reviewer(f"r{i}"), request_id=request.pk)
    assert len(api.get(paths[1][1]).json()["approvals"]) == 6
    assert [count_queries(client, path) for client, path in paths] == one


@contextlib.contextmanager
def rows_read(table: str):
    """The number of rows each SELECT from `table` returns, as the driver reports it (None where it does not:
    SQLite's rowcount is -1 for a SELECT)."""
    counted = []

    def wrapper(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith("SELECT") and f'FROM "{table}"' in sql:
            counted.append(context["cursor"].rowcount if connection.vendor == "postgresql" else None)
        return result

    with connection.execute_wrapper(wrapper):
        yield counted


def test_review_queue_reads_only_the_newest_policy_versions(personas):
    """Every policy version is kept (approvals bind to them); the queue reads only the current ones."""
    admin, owner = personas["admin"].user, personas["owner"].user
    prod, churn, fraud = builders.target(admin), builders.model(owner), builders.model(owner, name="fraud")
    mine = {**builders.POLICY, "approver_groups": ["reviewers"]}
    theirs = {**builders.POLICY, "approver_groups": ["auditors"]}
    for i in range(15):  # the target's policy and churn's override, each in turn naming the reviewers or not
        services.policy_set(actor=admin, target=prod, rules=mine if i % 2 == 0 else theirs)
        services.policy_set(actor=admin, target=prod, model=churn, rules=theirs if i % 2 == 0 else mine)
    for model in (churn, fraud):
        version = builders.version(owner, model, model.name, card=builders.CARD_WITH_TRAINING_DATA)
        services.promotion_request(actor=owner, version=version, target=prod)
    client = login(personas["reviewer"].user)
    with rows_read("governance_policy") as counted:
        body = client.get("/reviews/").content.decode()
    # the newest target policy names the reviewers, the newest churn override does not: only fraud waits for them
    assert "acme/fraud" in body and "acme/churn" not in body
    assert len(counted) == 2, counted  # the queue's filter, then the page's rules
    if connection.vendor == "postgresql":
        assert counted == [2, 1], counted  # the target's and churn's newest, then the target's: not all 31


def stored_version(owner, model, seed: str):
    """A registry:// version of two files, uploaded for the model."""
    contents = [f"{seed}-{i}".encode() for i in range(2)]
    for content in contents:
        registry.blob_upload(
            model=model, chunks=[content], sha256=hashlib.sha256(content).hexdigest(), size=len(content)
        )
    version, _ = registry.version_register(
        actor=owner, model=model, content=registry.VersionContent(manifest=s3_manifest(*contents), metrics={"auc": 0.9})
    )
    assert version.artifact_uri.startswith(registry.REGISTRY_URI)
    registry.card_revision_add(actor=owner, version=version, content=builders.CARD_WITH_TRAINING_DATA)
    return version


@pytest.fixture
def heads(s3):  # noqa: F811
    """The S3 HEAD requests the registry sends (the blob store's "is this blob stored?"), as they are sent."""
    sent = []

    def record(params, **_):
        sent.append(params["Key"])

    client = blob_store().client
    client.meta.events.register("before-parameter-build.s3.HeadObject", record)
    yield sent
    client.meta.events.unregister("before-parameter-build.s3.HeadObject", record)


def test_the_queue_asks_the_storage_nothing_and_the_request_page_only_under_the_rule(personas, heads, s3):  # noqa: F811
    admin, owner = personas["admin"].user, personas["owner"].user
    churn = builders.model(owner)
    strict = builders.target(admin, "prod", policy=DIGEST_POLICY)
    lax = builders.target(admin, "staging", stage="staging", policy={**DIGEST_POLICY, "require_verified_digest": False})
    reviewer = login(personas["reviewer"].user)

    def add(start, stop):
        for i in range(start, stop):
            services.promotion_request(actor=owner, version=stored_version(owner, churn, f"s{i}"), target=strict)

    add(0, 2)
    count_queries(reviewer, "/reviews/")
    heads.clear()
    two = count_queries(reviewer, "/reviews/")
    add(2, 8)
    heads.clear()
    eight = count_queries(reviewer, "/reviews/")
    assert (heads, eight) == ([], two)  # was a HEAD per file and row: 16 for 8 rows

    # the queue states the rule as registration left it; the request page, the API and approval ask the storage
    request = PromotionRequest.objects.filter(target=strict).select_related("version__model", "target").first()
    version = request.version
    (queued,) = [
        c
        for c in ui_selectors.evaluations_many([(version, strict)])[(version.pk, strict.pk)].checks
        if c.rule == "digest_verified"
    ]
    assert queued.passed and "when the version was registered" in queued.reason
    heads.clear()
    assert reviewer.get(f"/promotions/{request.pk}/").status_code == 200
    assert sorted(heads) == sorted(blob_key(f["sha256"]) for f in version.manifest["files"])

    # under a policy without the rule nothing asks the storage: request page, API detail, dry run, approval
    lax_request = services.promotion_request(actor=owner, version=version, target=lax)
    heads.clear()
    api = personas["reviewer"].client()
    assert reviewer.get(f"/promotions/{lax_request.pk}/").status_code == 200
    assert api.get(f"/api/v1/promotions/{lax_request.pk}").status_code == 200
    body = {"model": "acme/churn", "version": version.number, "target": "staging"}
    assert personas["owner"].client().post("/api/v1/promotions/dry-run", body, format="json").status_code == 200
    assert api.post(f"/api/v1/promotions/{lax_request.pk}/approve", {}, format="json").status_code == 200
    assert heads == []  # was a HEAD per file for each

    # a file gone from the bucket behind the registry's back: the request page and approval see it
    s3.delete_object(Bucket=BUCKET, Key=blob_key(version.manifest["files"][0]["sha256"]))
    detail = api.get(f"/api/v1/promotions/{request.pk}").json()
    (check,) = [c for c in detail["checks"] if c["rule"] == "digest_verified"]
    assert not check["passed"] and "model-0.bin" in check["reason"]
    refused = api.post(f"/api/v1/promotions/{request.pk}/approve", {}, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "rules_failing"


def test_the_trail_asks_the_storage_nothing_under_a_policy_without_the_rule(personas, heads, s3):  # noqa: F811
    admin, owner = personas["admin"].user, personas["owner"].user
    churn = builders.model(owner)
    lax = builders.target(admin, "staging", stage="staging", policy={**DIGEST_POLICY, "require_verified_digest": False})
    version = stored_version(owner, churn, "t0")
    services.promotion_request(actor=owner, version=version, target=lax)
    heads.clear()
    response = personas["auditor"].client().get(f"/api/v1/lineage/trail?nodeId=model:acme/churn:{version.number}")
    assert response.status_code == 200, response.content[:300]
    sections = response.json()["trail"]["sections"]
    assert any(section.get("checks") for section in sections.values()), sections  # the policy is evaluated
    assert heads == []
