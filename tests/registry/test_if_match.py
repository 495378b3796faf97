"""A version's ETag and If-Match on PATCH: `tags` replaces the whole map, so two CI jobs each adding a tag to what
they read would undo each other; with If-Match the second is a 412 and writes nothing."""

import threading
import time

import pytest
from django.db import connection, transaction

from audit.models import AuditEvent
from registry.models import ModelVersion
from tests.registry.helpers import register_body, s3_manifest

BASE = "/api/v1/models/acme/churn"
VERSION = f"{BASE}/versions/1"


@pytest.fixture
def owner(personas):
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    registered = client.post(
        f"{BASE}/versions/", register_body(s3_manifest(b"w"), tags={"team": "risk"}), format="json"
    )
    assert registered.status_code == 201, registered.json()
    return client


def patch(client, body: dict, if_match: str | None = None):
    headers = {} if if_match is None else {"HTTP_IF_MATCH": if_match}
    return client.patch(VERSION, body, format="json", **headers)


def test_a_patch_naming_the_etag_it_read_is_made_and_answers_the_new_one(owner):
    read = owner.get(VERSION)
    etag = read["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) == 34
    changed = patch(owner, {"tags": {**read.json()["tags"], "stage": "candidate"}}, if_match=etag)
    assert changed.status_code == 200, changed.json()
    assert changed.json()["tags"] == {"team": "risk", "stage": "candidate"}
    assert changed["ETag"] != etag and changed["ETag"] == owner.get(VERSION)["ETag"]


def test_a_patch_naming_an_etag_read_before_another_change_is_a_412_and_writes_nothing(owner):
    """Two jobs read the same version; the second one's change would drop the first one's tag."""
    first_read, second_read = owner.get(VERSION), owner.get(VERSION)
    assert patch(owner, {"tags": {"team": "risk", "a": "1"}}, first_read["ETag"]).status_code == 200
    events = AuditEvent.objects.count()
    refused = patch(owner, {"tags": {"team": "risk", "b": "2"}}, second_read["ETag"])
    assert refused.status_code == 412, refused.json()
    error = refused.json()["error"]
    assert error["code"] == "precondition_failed"
    assert "acme/churn:1 changed since you read it" in error["message"] and "nothing was written" in error["message"]
    current = owner.get(VERSION)
    assert error["detail"] == {"etag": current["ETag"]}
    assert current.json()["tags"] == {"team": "risk", "a": "1"}
    assert AuditEvent.objects.count() == events
    # read again, change what it holds now: made
    merged = patch(owner, {"tags": {**current.json()["tags"], "b": "2"}}, current["ETag"])
    assert merged.status_code == 200 and merged.json()["tags"] == {"team": "risk", "a": "1", "b": "2"}


def test_the_etag_follows_status_and_tags_and_not_a_patch_that_changes_nothing(owner):
    etag = owner.get(VERSION)["ETag"]
    unchanged = patch(owner, {"tags": {"team": "risk"}}, etag)
    assert unchanged.status_code == 200 and unchanged["ETag"] == etag
    deprecated = patch(owner, {"status": "deprecated"}, etag)
    assert deprecated.status_code == 200 and deprecated["ETag"] != etag
    assert patch(owner, {"status": "registered"}, etag).status_code == 412  # read before the status changed


@pytest.mark.parametrize(
    ("header", "expected"),
    [("*", 200), ("{current}", 200), ('"other", {current}', 200), ("W/{current}", 412), ('"other"', 412)],
    ids=["any", "current", "list", "weak", "other"],
)
def test_if_match_forms(owner, header, expected):
    """`*` and a list holding the current tag match; a weak tag never does (If-Match compares strongly)."""
    header = header.format(current=owner.get(VERSION)["ETag"])
    response = patch(owner, {"tags": {"x": "y"}}, header)
    assert response.status_code == expected, response.json()
    assert (ModelVersion.objects.get().tags == {"x": "y"}) is (expected == 200)


def test_a_weak_tag_of_the_current_state_is_told_to_send_the_strong_one(owner):
    """Not "changed since you read it": it did not. A compressing proxy may have weakened the ETag."""
    weak = "W/" + owner.get(VERSION)["ETag"]
    response = patch(owner, {"tags": {"x": "y"}}, weak)
    assert response.status_code == 412
    error = response.json()["error"]
    assert "send the ETag without W/" in error["message"] and "changed" not in error["message"]
    assert list(error["detail"]) == ["If-Match"]


def test_an_if_match_holding_no_entity_tag_says_how_to_send_one(owner):
    response = patch(owner, {"tags": {"x": "y"}}, "abc123")  # not quoted: no entity tag
    assert response.status_code == 412
    error = response.json()["error"]
    assert "holds no entity tag" in error["message"] and list(error["detail"]) == ["If-Match"]
    assert ModelVersion.objects.get().tags == {"team": "risk"}


def test_without_if_match_a_patch_is_made_as_before(owner):
    stale = owner.get(VERSION)["ETag"]
    assert patch(owner, {"tags": {"a": "1"}}, stale).status_code == 200
    response = patch(owner, {"tags": {"b": "2"}})
    assert response.status_code == 200 and response.json()["tags"] == {"b": "2"}


@pytest.mark.django_db(transaction=True)
def test_the_etag_is_compared_under_the_writes_row_lock(personas):
    """Another writer holds the version's row and changes its tags: a PATCH naming the ETag read before waits for
    it, then sees the change (a 412), instead of comparing first and overwriting it."""
    owner = personas["owner"].client()
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    assert owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"w")), format="json").status_code == 201
    stale = owner.get(VERSION)["ETag"]
    answers = []

    def concurrent_patch():
        try:
            answers.append(patch(personas["owner"].client(), {"tags": {"late": "1"}}, stale))
        finally:
            connection.close()

    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get()
        writer = threading.Thread(target=concurrent_patch)
        writer.start()
        deadline = time.monotonic() + 20
        while not _waiting_for_a_lock() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiting_for_a_lock(), "the PATCH should wait for the row lock"
        version.tags = {"first": "1"}
        version.save(update_fields=["tags"])
    writer.join(20)
    [answer] = answers
    assert answer.status_code == 412, answer.json()
    assert ModelVersion.objects.get().tags == {"first": "1"}


def _waiting_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # in a transaction, pg_stat_activity is read once
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0] > 0
