"""A target's readers see the model overrides in force on it (API and page), only of models they may view; the
schema documents the enumerated fields as enums and a policy's rules by name; the API rollback takes the `from`
guard of the rollback form."""

import json

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from audit.models import AuditEvent
from governance import services
from governance.choices import Decision, HostKind, PromotionState, ReleaseState
from governance.models import DeploymentTarget
from governance.policy import PolicyRules
from tests.governance.conftest import POLICY, two_serving_releases
from tests.ui import builders

LAX = {"approvals_required": 0}
TIGHTENED = {**POLICY, "approvals_required": 3, "require_signature": True}


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def overrides_section(page: str) -> str:
    start = page.index('id="overrides-h"')
    return page[start : page.index("</section>", start)]


def test_an_override_is_listed_on_the_target_for_those_who_may_view_its_model(world):
    """acme/churn's override (owner's model) and acme/fraud's (ci_bot's): each is shown to whoever may view its
    model, with its version, rules, author and time, and outlives a tightening of the target's policy; to the others
    it is neither shown nor counted."""
    admin = world["admin"].client()
    fraud = world["ci_bot"].client().post("/api/v1/models/", {"namespace": "acme", "name": "fraud"}, format="json")
    assert fraud.status_code == 201, fraud.json()
    first = admin.put("/api/v1/targets/prod/policies/acme/churn", {"approvals_required": 1}, format="json")
    assert first.status_code == 200, first.json()
    churn = admin.put("/api/v1/targets/prod/policies/acme/churn", LAX, format="json")
    assert churn.status_code == 200, churn.json()
    assert admin.put("/api/v1/targets/prod/policies/acme/fraud", POLICY, format="json").status_code == 200
    assert admin.put("/api/v1/targets/prod/policy", TIGHTENED, format="json").status_code == 200

    body = world["auditor"].client().get("/api/v1/targets/prod").json()
    assert body["policy"]["version"] == 5 and body["policy"]["rules"]["approvals_required"] == 3
    listed = {o["model"]: o for o in body["policy_overrides"]}
    assert list(listed) == ["acme/churn", "acme/fraud"]  # by model name; only the newest version of each
    assert listed["acme/churn"] == {
        "version": 3,  # policy versions are numbered per target, overrides included
        "model": "acme/churn",
        "rules": json.loads(json.dumps({**PolicyRules().as_dict(), "approvals_required": 0})),  # every rule
        "created_by": "admin",
        "created_at": churn.json()["created_at"],
    }
    assert world["auditor"].client().get("/api/v1/targets/").json()[0]["policy_overrides"] == body["policy_overrides"]

    # the owner may not view acme/fraud, ci_bot may not view acme/churn: not listed, not counted
    for name, visible in (("owner", ["acme/churn"]), ("ci_bot", ["acme/fraud"]), ("admin", list(listed))):
        client = world[name].client()
        detail = client.get("/api/v1/targets/prod").json()["policy_overrides"]
        assert [o["model"] for o in detail] == visible, name
        assert [o["model"] for o in client.get("/api/v1/targets/").json()[0]["policy_overrides"]] == visible

    page = overrides_section(login(world["auditor"].user).get("/targets/prod/").content.decode())
    assert "acme/churn</a>: policy version 3" in page and "acme/fraud</a>: policy version 4" in page
    assert "Set by admin on" in page
    assert "<dt>Approvals required</dt><dd>0</dd>" in page  # churn's rules, not the target's 3
    for name, shown, hidden in (("owner", "acme/churn", "acme/fraud"), ("ci_bot", "acme/fraud", "acme/churn")):
        page = login(world[name].user).get("/targets/prod/").content.decode()
        assert shown in overrides_section(page) and hidden not in page, name
    outsider = login(world["outsider"].user).get("/targets/prod/")
    assert outsider.status_code == 404


def test_a_target_without_overrides_says_so(world):
    assert world["auditor"].client().get("/api/v1/targets/prod").json()["policy_overrides"] == []
    page = overrides_section(login(world["auditor"].user).get("/targets/prod/").content.decode())
    assert "None: the policy above applies to every model." in page
    created = (
        world["admin"]
        .client()
        .post(
            "/api/v1/targets/",
            {"name": "staging", "kind": "self_hosted", "stage": "staging", "config": {"backend": "staging"}},
            format="json",
        )
    )
    assert created.status_code == 201 and created.json()["policy_overrides"] == []


def count_queries(client, path) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(path)
    assert response.status_code == 200, response.content[:300]
    return len(ctx.captured_queries)


def test_the_overrides_cost_the_same_queries_however_many(personas):
    """The target's API detail, the target list and the target page read the overrides in one query (the page 25
    at a time), whatever their number and however many versions each has."""
    admin, owner = personas["admin"].user, personas["owner"].user
    prod = builders.target(admin)
    builders.target(admin, "staging", stage="staging")
    reviewer = personas["reviewer"]
    paths = (
        (reviewer.client(), "/api/v1/targets/prod"),
        (reviewer.client(), "/api/v1/targets/"),
        (login(reviewer.user), "/targets/prod/"),
    )

    def add(start, stop):
        for i in range(start, stop):
            model = builders.model(owner, name=f"m{i:02}")
            for approvals in (0, 1):
                services.policy_set(
                    actor=admin, target=prod, model=model, rules={**LAX, "approvals_required": approvals}
                )

    add(0, 1)
    for client, path in paths:
        count_queries(client, path)  # warm caches (content types, permissions)
    one = [count_queries(client, path) for client, path in paths]
    add(1, 30)
    assert [count_queries(client, path) for client, path in paths] == one
    assert len(reviewer.client().get("/api/v1/targets/prod").json()["policy_overrides"]) == 30
    page = login(reviewer.user).get("/targets/prod/?overrides_page=2").content.decode()
    assert "acme/m29</a>: policy version" in page and "acme/m00" not in page and "(30 in all)" in page


@pytest.fixture
def schema(db) -> dict:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def resolve(schema, node: dict) -> dict:
    while "$ref" in node or "allOf" in node:
        node = node["allOf"][0] if "allOf" in node else node
        if "$ref" in node:
            node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_enumerated_fields_are_enums_one_per_choice_set(schema):
    components = schema["components"]["schemas"]
    fields = {
        ("TargetOutput", "kind"): HostKind,
        ("TargetCreateInputRequest", "kind"): HostKind,
        ("ReleaseSummary", "state"): ReleaseState,
        ("ReleaseOutput", "state"): ReleaseState,
        ("ApprovalOutput", "decision"): Decision,
        ("PromotionListItem", "state"): PromotionState,
        ("PromotionOutput", "state"): PromotionState,
    }
    for (component, field), choices in fields.items():
        enum = resolve(schema, components[component]["properties"][field])
        assert (enum["type"], enum["enum"]) == ("string", choices.values), (component, field)
    # each choice set is one enum component, under the names generated clients had for the two that existed
    sets = [tuple(c["enum"]) for c in components.values() if "enum" in c]
    assert len(sets) == len(set(sets)), sorted(sets)
    assert components["PromotionOutputStateEnum"]["enum"] == PromotionState.values
    assert components["TargetCreateInputKindEnum"]["enum"] == HostKind.values


def test_the_schema_names_every_policy_rule(schema):
    components = schema["components"]["schemas"]
    put = schema["paths"]["/api/v1/targets/{name}/policy/"]["put"]["requestBody"]["content"]["application/json"]
    for rules in (
        resolve(schema, put["schema"]),
        resolve(schema, components["PolicyOutput"]["properties"]["rules"]),
        resolve(schema, components["PolicyOverrideOutput"]["properties"]["rules"]),
        resolve(schema, components["TargetCreateInputRequest"]["properties"]["policy"]),
    ):
        assert set(rules["properties"]) == set(PolicyRules.__dataclass_fields__)
        assert not rules.get("required")  # every rule has a default
    gate = resolve(schema, components["PolicyRulesRequest"]["properties"]["metric_gates"]["items"])
    assert set(gate["properties"]) == {"metric", "op", "threshold", "dataset", "split"}
    assert set(gate["required"]) == {"metric", "op", "threshold"}
    assert resolve(schema, gate["properties"]["op"])["enum"] == [">=", ">", "<=", "<", "=="]


def test_an_unknown_rule_is_still_refused(world):
    admin = world["admin"].client()
    for path in ("/api/v1/targets/prod/policy", "/api/v1/targets/prod/policies/acme/churn"):
        refused = admin.put(path, {"approvals_required": 1, "quorum": 2}, format="json")
        assert refused.status_code == 400, refused.json()
        assert refused.json()["error"]["message"].startswith("policy.quorum: unknown rule. Known rules: ")
    created = admin.post(
        "/api/v1/targets/",
        {"name": "qa", "kind": "self_hosted", "stage": "qa", "config": {"backend": "qa"}, "policy": {"quorum": 2}},
        format="json",
    )
    assert created.status_code == 400 and "policy.quorum: unknown rule" in created.json()["error"]["message"]


def test_an_api_rollback_with_from_rolls_back_only_what_was_read(world):
    """`from` names the release desired when the client read the target: another one desired since (a newer
    approval, another operator's rollback) refuses the rollback, as the rollback form is refused."""
    target, _ = two_serving_releases()  # release 2 desired, release 1 served before it
    admin = world["admin"].client()
    url = "/api/v1/targets/prod/rollback"
    for bad in ("two", 0, True):
        refused = admin.post(url, {"reason": "slow", "from": bad}, format="json")
        assert refused.status_code == 400 and "from" in refused.json()["error"]["message"], refused.json()

    stale = admin.post(url, {"reason": "release 1 is slow", "from": 1}, format="json")
    assert stale.status_code == 409, stale.json()
    error = stale.json()["error"]
    assert error["code"] == "changed_since_review"
    assert error["message"].startswith("prod changed since you read it: release 1 was desired then, release 2 is now.")
    target.refresh_from_db()
    assert target.desired_release.number == 2
    assert not AuditEvent.objects.filter(action="release.rolled_back").exists()

    done = admin.post(url, {"reason": "release 2 is slow", "from": 2}, format="json")
    assert done.status_code == 202 and done.json()["number"] == 1, done.json()
    assert DeploymentTarget.objects.get(pk=target.pk).desired_release.number == 1


def test_an_api_rollback_with_a_null_from_checks_nothing(world):
    """`from` null is `from` left out (tests/governance/test_releases.py): the rollback is not guarded."""
    two_serving_releases()
    done = (
        world["admin"].client().post("/api/v1/targets/prod/rollback", {"reason": "slow", "from": None}, format="json")
    )
    assert done.status_code == 202 and done.json()["number"] == 1, done.json()


def test_the_schema_documents_from(schema):
    rollback = schema["components"]["schemas"]["RollbackInputRequest"]["properties"]
    assert rollback["from"]["type"] == "integer" and rollback["from"]["nullable"]
    assert "changed_since_review" in rollback["from"]["description"]
