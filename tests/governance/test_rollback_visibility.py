"""A deployer who may not view a model learns nothing of it from rolling back: not from the target page's
rollback form, the flash after it, or the refusal of an archived version (web UI and API alike)."""

import pytest
from django.test import Client
from guardian.shortcuts import assign_perm

from accounts import scopes
from governance.models import DeploymentTarget
from registry.models import ModelVersion
from tests.conftest import bearer
from tests.governance.conftest import two_serving_releases

HIDDEN = "a version of a model you may not view"


@pytest.fixture
def ops(world, django_user_model):
    """View and deploy on prod only (as a non-superuser who creates a target gets), no view of acme/churn;
    release 2 live, release 1 (acme/churn v1) served before it."""
    target, _ = two_serving_releases()
    user = django_user_model.objects.create_user(username="ops")
    for perm in ("view_deploymenttarget", "deploy_deploymenttarget"):
        assign_perm(perm, user, target)
    return user


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_rollback_form_names_no_model_the_deployer_may_not_view(world, ops):
    page = logged_in(ops).get("/targets/prod/").content.decode()
    assert f"Send all traffic back to release 1 ({HIDDEN})" in page
    assert "churn" not in page and "Roll back to release 1" in page
    admin = logged_in(world["admin"].user).get("/targets/prod/").content.decode()
    assert "Send all traffic back to release 1 (acme/churn v1)" in admin


def test_the_rollback_flash_names_no_model_the_deployer_may_not_view(world, ops):
    done = logged_in(ops).post("/targets/prod/rollback/", {"reason": "p95 doubled", "release": "1"}, follow=True)
    page = done.content.decode()
    assert f"Rolling back: release 1 ({HIDDEN}) is desired again" in page and "churn" not in page
    assert DeploymentTarget.objects.get(name="prod").desired_release.number == 1
    # whoever may view the model reads which version it is
    again = logged_in(world["admin"].user).post(
        "/targets/prod/rollback/", {"reason": "back", "release": "2"}, follow=True
    )
    assert b"Rolling back: release 2 (acme/churn v1) is desired again" in again.content


def test_the_archived_version_refusal_names_no_model(world, ops, make_token):
    ModelVersion.objects.filter(number=1).update(status="archived")
    page = logged_in(ops).post("/targets/prod/rollback/", {"reason": "errors", "release": "1"}, follow=True)
    text = page.content.decode()
    assert "Release 1 of prod serves an archived version" in text and "churn" not in text
    api = bearer(make_token(ops, list(scopes.ALL))).post(
        "/api/v1/targets/prod/rollback", {"reason": "errors", "release": 1}, format="json"
    )
    assert api.status_code == 409 and api.json()["error"]["code"] == "version_archived", api.json()
    assert "churn" not in api.content.decode()
    assert DeploymentTarget.objects.get(name="prod").desired_release.number == 2


@pytest.mark.parametrize("number", ["²", "١", "1" * 5000, " 1", "-1"])
def test_a_release_number_that_is_not_ascii_digits_rolls_back_to_the_default(world, ops, number):
    """What any other malformed number does (the field is the button's; without it the previous release)."""
    response = logged_in(world["admin"].user).post("/targets/prod/rollback/", {"reason": "x", "release": number})
    assert response.status_code == 302
    assert DeploymentTarget.objects.get(name="prod").desired_release.number == 1
