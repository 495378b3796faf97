"""ETags and If-Match on the registry's writes that send a whole field. A version PATCH's `tags` replaces the
whole map, so two CI jobs each adding a tag to what they read would undo each other; a card revision is sent
whole, so an edit of an older read undoes the revision made since. With If-Match the second is a 412 and writes
nothing."""

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


def test_a_retry_of_a_patch_already_made_is_told_it_succeeded(owner):
    """The first answer was lost; the retry's ETag is the one read before its own change: 200, not 412
    (RFC 9110 13.1.1 lets a server say so when the change is already the state)."""
    etag = owner.get(VERSION)["ETag"]
    body = {"tags": {"team": "risk", "stage": "candidate"}, "status": "deprecated"}
    assert patch(owner, body, etag).status_code == 200
    events = AuditEvent.objects.count()
    retried = patch(owner, body, etag)
    assert retried.status_code == 200 and retried.json()["tags"] == body["tags"]
    assert AuditEvent.objects.count() == events
    assert patch(owner, {**body, "tags": {"team": "risk"}}, etag).status_code == 412  # not already so: refused


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


# --- models ---------------------------------------------------------------------------------------------------


def test_a_model_description_edited_from_a_stale_read_is_a_412(owner):
    read = owner.get(BASE)
    assert owner.patch(BASE, {"description": "first"}, format="json", HTTP_IF_MATCH=read["ETag"]).status_code == 200
    events = AuditEvent.objects.count()
    stale = owner.patch(BASE, {"description": "second"}, format="json", HTTP_IF_MATCH=read["ETag"])
    assert stale.status_code == 412 and "Model acme/churn changed since you read it" in stale.json()["error"]["message"]
    assert owner.get(BASE).json()["description"] == "first" and AuditEvent.objects.count() == events
    fresh = owner.get(BASE)["ETag"]
    made = owner.patch(BASE, {"description": "second"}, format="json", HTTP_IF_MATCH=fresh)
    assert made.status_code == 200 and made["ETag"] == owner.get(BASE)["ETag"] != fresh


def test_the_same_description_again_writes_and_records_nothing(owner):
    """It was audited as a change from a text to the same text."""
    assert owner.patch(BASE, {"description": "churn"}, format="json").status_code == 200
    events = AuditEvent.objects.count()
    again = owner.patch(BASE, {"description": "churn"}, format="json", HTTP_IF_MATCH='"stale"')
    assert again.status_code == 200 and again.json()["description"] == "churn"  # already so: a retry succeeded
    assert AuditEvent.objects.count() == events


# --- model cards ----------------------------------------------------------------------------------------------

CARD = f"{VERSION}/card"


def post_card(client, content: dict, if_match: str | None = None):
    headers = {} if if_match is None else {"HTTP_IF_MATCH": if_match}
    return client.post(CARD, {"content": content}, format="json", **headers)


def test_a_card_revised_from_a_stale_read_is_a_412_and_adds_no_revision(owner):
    assert post_card(owner, {"model_details": "v1 text"}).status_code == 201
    read_by_a, read_by_b = owner.get(CARD), owner.get(CARD)
    assert read_by_a["ETag"] == read_by_b["ETag"]
    assert owner.get(CARD, {"format": "huggingface"})["ETag"] == read_by_a["ETag"]  # the revision, as README.md
    revised = post_card(owner, {**read_by_a.json()["content"], "intended_use": "ranking"}, read_by_a["ETag"])
    assert revised.status_code == 201 and revised.json()["revision"] == 2
    assert revised["ETag"] == owner.get(CARD)["ETag"] != read_by_a["ETag"]

    stale = post_card(
        owner, {**read_by_b.json()["content"], "caveats_and_recommendations": "small data"}, read_by_b["ETag"]
    )
    assert stale.status_code == 412, stale.json()
    assert "The model card of acme/churn:1 changed since you read it" in stale.json()["error"]["message"]
    assert [r["revision"] for r in owner.get(f"{CARD}/revisions").json()] == [1, 2]
    # what the stale writer meant to send, sent again after the 412's retry succeeded: the same content, a 200
    again = post_card(owner, {**read_by_a.json()["content"], "intended_use": "ranking"}, read_by_a["ETag"])
    assert (again.status_code, again.json()["revision"]) == (200, 2)


def test_if_match_on_the_first_card_cannot_match(owner):
    """No revision yet: no ETag to match, not even `*` (RFC 9110: `*` needs a current representation)."""
    for header in ("*", '"abc"'):
        refused = post_card(owner, {"model_details": "first"}, header)
        assert refused.status_code == 412, refused.json()
        assert "does not exist yet" in refused.json()["error"]["message"]
    assert post_card(owner, {"model_details": "first"}).status_code == 201


def _waiting_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # in a transaction, pg_stat_activity is read once
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0] > 0


def test_a_read_naming_the_etag_it_holds_is_a_304_without_a_body(owner):
    """A client polling a version sends the ETag it holds as If-None-Match: while the version is still so, a 304
    with the ETag and no body; W/ (a compressing proxy's) and * match too (RFC 9110, 13.1.2)."""
    etag = owner.get(VERSION)["ETag"]
    for sent in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        for method in (owner.get, owner.head):
            unchanged = method(VERSION, HTTP_IF_NONE_MATCH=sent)
            assert (unchanged.status_code, unchanged["ETag"], unchanged.content) == (304, etag, b""), sent
    assert owner.get(VERSION, HTTP_IF_NONE_MATCH='"other"').status_code == 200
    assert patch(owner, {"tags": {"team": "growth"}}).status_code == 200
    changed = owner.get(VERSION, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag and changed.json()["tags"] == {"team": "growth"}


def test_only_etags_that_follow_the_whole_body_answer_304(owner):
    """A model's ETag covers what a PATCH changes (its description), not latest_number: a CI job polling the model
    with If-None-Match must see the new version, so the model's read never answers 304. A card revision's does."""
    model = f"{BASE}"
    etag = owner.get(model)["ETag"]
    assert owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"w2")), format="json").status_code == 201
    polled = owner.get(model, HTTP_IF_NONE_MATCH=etag)
    assert polled.status_code == 200 and polled["ETag"] == etag and polled.json()["latest_number"] == 2
    assert owner.post(f"{VERSION}/card", {"content": {"model_details": "Trees."}}, format="json").status_code == 201
    card = owner.get(f"{VERSION}/card")
    again = owner.get(f"{VERSION}/card", HTTP_IF_NONE_MATCH=card["ETag"])
    assert (again.status_code, again["ETag"], again.content) == (304, card["ETag"], b"")
    # its README shares the ETag (If-Match takes either): a client holding the JSON gets the README, not a 304
    for readme in (
        owner.get(f"{VERSION}/card", {"format": "huggingface"}, HTTP_IF_NONE_MATCH=card["ETag"]),
        owner.get(f"{VERSION}/card", HTTP_ACCEPT="text/markdown", HTTP_IF_NONE_MATCH=card["ETag"]),
    ):
        assert readme.status_code == 200 and readme.content.startswith(b"---") and "Accept" in readme["Vary"]


def test_if_none_match_never_reveals_what_the_caller_may_not_see(owner, personas):
    etag = owner.get(VERSION)["ETag"]
    hidden = personas["outsider"].client().get(VERSION, HTTP_IF_NONE_MATCH=etag)
    assert hidden.status_code == 404  # not a 304 that would say the version exists and is as that ETag says
