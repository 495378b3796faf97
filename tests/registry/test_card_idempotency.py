"""Posting the latest card again is idempotent, also for numbers PostgreSQL's jsonb rewrites."""

from audit.models import AuditEvent
from registry.models import ModelCardRevision
from tests.registry.helpers import register_body, s3_manifest

CARD = "/api/v1/models/idem/m/versions/1/card"


def test_a_card_with_a_number_jsonb_rewrites_posted_again_is_the_same_revision(personas):
    """jsonb keeps 1.5e23 as 150000000000000000000000, which reads back as an int unequal to the float
    posted: a CI re-run posting the same card made a second revision (and audit event) every time."""
    owner = personas["owner"].client()
    owner.post("/api/v1/models/", {"namespace": "idem", "name": "m"}, format="json")
    owner.post("/api/v1/models/idem/m/versions/", register_body(s3_manifest(b"x")), format="json")
    card = {"content": {"intended_use": "Testing idempotency.", "metadata": {"extra": {"train_flops": 1.5e23}}}}
    first = owner.post(CARD, card, format="json")
    assert first.status_code == 201, first.json()
    events = AuditEvent.objects.count()
    again = owner.post(CARD, card, format="json")
    assert again.status_code == 200 and again.json()["revision"] == 1, again.json()
    assert ModelCardRevision.objects.count() == 1 and AuditEvent.objects.count() == events
    changed = {"content": {**card["content"], "metadata": {"extra": {"train_flops": 1.6e23}}}}
    assert owner.post(CARD, changed, format="json").json()["revision"] == 2  # a different number is a change
