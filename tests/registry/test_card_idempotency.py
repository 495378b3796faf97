"""Posting the latest card again is idempotent, also for numbers PostgreSQL's jsonb rewrites."""

from audit.models import AuditEvent
from registry.models import ModelCardRevision
from tests.registry.helpers import register_body, s3_manifest
from tests.registry.test_cards import stored_revision

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


def register(personas):
    owner = personas["owner"].client()
    owner.post("/api/v1/models/", {"namespace": "idem", "name": "m"}, format="json")
    owner.post("/api/v1/models/idem/m/versions/", register_body(s3_manifest(b"x")), format="json")
    return owner


def test_a_card_posted_again_repeats_a_revision_stored_before_its_normal_form_changed(personas):
    """Cards are stored in the form a README round trip gives (a blank line under a subheading, ...); a
    revision stored in an earlier form, posted again unchanged by a CI re-run, made a new revision, and the
    approvals given on the last one stopped counting."""
    from registry.models import ModelVersion

    owner = register(personas)
    legacy = {"model_details": "### Description\nA gradient-boosted model.", "intended_use": "Churn scoring."}
    stored_revision(legacy, version=ModelVersion.objects.get())
    again = owner.post(CARD, {"content": legacy}, format="json")
    assert again.status_code == 200 and again.json()["revision"] == 1, again.json()
    assert ModelCardRevision.objects.count() == 1


def test_the_governance_license_is_the_readmes_unless_metadata_names_another(personas):
    """The governance license was also stored as metadata.license: after a read-modify-write that changed the
    governance license, the README (what the Hub shows) still named the old one."""
    from registry import cards

    owner = register(personas)
    governance = {"license": "proprietary", "risk_class": "limited"}
    first = owner.post(CARD, {"content": {"model_details": "x", "governance": governance}}, format="json").json()
    assert "license" not in first["content"].get("metadata", {})
    edited = {**first["content"], "governance": {**governance, "license": "mit"}}
    second = owner.post(CARD, {"content": edited}, format="json").json()
    assert "license: mit" in cards.to_huggingface(second["content"]).split("---")[1]

    both = {"model_details": "x", "metadata": {"license": "apache-2.0"}, "governance": governance}
    kept = owner.post(CARD, {"content": both}, format="json").json()["content"]
    assert kept["metadata"]["license"] == "apache-2.0" and kept["governance"]["license"] == "proprietary"
    assert cards.from_huggingface(cards.to_huggingface(kept)) == kept


def test_a_section_its_normal_form_makes_too_long_is_refused(personas):
    """Stored in the normal form (a blank line under each subheading), a section at the length limit grew past
    it: stored, but refused when posted again or imported from its own export."""
    owner = register(personas)
    unit = "### Step\nx\n"
    text = (unit * (200_000 // len(unit)))[:199_990]
    r = owner.post(CARD, {"content": {"model_details": text}}, format="json")
    assert r.status_code == 400, r.json()
    assert "once stored as a README gives it back" in r.json()["error"]["message"]
    assert not ModelCardRevision.objects.exists()
