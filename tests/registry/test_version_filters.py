import base64
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.registry.helpers import register_body, s3_manifest

BASE = "/api/v1/models/acme/churn"


@pytest.fixture
def owner(personas):
    client = personas["owner"].client()
    client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json")
    specs = [
        ({"auc": 0.80, "f1": 0.7}, {"stage": "dev"}),
        ({"auc": 0.90, "f1": 0.8}, {"stage": "prod", "team": "a"}),
        ({"auc": 0.95}, {"stage": "prod"}),
        ({"auc": {"value": 0.99, "dataset": "holdout", "split": "test"}}, {}),
    ]
    for i, (metrics, tags) in enumerate(specs):
        r = client.post(
            f"{BASE}/versions/", register_body(s3_manifest(f"v{i}".encode()), metrics=metrics, tags=tags), format="json"
        )
        assert r.status_code == 201, r.json()
    client.patch(f"{BASE}/versions/1", {"status": "deprecated"}, format="json")
    return client


def numbers(client, query):
    r = client.get(f"{BASE}/versions/{query}")
    assert r.status_code == 200, r.json()
    return [v["number"] for v in r.json()["results"]]


def test_newest_first(owner):
    assert numbers(owner, "") == [4, 3, 2, 1]


def test_metric_thresholds(owner):
    assert numbers(owner, "?metric=auc>=0.9") == [4, 3, 2]
    assert numbers(owner, "?metric=auc>0.9") == [4, 3]
    assert numbers(owner, "?metric=auc>=0.9&metric=f1>0.75") == [2]
    assert numbers(owner, "?metric=auc<0.85") == [1]


def test_metric_details_kept(owner):
    v4 = owner.get(f"{BASE}/versions/4").json()
    assert v4["metrics"] == {"auc": 0.99}
    assert v4["metric_sources"] == {"auc": {"dataset": "holdout", "split": "test"}}


def test_tags_and_status(owner):
    assert numbers(owner, "?tag=stage:prod") == [3, 2]
    assert numbers(owner, "?tag=team") == [2]
    assert numbers(owner, "?status=deprecated") == [1]
    assert numbers(owner, "?status=registered&tag=stage:prod") == [3, 2]


def test_created_range(owner):
    hour_ago = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert numbers(owner, f"?created_after={hour_ago}") == [4, 3, 2, 1]
    assert numbers(owner, f"?created_before={hour_ago}") == []


def test_cursor_pagination(owner):
    first = owner.get(f"{BASE}/versions/?page_size=3").json()
    assert [v["number"] for v in first["results"]] == [4, 3, 2]
    second = owner.get(first["next"]).json()
    assert [v["number"] for v in second["results"]] == [1]
    assert second["next"] is None


def test_keys_with_double_underscores_are_keys_not_lookups(owner):
    body = register_body(s3_manifest(b"v5"), metrics={"auc__gt": 0.5}, tags={"stage__contains": "prod"})
    assert owner.post(f"{BASE}/versions/", body, format="json").status_code == 201
    assert numbers(owner, "?tag=stage__contains:prod") == [5]  # not versions 2 and 3, whose stage contains prod
    assert numbers(owner, "?tag=stage__contains") == [5]
    assert numbers(owner, "?metric=auc__gt>=0.5") == [5]  # was a 500: jsonb has no lookup "gt" then "gte"
    assert numbers(owner, "?metric=auc__gt<0.5") == []


def test_forged_cursor_is_the_invalid_cursor_404(owner):
    forged = base64.b64encode(b"p=abc").decode()  # the position of a -number ordering must be a number
    r = owner.get(f"{BASE}/versions/?cursor={forged}")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Invalid cursor"


@pytest.mark.parametrize(
    "query, field",
    [
        ("?metric=auc>>1", "metric"),
        ("?metric=auc>=1e400", "metric"),
        ("?status=retired", "status"),
        ("?created_after=yesterday", "created_after"),
        ("?colour=red", "colour"),
    ],
)
def test_bad_filters_are_400_naming_the_field(owner, query, field):
    r = owner.get(f"{BASE}/versions/{query}")
    assert r.status_code == 400
    assert field in r.json()["error"]["message"]
