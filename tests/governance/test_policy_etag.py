"""If-Match on a policy PUT: rules are sent whole, so an admin editing the policy they read would undo another
admin's change made meanwhile (a quorum raised to 3 silently back to 2). With If-Match the edit of a stale read
is a 412 and no policy version is made."""

from audit.models import AuditEvent
from governance.models import Policy
from tests.governance.conftest import POLICY

TARGET_POLICY = "/api/v1/targets/prod/policy"
MODEL_POLICY = "/api/v1/targets/prod/policies/acme/churn"


def put(client, path: str, rules: dict, if_match: str | None = None):
    headers = {} if if_match is None else {"HTTP_IF_MATCH": if_match}
    return client.put(path, rules, format="json", **headers)


def test_an_edit_of_a_stale_read_is_a_412_and_makes_no_policy_version(world):
    alice, bob = world["admin"].client(), world["admin"].client()
    read_by_alice, read_by_bob = alice.get(TARGET_POLICY), bob.get(TARGET_POLICY)
    assert read_by_alice["ETag"] == read_by_bob["ETag"]
    raised = put(
        alice, TARGET_POLICY, {**read_by_alice.json()["rules"], "approvals_required": 3}, read_by_alice["ETag"]
    )
    assert raised.status_code == 200, raised.json()
    assert raised.json()["version"] == 2 and raised["ETag"] != read_by_alice["ETag"]
    versions, events = Policy.objects.count(), AuditEvent.objects.count()

    stale = put(bob, TARGET_POLICY, {**read_by_bob.json()["rules"], "requester_can_approve": True}, read_by_bob["ETag"])
    assert stale.status_code == 412, stale.json()
    error = stale.json()["error"]
    assert error["code"] == "precondition_failed" and "The policy of prod changed since you read it" in error["message"]
    assert (Policy.objects.count(), AuditEvent.objects.count()) == (versions, events)
    current = bob.get(TARGET_POLICY)
    assert current.json()["rules"]["approvals_required"] == 3 and current["ETag"] == raised["ETag"]
    assert error["detail"] == {"etag": current["ETag"]}

    again = put(bob, TARGET_POLICY, {**current.json()["rules"], "requester_can_approve": True}, current["ETag"])
    assert again.status_code == 200 and again.json()["rules"]["approvals_required"] == 3


def test_a_model_override_is_guarded_by_the_policy_in_force_for_the_model(world):
    """Before any override the model's policy is the target's: an override made from that read is refused once
    the target's policy has changed, and once an override exists its ETag guards the next one."""
    admin = world["admin"].client()
    read = admin.get(MODEL_POLICY)
    assert read.json()["model"] is None and read["ETag"] == admin.get(TARGET_POLICY)["ETag"]
    assert put(admin, TARGET_POLICY, {**POLICY, "approvals_required": 1}).status_code == 200  # no If-Match: made
    refused = put(admin, MODEL_POLICY, {**read.json()["rules"], "approvals_required": 3}, read["ETag"])
    assert (
        refused.status_code == 412 and "The policy of prod for acme/churn changed" in refused.json()["error"]["message"]
    )
    assert not Policy.objects.filter(model__isnull=False).exists()

    fresh = admin.get(MODEL_POLICY)
    override = put(admin, MODEL_POLICY, {**fresh.json()["rules"], "approvals_required": 3}, fresh["ETag"])
    assert override.status_code == 200 and override.json()["model"] == "acme/churn"
    assert admin.get(MODEL_POLICY)["ETag"] == override["ETag"] != admin.get(TARGET_POLICY)["ETag"]
    assert put(admin, MODEL_POLICY, POLICY, fresh["ETag"]).status_code == 412


def test_if_match_star_and_no_if_match_set_the_policy_as_before(world):
    admin = world["admin"].client()
    assert put(admin, TARGET_POLICY, {**POLICY, "approvals_required": 1}, "*").json()["version"] == 2
    assert put(admin, TARGET_POLICY, {**POLICY, "approvals_required": 2}).json()["version"] == 3


def test_a_retried_edit_already_in_force_is_a_200_and_makes_no_version(world):
    admin = world["admin"].client()
    read = admin.get(TARGET_POLICY)
    rules = {**read.json()["rules"], "approvals_required": 3}
    assert put(admin, TARGET_POLICY, rules, read["ETag"]).json()["version"] == 2
    versions, events = Policy.objects.count(), AuditEvent.objects.count()
    retried = put(admin, TARGET_POLICY, rules, read["ETag"])  # the first answer was lost
    assert retried.status_code == 200 and retried.json()["version"] == 2
    assert (Policy.objects.count(), AuditEvent.objects.count()) == (versions, events)
