"""A small, real world for the attack suites: every path parameter of the API names a real object.

acme/churn (created by the owner persona) has versions 1 and 2, a full model card on v1, aliases
champion (-> 1) and a protected `prod-pin` (-> 1). Target `prod` (admin) carries POLICY (two reviewer
approvals) and a per-model override for acme/churn. One promotion request of v1 to prod is pending
(requested by the owner), a second was cancelled. A webhook endpoint exists (admin). Each persona
holds a spare token, and there is a token of another user, for the revoke operation.

Outgoing side effects (reconcile, webhook dispatch) go to an in-memory Celery broker while these
suites run: nothing reaches the shared Redis, and no worker acts on this test database.
"""

import contextlib
import json
import uuid
from dataclasses import dataclass, field

import model_signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.functions import Now

from accounts import scopes
from accounts import services as account_services
from config.celery import app as celery_app
from governance.webhook_models import DeliveryState, WebhookDelivery
from tests.governance.conftest import FULL_CARD, MODEL, POLICY  # the same world the governance tests use
from tests.registry.helpers import register_body, s3_manifest


@dataclass
class World:
    personas: dict
    promotion_id: int
    cancelled_promotion_id: int
    webhook_id: int
    failed_delivery_id: int  # of the webhook, out of attempts: what redeliver acts on
    spare_token_ids: dict[str, int]
    foreign_token_id: int
    reviewer2: object = None
    extra: dict = field(default_factory=dict)


@pytest.fixture
def memory_broker():
    """Tasks enqueued after commit land in an in-memory queue that nothing consumes."""
    saved_url, saved_pool = celery_app.conf.broker_url, celery_app._pool
    celery_app.conf.broker_url = "memory://"
    celery_app._pool = None
    try:
        yield
    finally:
        if celery_app._pool is not None:
            celery_app._pool.force_close_all()
        celery_app.conf.broker_url, celery_app._pool = saved_url, saved_pool


class _Rollback(Exception):
    pass


@contextlib.contextmanager
def rolled_back():
    """A savepoint undone at the end of the block: each request of an attack suite starts from the same world."""
    with contextlib.suppress(_Rollback), transaction.atomic():
        yield
        raise _Rollback


def _ok(response, status=(200, 201)):
    assert response.status_code in status, (response.status_code, response.content[:2000])
    return response.json() if response.content else None


def build_world(personas) -> World:
    admin, owner = personas["admin"].client(), personas["owner"].client()
    _ok(
        admin.post(
            "/api/v1/targets/",
            {
                "name": "prod",
                "kind": "self_hosted",
                "stage": "production",
                "policy": POLICY,
                "credentials_ref": "env:HARDENING_PROD_CREDENTIAL",
            },
            format="json",
        )
    )
    _ok(owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json"))
    _ok(owner.post(f"{MODEL}/versions/", register_body(s3_manifest(b"v1"), metrics={"auc": 0.91}), format="json"))
    _ok(owner.post(f"{MODEL}/versions/", register_body(s3_manifest(b"v2"), metrics={"auc": 0.93}), format="json"))
    _ok(owner.post(f"{MODEL}/versions/1/card", {"content": FULL_CARD}, format="json"))
    _ok(owner.put(f"{MODEL}/aliases/champion", {"version": 1}, format="json"))
    _ok(owner.put(f"{MODEL}/aliases/prod-pin", {"version": 1, "protected": True}, format="json"))
    _ok(admin.put("/api/v1/targets/prod/policies/acme/churn", {**POLICY, "approvals_required": 1}, format="json"))
    promotion = _ok(
        owner.post("/api/v1/promotions/", {"model": "acme/churn", "version": 1, "target": "prod"}, format="json")
    )
    cancelled = _ok(
        owner.post("/api/v1/promotions/", {"model": "acme/churn", "version": 2, "target": "prod"}, format="json")
    )
    _ok(owner.post(f"/api/v1/promotions/{cancelled['id']}/cancel", {"reason": "superseded"}, format="json"))
    webhook = _ok(
        admin.post(
            "/api/v1/webhooks/",
            {"name": "audit-sink", "url": "http://127.0.0.1:9/hook", "event_types": ["promotion.*"]},
            format="json",
        )
    )
    failed = WebhookDelivery.objects.create(
        endpoint_id=webhook["id"],
        event_seq=1,
        event_type="promotion.requested",
        webhook_id=f"msg_{uuid.uuid4().hex}",
        body="{}",
        state=DeliveryState.FAILED,
        attempts=10,
        next_attempt_at=Now(),
    )
    spare = {}
    for name, persona in personas.items():
        issued = account_services.token_create(actor="test", user=persona.user, name="spare", scopes=[scopes.READ])
        spare[name] = issued.token.pk
    stranger = get_user_model().objects.create_user(username="stranger")
    foreign = account_services.token_create(actor="test", user=stranger, name="theirs", scopes=[scopes.READ])
    reviewer2 = get_user_model().objects.create_user(username="reviewer2")
    reviewer2.groups.add(Group.objects.get(name="reviewers"))
    return World(
        personas=personas,
        promotion_id=promotion["id"],
        cancelled_promotion_id=cancelled["id"],
        webhook_id=webhook["id"],
        failed_delivery_id=failed.pk,
        spare_token_ids=spare,
        foreign_token_id=foreign.token.pk,
        reviewer2=reviewer2,
    )


@pytest.fixture(scope="module")
def signature_bundle(tmp_path_factory) -> dict:
    """A real model_signing bundle over v1's one file (signed with a key the registry does not trust)."""
    root = tmp_path_factory.mktemp("matrix-signing")
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "model-0.bin").write_bytes(b"v1")  # build_world's v1: s3_manifest(b"v1")
    key = ec.generate_private_key(ec.SECP256R1())
    private = root / "key.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    signature = root / "model.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).sign(model_dir, signature)
    return json.loads(signature.read_text())


@pytest.fixture
def signed_world(personas, signature_bundle) -> World:
    """build_world, and v1 carries that signature (world.extra["bundle"]): the signature's read has a row to show."""
    world = build_world(personas)
    owner = personas["owner"].client()
    r = owner.post(f"{MODEL}/versions/1/signature/", signature_bundle, format="json")
    assert r.status_code == 201, r.content
    world.extra["bundle"] = signature_bundle
    return world
