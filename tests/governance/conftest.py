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


def two_serving_releases():
    """On target prod, two releases of acme/churn v1: release 2 live for an hour, release 1 serving the hour
    before it. Returns (target, release 1)."""
    from datetime import timedelta

    from django.utils import timezone

    from governance.models import DeploymentTarget, Release, ServingPeriod
    from registry.models import ModelVersion

    target = DeploymentTarget.objects.get(name="prod")
    v1 = ModelVersion.objects.get(number=1)
    now = timezone.now()
    r1 = Release.objects.create(
        target=target, version=v1, number=1, state="superseded", live_at=now - timedelta(hours=2)
    )
    r2 = Release.objects.create(target=target, version=v1, number=2, state="live", live_at=now - timedelta(hours=1))
    ServingPeriod.objects.create(
        target=target, release=r1, started_at=now - timedelta(hours=2), ended_at=now - timedelta(hours=1)
    )
    ServingPeriod.objects.create(target=target, release=r2, started_at=now - timedelta(hours=1))
    DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=r2, last_good_release=r2)
    return target, r1


def register_second_version(world) -> None:
    """acme/churn v2, with a full card, registered by the owner."""
    owner = world["owner"].client()
    assert owner.post(f"{MODEL}/versions/", register_body(s3_manifest(b"v2")), format="json").status_code == 201
    assert owner.post(f"{MODEL}/versions/2/card", {"content": FULL_CARD}, format="json").status_code == 201


def approved_release(world, target, version: int):
    """The owner requests the version's promotion to `target` and the reviewer approves it: the target's desired
    release is then this version's."""
    pk = promote(world["owner"], version=version, target=target.name).json()["id"]
    approved = world["reviewer"].client().post(f"/api/v1/promotions/{pk}/approve", {}, format="json")
    assert approved.json()["state"] == "approved", approved.json()
    target.refresh_from_db()
    return target.desired_release
