"""Seed data through the services (as clients would), for the UI and end-to-end tests."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from governance import deployment
from governance import services as governance
from governance.choices import ReleaseState
from governance.models import Release
from registry import services as registry
from registry.services import VersionContent
from tests.registry.helpers import s3_manifest

POLICY = {
    "approvals_required": 2,
    "approver_groups": ["reviewers"],
    "requester_can_approve": False,
    "required_card_sections": ["training_data"],
    "metric_gates": [{"metric": "auc", "op": ">=", "threshold": 0.85}],
}
CARD_WITHOUT_TRAINING_DATA = {
    "model_details": "Gradient-boosted churn classifier.",
    "intended_use": "Rank accounts by churn risk for the retention team.",
    "governance": {"risk_class": "limited", "license": "apache-2.0"},
}
CARD_WITH_TRAINING_DATA = {**CARD_WITHOUT_TRAINING_DATA, "training_data": "CRM snapshots 2024-2025, deduplicated."}


def target(admin, name="prod", stage="production", policy=None):
    return governance.target_create(
        actor=admin,
        name=name,
        kind="self_hosted",
        stage=stage,
        config={"backend": name},
        policy=policy or POLICY,
    )


def model(owner, namespace="acme", name="churn"):
    return registry.model_create(actor=owner, namespace=namespace, name=name)


def version(owner, model_, seed: str, metrics=None, card=None, commit=None):
    v, _ = registry.version_register(
        actor=owner,
        model=model_,
        content=VersionContent(
            manifest=s3_manifest(seed.encode()),
            artifact_uri="s3://bucket/models/x",
            metrics=metrics if metrics is not None else {"auc": 0.9},
            source={"repository": "git@example.com:acme/churn.git", "commit": commit or f"c0ffee{seed}"},
        ),
    )
    if card is not None:
        registry.card_revision_add(actor=owner, version=v, content=card)
    return v


def release(target_, version_, number, state=ReleaseState.LIVE):
    made = Release.objects.create(
        target=target_,
        version=version_,
        number=number,
        state=state,
        live_at=timezone.now() if state == ReleaseState.LIVE else None,
    )
    with transaction.atomic():
        deployment.record_deployed_edge(made)
    return made


def reviewer(username, password=None):
    user = get_user_model().objects.create_user(username=username, password=password or f"pw-{username}")
    user.groups.add(Group.objects.get(name="reviewers"))
    return user
