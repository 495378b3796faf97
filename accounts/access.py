"""The one place object-level access is decided (django-guardian, direct FK permission tables).

A model-wide permission (given to a user or their group) counts for every object; otherwise the
object permission decides. Not allowed to view -> 404 (the object's existence stays hidden);
allowed to view but not to act -> 403. Permissions are named by codename ("register_version");
the app label comes from the object.
"""

from django.db import models
from guardian.shortcuts import get_objects_for_user

from core.errors import Forbidden, NotFound


def view_codename(model: type[models.Model] | models.Model) -> str:
    return f"view_{model._meta.model_name}"


def has_perm(user, codename: str, obj: models.Model) -> bool:
    perm = f"{obj._meta.app_label}.{codename}"
    return bool(user and user.is_active) and (user.has_perm(perm) or user.has_perm(perm, obj))


def visible(user, queryset: models.QuerySet, codename: str | None = None) -> models.QuerySet:
    """The objects of `queryset` the user may view (or hold `codename` on)."""
    model = queryset.model
    perm = f"{model._meta.app_label}.{codename or view_codename(model)}"
    if not (user and user.is_active):
        return queryset.none()
    if user.has_perm(perm):
        return queryset
    return get_objects_for_user(user, perm, klass=queryset, accept_global_perms=False, with_superuser=True)


def require(user, obj: models.Model, codename: str | None = None) -> models.Model:
    """Return obj if the user may view it and, if given, hold `codename` on it; else 404 / 403."""
    if not has_perm(user, view_codename(obj), obj):
        raise NotFound(f"No {obj._meta.verbose_name} matches the given path.")
    if codename and not has_perm(user, codename, obj):
        raise Forbidden(
            f"You may view {obj._meta.verbose_name} '{obj}' but lack the '{codename}' permission on it. "
            "Ask its owners to grant it."
        )
    return obj
