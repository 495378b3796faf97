"""accounts.access.has_perm: one query per (user, object), the same answers as Django + guardian,
and a grant or revocation is seen at once by the same user instance (the memo is dropped)."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from guardian.shortcuts import assign_perm, remove_perm

from accounts import access
from registry.models import ModelPerm, RegisteredModel

CODENAMES = ["view_registeredmodel", ModelPerm.REGISTER, ModelPerm.MANAGE, "change_registeredmodel"]


def backends_say(user, codename, obj) -> bool:
    """What Django's ModelBackend and guardian's ObjectPermissionBackend answer, on a fresh user object."""
    fresh = get_user_model().objects.get(pk=user.pk)
    perm = f"registry.{codename}"
    return fresh.is_active and (fresh.has_perm(perm) or fresh.has_perm(perm, obj))


@pytest.fixture
def world(db):
    User = get_user_model()
    user = User.objects.create_user(username="u")
    other = User.objects.create_user(username="other")
    model = RegisteredModel.objects.create(namespace="acme", name="a", created_by=other)
    second = RegisteredModel.objects.create(namespace="acme", name="b", created_by=other)
    return user, model, second


def check_all(user, *objs):
    for obj in objs:
        for codename in CODENAMES:
            assert access.has_perm(user, codename, obj) == backends_say(user, codename, obj), (codename, obj)


def test_same_answers_and_grants_seen_by_same_instance(world):
    user, model, second = world
    check_all(user, model, second)
    assign_perm("registry.view_registeredmodel", user, model)  # object perm, direct
    check_all(user, model, second)
    group = Group.objects.create(name="g")
    assign_perm(ModelPerm.REGISTER, group, model)  # object perm through a group
    check_all(user, model, second)
    user.groups.add(group)
    check_all(user, model, second)
    user.user_permissions.add(Permission.objects.get(codename=ModelPerm.MANAGE))  # model-wide
    check_all(user, model, second)
    user.user_permissions.clear()
    remove_perm(ModelPerm.REGISTER, group, model)
    check_all(user, model, second)
    user.groups.remove(group)
    remove_perm("registry.view_registeredmodel", user, model)
    check_all(user, model, second)


def test_inactive_and_superuser(world):
    user, model, _ = world
    assign_perm("registry.view_registeredmodel", user, model)
    user.is_active = False
    assert not access.has_perm(user, "view_registeredmodel", model)
    user.is_active = True
    user.is_superuser = True
    assert all(access.has_perm(user, codename, model) for codename in CODENAMES)


def test_one_query_per_object(world):
    user, model, second = world
    assign_perm(ModelPerm.REGISTER, user, model)
    access.has_perm(user, "view_registeredmodel", second)  # connects the invalidation signals
    with CaptureQueriesContext(connection) as queries:
        for codename in CODENAMES:
            access.has_perm(user, codename, model)
        assert not access.has_perm(user, "view_registeredmodel", model)
    assert len(queries) == 1
