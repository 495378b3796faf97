"""Shared fixtures: the six personas, each with a full-scope API token, and authenticated API clients."""

from dataclasses import dataclass, field

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from accounts import roles, scopes, services


@dataclass
class Persona:
    name: str
    user: object
    token: str = field(repr=False)

    def client(self) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.token}")
        return client


PERSONA_GROUPS = {
    "admin": [],
    "owner": [roles.MODEL_OWNERS],
    "reviewer": [roles.REVIEWERS],
    "auditor": [roles.AUDITORS],
    "ci_bot": [roles.CI_BOTS],
    "outsider": [],
}


@pytest.fixture(autouse=True)
def artifact_root(settings, tmp_path):
    """Each test stores artifacts in its own directory (and hashes test passwords cheaply)."""
    from registry.storage import blob_store

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    blob_store.cache_clear()
    yield settings.ARTIFACT_ROOT
    blob_store.cache_clear()


@pytest.fixture
def personas(db) -> dict[str, Persona]:
    groups = roles.ensure_roles()
    User = get_user_model()
    result = {}
    for name, group_names in PERSONA_GROUPS.items():
        user = User.objects.create_user(
            username=name, password="pw-" + name, is_superuser=name == "admin", is_staff=name == "admin"
        )
        for group_name in group_names:
            user.groups.add(groups[group_name])
        issued = services.token_create(actor="test", user=user, name="all", scopes=list(scopes.ALL))
        result[name] = Persona(name=name, user=user, token=issued.plaintext)
    return result


@pytest.fixture
def make_token(db):
    def make(user, scope_list, **kwargs) -> str:
        return services.token_create(actor="test", user=user, name="t", scopes=scope_list, **kwargs).plaintext

    return make


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client
