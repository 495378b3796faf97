import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from accounts import scopes, services
from tests.conftest import Persona
from tests.registry.helpers import register_body, s3_manifest

MODEL = "/api/v1/models/acme/churn"
FULL_CARD = {
    "model_details": "Gradient-boosted churn classifier.",
    "intended_use": "Rank accounts by churn risk for the retention team.",
    "training_data": "CRM snapshots 2024-2025.",
    "governance": {"risk_class": "limited", "license": "apache-2.0"},
}
POLICY = {
    "approvals_required": 2,
    "approver_groups": ["reviewers"],
    "requester_can_approve": False,
    "required_card_sections": ["intended_use", "training_data"],
    "metric_gates": [{"metric": "auc", "op": ">=", "threshold": 0.85}],
}


@pytest.fixture
def reviewer2(personas):
    user = get_user_model().objects.create_user(username="reviewer2")
    user.groups.add(Group.objects.get(name="reviewers"))
    token = services.token_create(actor="test", user=user, name="all", scopes=list(scopes.ALL)).plaintext
    return Persona(name="reviewer2", user=user, token=token)


@pytest.fixture
def world(personas, reviewer2):
    """acme/churn v1 (auc 0.91) with a full card; target prod with POLICY; all personas."""
    admin, owner = personas["admin"].client(), personas["owner"].client()
    r = admin.post(
        "/api/v1/targets/",
        {"name": "prod", "kind": "self_hosted", "stage": "production", "policy": POLICY},
        format="json",
    )
    assert r.status_code == 201, r.json()
    owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json")
    r = owner.post(f"{MODEL}/versions/", register_body(s3_manifest(b"v1"), metrics={"auc": 0.91}), format="json")
    assert r.status_code == 201
    r = owner.post(f"{MODEL}/versions/1/card", {"content": FULL_CARD}, format="json")
    assert r.status_code == 201, r.json()
    return {**personas, "reviewer2": reviewer2}


def create_target(persona, **body):
    """POST /api/v1/targets/ as the persona (the response, whatever its status)."""
    return persona.client().post("/api/v1/targets/", body, format="json")


def promote(persona, version=1, target="prod"):
    return persona.client().post(
        "/api/v1/promotions/", {"model": "acme/churn", "version": version, "target": target}, format="json"
    )
