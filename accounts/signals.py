"""Audit changes of group membership and model-wide permissions, however they are made (admin, shell)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models.signals import m2m_changed
from django.dispatch import receiver

from audit.services import record

_ACTIONS = {"post_add": "granted", "post_remove": "revoked", "pre_clear": "revoked"}


def _names(model, pks) -> list[str]:
    if model is Permission:
        return sorted(
            f"{p.content_type.app_label}.{p.codename}"
            for p in Permission.objects.filter(pk__in=pks).select_related("content_type")
        )
    return sorted(str(o) for o in model.objects.filter(pk__in=pks))


def _audit_m2m(kind: str, instance, action: str, model, pk_set, field: str):
    if action not in _ACTIONS:
        return
    if action == "pre_clear":
        pk_set = set(getattr(instance, field).values_list("pk", flat=True))
    if not pk_set:
        return
    verb = _ACTIONS[action]
    payload = {field: _names(model, pk_set)}
    with transaction.atomic():
        record(
            action=f"{kind}.{verb}",
            subject=instance,
            before=payload if verb == "revoked" else None,
            after=payload if verb == "granted" else None,
        )


def _audit_m2m_from_permission(kind: str, permission, action: str, model, pk_set, related: str, field: str):
    """perm.group_set.add(group) / perm.user_set.remove(user): one event per group or user, as if from its side."""
    if action not in _ACTIONS:
        return
    if action == "pre_clear":
        pk_set = set(getattr(permission, related).values_list("pk", flat=True))
    side_action = "post_add" if action == "post_add" else "post_remove"
    for holder in model.objects.filter(pk__in=pk_set or ()).order_by("pk"):
        _audit_m2m(kind, holder, side_action, Permission, {permission.pk}, field)


@receiver(m2m_changed, sender=get_user_model().groups.through)
def user_groups_changed(sender, instance, action, reverse, model, pk_set, **kwargs):
    if reverse:  # group.user_set.add(...): the subject is the group
        _audit_m2m("membership", instance, action, model, pk_set, "user_set")
    else:
        _audit_m2m("membership", instance, action, model, pk_set, "groups")


@receiver(m2m_changed, sender=get_user_model().user_permissions.through)
def user_permissions_changed(sender, instance, action, reverse, model, pk_set, **kwargs):
    if reverse:
        _audit_m2m_from_permission("permission", instance, action, model, pk_set, "user_set", "user_permissions")
    else:
        _audit_m2m("permission", instance, action, model, pk_set, "user_permissions")


@receiver(m2m_changed, sender=Group.permissions.through)
def group_permissions_changed(sender, instance, action, reverse, model, pk_set, **kwargs):
    if reverse:
        _audit_m2m_from_permission("permission", instance, action, model, pk_set, "group_set", "permissions")
    else:
        _audit_m2m("permission", instance, action, model, pk_set, "permissions")
