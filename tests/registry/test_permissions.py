"""Persona x endpoint matrix for the registry: exactly the documented access, and one audit event per write.

Documented access: the model's creator (owner) and admins may do everything; reviewers and auditors
see every model (read-only: writes are 403); everyone else gets 404 for the model and all under it.
"""

import hashlib

import pytest

from audit.models import AuditEvent
from tests.registry.helpers import register_body, s3_manifest

BASE = "/api/v1/models/acme/churn"
ALL = ["admin", "owner", "reviewer", "auditor", "ci_bot", "outsider"]
READERS = {"admin", "owner", "reviewer", "auditor"}
WRITERS = {"admin", "owner"}


@pytest.fixture
def world(personas):
    owner = personas["owner"].client()
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    assert owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"v1")), format="json").status_code == 201
    assert owner.put(f"{BASE}/aliases/champion", {"version": 1}, format="json").status_code == 201
    return personas


def expected_read(persona):
    return 200 if persona in READERS else 404


def expected_write(persona, ok=200):
    if persona in WRITERS:
        return ok
    return 403 if persona in READERS else 404


READS = [
    f"{BASE}",
    f"{BASE}/versions/",
    f"{BASE}/versions/1",
    f"{BASE}/aliases/",
    f"{BASE}/aliases/champion",
]


@pytest.mark.parametrize("persona", ALL)
@pytest.mark.parametrize("path", READS)
def test_reads(world, persona, path):
    r = world[persona].client().get(path)
    assert r.status_code == expected_read(persona), r.content
    if r.status_code == 404:  # hidden: the body does not reveal the model exists
        assert "acme/churn" not in r.content.decode()


@pytest.mark.parametrize("persona", ALL)
def test_model_list_shows_only_visible(world, persona):
    names = [f"{m['namespace']}/{m['name']}" for m in world[persona].client().get("/api/v1/models/").json()["results"]]
    assert names == (["acme/churn"] if persona in READERS else [])


def _writes(persona):
    blob = f"bytes of {persona}".encode()
    sha = hashlib.sha256(blob).hexdigest()
    return [
        ("patch", BASE, {"description": f"by {persona}"}, "json", 200),
        ("post", f"{BASE}/versions/", register_body(s3_manifest(persona.encode())), "json", 201),
        ("patch", f"{BASE}/versions/1", {"tags": {"by": persona}}, "json", 200),
        ("put", f"{BASE}/aliases/candidate-{persona.replace('_', '-')}", {"version": 1}, "json", 201),
        ("put", f"{BASE}/artifacts/sha256:{sha}", blob, "application/octet-stream", 201),
    ]


@pytest.mark.parametrize("persona", ALL)
@pytest.mark.parametrize("index", range(5))
def test_writes(world, persona, index):
    method, path, body, kind, ok = _writes(persona)[index]
    client = world[persona].client()
    before = AuditEvent.objects.count()
    if kind == "json":
        r = getattr(client, method)(path, body, format="json")
    else:
        r = getattr(client, method)(path, data=body, content_type=kind)
    assert r.status_code == expected_write(persona, ok), r.content
    audited = AuditEvent.objects.count() - before
    # Every write that succeeds is audited; an upload too (`artifact.uploaded`), as the model did not hold its bytes.
    expected_events = 1 if r.status_code < 300 else 0
    assert audited == expected_events


@pytest.mark.parametrize("persona", ALL)
def test_create_model(world, persona):
    r = (
        world[persona]
        .client()
        .post("/api/v1/models/", {"namespace": "team", "name": persona.replace("_", "-")}, format="json")
    )
    assert r.status_code == (201 if persona in {"admin", "owner", "ci_bot"} else 403), r.content


def test_creator_of_a_model_owns_it(world):
    bot = world["ci_bot"].client()
    assert bot.post("/api/v1/models/", {"namespace": "ci", "name": "m"}, format="json").status_code == 201
    assert bot.post("/api/v1/models/ci/m/versions/", register_body(s3_manifest(b"x")), format="json").status_code == 201
    assert world["outsider"].client().get("/api/v1/models/ci/m").status_code == 404


def test_status_change_needs_manage(world):
    from accounts.services import permission_grant
    from registry.models import RegisteredModel

    bot = world["ci_bot"]
    model = RegisteredModel.objects.get(namespace="acme", name="churn")
    for perm in ("view_registeredmodel", "register_version"):
        permission_grant(actor=world["owner"].user, principal=bot.user, perm=perm, obj=model)
    assert bot.client().patch(f"{BASE}/versions/1", {"tags": {"a": "b"}}, format="json").status_code == 200
    assert bot.client().patch(f"{BASE}/versions/1", {"status": "deprecated"}, format="json").status_code == 403
    owner = world["owner"].client()
    assert owner.patch(f"{BASE}/versions/1", {"status": "archived"}, format="json").status_code == 409  # champion
    assert owner.delete(f"{BASE}/aliases/champion").status_code == 204
    assert owner.patch(f"{BASE}/versions/1", {"status": "archived"}, format="json").status_code == 200
    again = owner.patch(f"{BASE}/versions/1", {"status": "registered"}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"


def test_read_only_token_cannot_write(world, make_token):
    from tests.conftest import bearer

    client = bearer(make_token(world["owner"].user, ["read"]))
    assert client.get(f"{BASE}/versions/1").status_code == 200
    r = client.post(f"{BASE}/versions/", register_body(s3_manifest(b"z")), format="json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
