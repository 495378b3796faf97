"""No N+1: a page's query count does not grow with the number of rows on it."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from governance import selectors, services, ui_selectors
from governance.models import PromotionRequest
from registry import services as registry
from tests.ui import builders


def count_queries(client, path) -> int:
    with CaptureQueriesContext(connection) as ctx:
        r = client.get(path)
    assert r.status_code == 200, r.content[:500]
    return len(ctx.captured_queries)


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def two_of_each(personas):
    admin, owner = personas["admin"].user, personas["owner"].user
    targets = [builders.target(admin, "prod"), builders.target(admin, "staging", stage="staging")]
    models = [builders.model(owner, "acme", "churn"), builders.model(owner, "acme", "fraud")]
    return targets, models


def add_requests(owner, targets, models, start, count):
    for i in range(start, start + count):
        model, target = models[i % 2], targets[(i // 2) % 2]
        card = builders.CARD_WITH_TRAINING_DATA if i % 3 else builders.CARD_WITHOUT_TRAINING_DATA
        v = builders.version(owner, model, f"q{i}", metrics={"auc": 0.8 + i / 1000}, card=card)
        if i % 4 == 0:
            registry.card_revision_add(actor=owner, version=v, content=builders.CARD_WITH_TRAINING_DATA)
        services.promotion_request(actor=owner, version=v, target=target)


def test_review_queue_queries_do_not_grow(personas, two_of_each):
    targets, models = two_of_each
    owner = personas["owner"].user
    services.policy_set(actor=personas["admin"].user, target=targets[0], model=models[1], rules=builders.POLICY)
    client = login(personas["reviewer"].user)
    add_requests(owner, targets, models, 0, 6)
    oldest = PromotionRequest.objects.order_by("created_at", "id").first().pk
    after_first, before_last = f"/reviews/?after={oldest}", "/reviews/?before={}"
    count_queries(client, "/reviews/")  # warm caches (content types, permissions)
    five = [count_queries(client, path) for path in ("/reviews/", after_first)]
    newest = PromotionRequest.objects.order_by("created_at", "id").last().pk
    five.append(count_queries(client, before_last.format(newest)))
    add_requests(owner, targets, models, 6, 52)
    newest = PromotionRequest.objects.order_by("created_at", "id").last().pk
    fifty = [count_queries(client, path) for path in ("/reviews/", after_first, before_last.format(newest))]
    for path in ("/reviews/", after_first, before_last.format(newest)):
        assert client.get(path).content.decode().count("Review #") == 25, path
    assert five == fifty, (five, fifty)


def test_model_page_queries_do_not_grow(personas, two_of_each):
    targets, models = two_of_each
    owner = personas["owner"].user
    client = login(owner)  # object permissions, not a model-wide role

    def add(start, count):
        for i in range(start, start + count):
            v = builders.version(owner, models[0], f"m{i}", card=builders.CARD_WITH_TRAINING_DATA)
            registry.alias_set(actor=owner, model=models[0], name=f"a{i}", number=v.number)
            builders.release(targets[i % 2], v, number=i + 1)

    add(0, 5)
    count_queries(client, "/models/acme/churn/")
    five = count_queries(client, "/models/acme/churn/")
    add(5, 20)
    twenty_five = count_queries(client, "/models/acme/churn/")
    assert five == twenty_five, (five, twenty_five)


def test_target_pages_queries_do_not_grow(personas, two_of_each):
    targets, models = two_of_each
    owner, admin = personas["owner"].user, personas["admin"].user
    client = login(personas["reviewer"].user)

    def add(start, count):
        for i in range(start, start + count):
            v = builders.version(owner, models[i % 2], f"t{i}")
            builders.release(targets[0], v, number=i + 1)
            services.promotion_request(actor=owner, version=v, target=targets[0])
            builders.target(admin, f"x{i:02d}")  # sorts after prod: prod stays on page 1

    add(0, 5)
    count_queries(client, "/targets/prod/")
    five = (count_queries(client, "/targets/prod/"), count_queries(client, "/targets/"))
    add(5, 20)
    twenty_five = (count_queries(client, "/targets/prod/"), count_queries(client, "/targets/"))
    assert five == twenty_five, (five, twenty_five)


def test_version_page_queries_are_bounded(personas, two_of_each):
    targets, models = two_of_each
    owner = personas["owner"].user
    v = builders.version(owner, models[0], "only", card=builders.CARD_WITH_TRAINING_DATA)
    services.promotion_request(actor=owner, version=v, target=targets[0])
    client = login(owner)
    path = f"/models/acme/churn/versions/{v.number}/"
    count_queries(client, path)
    before = count_queries(client, path)
    services.promotion_request(actor=owner, version=v, target=targets[1])
    for _ in range(3):
        registry.card_revision_add(actor=owner, version=v, content=builders.CARD_WITH_TRAINING_DATA)
    assert count_queries(client, path) == before


def test_batch_evaluation_matches_the_selector(personas, two_of_each):
    """evaluations_many() must give exactly the checks promotion_evaluate() gives (the API's list)."""
    targets, models = two_of_each
    owner, admin = personas["owner"].user, personas["admin"].user
    services.policy_set(
        actor=admin,
        target=targets[1],
        model=models[0],
        rules={**builders.POLICY, "allowed_licenses": ["mit"], "require_lineage": True, "require_signature": True},
    )
    services.policy_set(
        actor=admin, target=targets[0], rules={**builders.POLICY, "min_live_on_stage": {"stage": "staging", "hours": 0}}
    )
    add_requests(owner, targets, models, 0, 8)
    staging_version = PromotionRequest.objects.filter(target=targets[0]).first().version
    builders.release(targets[1], staging_version, 1)
    requests = list(PromotionRequest.objects.select_related("version__model", "target"))
    batch = ui_selectors.evaluations_many([(r.version, r.target) for r in requests])
    assert len(batch) == 8
    for r in requests:
        one = selectors.promotion_evaluate(version=r.version, target=r.target).checks
        assert batch[(r.version_id, r.target_id)].checks == one


def test_the_review_queue_is_planned_for_its_parameters(personas, two_of_each):
    """The queue's statements are prepared like every other (psycopg, after 5 runs), but PostgreSQL plans them
    for their values each time instead of settling on a generic plan after 5 more (core.planning)."""
    if connection.vendor != "postgresql":
        pytest.skip("plan caching is PostgreSQL's")
    targets, models = two_of_each
    add_requests(personas["owner"].user, targets, models, 0, 3)
    client = login(personas["reviewer"].user)
    for _ in range(14):
        assert client.get("/reviews/").content.decode().count("Review #") == 3
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
            ['SELECT COUNT(*)%FROM (SELECT%"governance_promotionrequest"%'],
        )
        plans = cursor.fetchall()
    assert plans, "the queue's count was never prepared, so this test checks nothing"
    assert [generic for generic, _ in plans] == [0] * len(plans), plans
    assert sum(custom for _, custom in plans) >= 9, plans
