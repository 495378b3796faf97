"""registry.selectors.model_at / version_at / alias_at (hand-written, every request under a model path)
read what the ORM reads, related objects included, and None where there is nothing."""

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import access
from registry import selectors
from registry.models import Alias, ModelVersion, RegisteredModel
from tests.registry.helpers import register_body, s3_manifest

BASE = "/api/v1/models/acme/churn"


def fields(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


@pytest.fixture
def churn(personas):
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    body = register_body(s3_manifest(b"w"), metrics={"auc": 0.9}, params={"lr": 0.1}, tags={"stage": "dev"})
    assert client.post(f"{BASE}/versions/", body, format="json").status_code == 201
    assert client.put(f"{BASE}/aliases/champion", {"version": 1}, format="json").status_code == 201
    return client


def test_lookups_read_what_the_orm_reads(churn, django_assert_num_queries):
    with django_assert_num_queries(3):
        model = selectors.model_at("acme", "churn")
        version = selectors.version_at("acme", "churn", 1)
        alias = selectors.alias_at("acme", "churn", "champion")
        names = (version.model.name, version.created_by.username, alias.version.model.name, alias.updated_by.username)
    assert names == ("churn", "owner", "churn", "owner")
    assert fields(model) == fields(RegisteredModel.objects.get(namespace="acme", name="churn"))
    stored = ModelVersion.objects.select_related("created_by").get(model=model, number=1)
    assert fields(version) == fields(stored) and fields(version.created_by) == fields(stored.created_by)
    assert version.metrics == {"auc": 0.9} and version.tags == {"stage": "dev"}  # JSON, not text
    assert fields(alias) == fields(Alias.objects.get(model=model, name="champion"))
    assert alias.version.model is alias.model and fields(alias.version) == fields(stored)


def test_a_deleted_creator_reads_as_none(churn, personas):
    get_user_model().objects.filter(username="owner").delete()  # SET_NULL on created_by and updated_by
    assert selectors.version_at("acme", "churn", 1).created_by is None
    assert selectors.alias_at("acme", "churn", "champion").updated_by is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: selectors.model_at("acme", "nope"),
        lambda: selectors.version_at("acme", "churn", 2),
        lambda: selectors.version_at("other", "churn", 1),
        lambda: selectors.alias_at("acme", "churn", "candidate"),
    ],
)
def test_nothing_there_is_none(churn, call):
    assert call() is None


@pytest.mark.parametrize("persona", ["owner", "reviewer", "outsider", "ci_bot", "auditor"])
@pytest.mark.parametrize("kind", ["model", "version", "alias"])
def test_codenames_read_with_the_object_are_what_the_permission_query_says(churn, personas, persona, kind):
    """Given the user, a look-up also reads the user's codenames on the model (one statement, no permission
    query after it), and they are exactly what accounts.access asks the database for on its own."""
    user = get_user_model().objects.get(username=personas[persona].user.username)
    look_up = {
        "model": lambda: selectors.model_at("acme", "churn", user=user),
        "version": lambda: selectors.version_at("acme", "churn", 1, user=user),
        "alias": lambda: selectors.alias_at("acme", "churn", "champion", user=user),
    }[kind]
    found = look_up()
    model = found if kind == "model" else found.model
    with CaptureQueriesContext(connection) as queries:
        remembered = access.held_codenames(user, model)
    assert len(queries) == 0  # remembered from the look-up
    fresh = get_user_model().objects.get(pk=user.pk)
    assert remembered == access.held_codenames(fresh, model)
    assert ("view_registeredmodel" in remembered) == (persona in ("owner", "reviewer", "auditor"))


def test_path_reads_and_their_access_checks_on_sqlite(sqlite_shell):
    """The embedded default has no arrays: the look-ups read no codenames there, and the access check asks
    on its own, with the same answers (owner 200, outsider 404)."""
    script = (
        "from django.contrib.auth.models import User\n"
        "from django.test import Client\n"
        "from accounts import services as tokens\n"
        "from registry import services\n"
        "owner, outsider = User.objects.create_user('own'), User.objects.create_user('out')\n"
        "model = services.model_create(actor=owner, namespace='acme', name='churn')\n"
        "content = services.VersionContent(artifact_uri='s3://b/x', manifest={'files': [{'path': 'm.bin', "
        "'size': 1, 'sha256': 'ab' * 32}]})\n"
        "services.version_register(actor=owner, model=model, content=content)\n"
        "services.alias_set(actor=owner, model=model, name='champion', number=1, protected=None)\n"
        "def get(user, path):\n"
        "    token = tokens.token_create(actor='test', user=user, name='t', scopes=['read']).plaintext\n"
        "    client = Client(HTTP_HOST='localhost', HTTP_AUTHORIZATION=f'Bearer {token}')\n"
        "    return client.get('/api/v1/models/acme/churn' + path).status_code\n"
        "print('statuses', [get(u, p) for u in (owner, outsider) for p in ('', '/versions/1', '/aliases/champion')])\n"
    )
    printed, _ = sqlite_shell(script)
    assert "statuses [200, 200, 200, 404, 404, 404]" in printed
