"""Audit changes of accounts, groups, group membership and model-wide permissions, however they are made (admin,
shell, management commands)."""

import os
import sys

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import get_hasher, identify_hasher, is_password_usable
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import FieldDoesNotExist
from django.db import models, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.services import token_revocation
from audit.services import record, record_many
from core import context

_ACTIONS = {"post_add": "granted", "post_remove": "revoked", "pre_clear": "revoked"}


def _perm_name(permission) -> str:
    return f"{permission.content_type.app_label}.{permission.codename}"


def _names(model, pks) -> list[str]:
    if model is Permission:
        return sorted(_perm_name(p) for p in Permission.objects.filter(pk__in=pks).select_related("content_type"))
    return sorted(str(o) for o in model.objects.filter(pk__in=pks))


def _column(through, model) -> str:
    """The through table's column naming rows of `model` (auth's through tables relate two different models)."""
    concrete = model._meta.concrete_model
    return next(f.attname for f in through._meta.concrete_fields if f.is_relation and f.related_model is concrete)


def _lock_holders(through, instance, action: str, model, pk_set, holder, using) -> None:
    """Before an add, a remove or a clear: lock the rows of the holders whose access changes (`holder`: the users of
    memberships and of users' permissions, the groups of groups' permissions), whichever side the change is made
    from, so that concurrent changes of one row take turns; then narrow pk_set to what really changes.

    Django reads the ids an add() misses (a remove() takes the ids it is given) before anything is locked, inserts
    ignoring conflicts, and sends post_add / post_remove with the ids it started from: two concurrent adds of one
    membership each recorded it. pk_set is the very set Django then inserts or deletes and sends on, so it is narrowed
    in place, read again after the lock (its own statement: a read joined to a locked row that had to be waited for
    would keep the joined rows as they were before the wait): an add keeps the ids still missing, a remove those still
    there. A clear reads what it removes itself, after this lock (_audit_m2m)."""
    if action not in ("pre_add", "pre_remove", "pre_clear") or (action != "pre_clear" and not pk_set):
        return
    own, other = _column(through, type(instance)), _column(through, model)
    rows = through._base_manager.using(using).filter(**{own: instance.pk})
    if isinstance(instance, holder):
        holders = [instance.pk]
    elif action == "pre_clear":  # group.user_set.clear(), perm.user_set.clear(): the holders are the rows it removes
        holders = list(rows.values_list(other, flat=True))
    else:
        holders = pk_set
    # FOR NO KEY UPDATE, in pk order: concurrent changes naming several holders queue instead of deadlocking.
    list(
        holder._base_manager.using(using)
        .select_for_update(no_key=True)
        .filter(pk__in=holders)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if action == "pre_clear":
        return
    present = set(rows.filter(**{f"{other}__in": pk_set}).values_list(other, flat=True))
    if action == "pre_add":
        pk_set.difference_update(present)
    else:
        pk_set.intersection_update(present)


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
            actor=_actor(),
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
def user_groups_changed(sender, instance, action, reverse, model, pk_set, using, **kwargs):
    _lock_holders(sender, instance, action, model, pk_set, get_user_model(), using)
    if reverse:  # group.user_set.add(...): the subject is the group
        _audit_m2m("membership", instance, action, model, pk_set, "user_set")
    else:
        _audit_m2m("membership", instance, action, model, pk_set, "groups")


@receiver(m2m_changed, sender=get_user_model().user_permissions.through)
def user_permissions_changed(sender, instance, action, reverse, model, pk_set, using, **kwargs):
    _lock_holders(sender, instance, action, model, pk_set, get_user_model(), using)
    if reverse:
        _audit_m2m_from_permission("permission", instance, action, model, pk_set, "user_set", "user_permissions")
    else:
        _audit_m2m("permission", instance, action, model, pk_set, "user_permissions")


@receiver(m2m_changed, sender=Group.permissions.through)
def group_permissions_changed(sender, instance, action, reverse, model, pk_set, using, **kwargs):
    _lock_holders(sender, instance, action, model, pk_set, Group, using)
    if reverse:
        _audit_m2m_from_permission("permission", instance, action, model, pk_set, "group_set", "permissions")
    else:
        _audit_m2m("permission", instance, action, model, pk_set, "permissions")


# --- access a deletion's cascade drops -----------------------------------------------------------------------
# Deleting a user, a group, a permission or an object with object permissions drops, by cascades that send no signal,
# the access it carried: model-wide permissions (the m2m rows), object permissions (guardian's generic tables and the
# models' direct ones), a user's API tokens and, for a group, the fields naming it that the deletion empties
# (on_delete=SET_NULL, such as a model's owner_group). pre_delete reads them while they exist, in a number of queries
# that does not grow with the objects; post_delete records them (audit.record_many: one statement) in the delete's own
# transaction, each as the change made by hand is recorded: `permission.revoked` on the holder ({"permissions"} or
# {"user_permissions"}, as clear() would) or on the object ({"perm", "user"|"group"}, as
# accounts.services.permission_revoke), `token.revoked` on each live token (as accounts.services.token_revoke), and
# `<field>.cleared` (before: the group's name, after: null) on an object whose field named the deleted group.

_REVOKED = "_audit_revoked"  # the events of what the cascade drops, set on the instance by pre_delete for post_delete


def _revoked_model_wide(holder, field: str, using, reason: str) -> list[dict]:
    """The model-wide permissions a user or group holds through `field`, revoked as `field`.clear() records it."""
    names = sorted(_perm_name(p) for p in getattr(holder, field).using(using).select_related("content_type"))
    if not names:
        return []
    return [{"action": "permission.revoked", "subject": holder, "before": {field: names}, "reason": reason}]


def _object_permission_tables(field: str, target: type) -> list[type]:
    """guardian's object permission tables (its generic ones and the models' direct ones) whose foreign key `field`
    points to `target`."""
    tables = []
    for model in apps.get_models():
        if not issubclass(model, (UserObjectPermissionBase, GroupObjectPermissionBase)):
            continue
        try:
            key = model._meta.get_field(field)
        except FieldDoesNotExist:
            continue
        if isinstance(key, models.ForeignKey) and issubclass(target, key.related_model):
            tables.append(model)
    return tables


def _generic_subjects(rows, using) -> dict[int, dict]:
    """The objects rows of guardian's generic tables name, by row: one query per type of object. An object of a type
    whose model is gone (a stale content type) or that is gone itself keeps its type and key, without its name."""
    wanted: dict = {}
    for row in rows:
        wanted.setdefault(row.content_type, set()).add(row.object_pk)
    found = {}
    for content_type, pks in wanted.items():
        model = content_type.model_class()
        objects = model._base_manager.using(using).in_bulk(pks) if model is not None else {}
        found[content_type.pk] = {str(pk): obj for pk, obj in objects.items()}
    return {
        row.pk: {
            "subject_type": f"{row.content_type.app_label}.{row.content_type.model}",
            "subject_id": row.object_pk,
            "subject_repr": str(found[row.content_type_id].get(row.object_pk, "")),
        }
        for row in rows
    }


def _revoked_object_permissions(instance, field: str, using, reason: str) -> list[dict]:
    """One `permission.revoked` on the object per object permission row whose `field` (user, group, permission or
    content_object) is `instance`: one query per table, plus one per type of object for guardian's generic tables."""
    events = []
    for table in _object_permission_tables(field, type(instance)):
        kind = "group" if issubclass(table, GroupObjectPermissionBase) else "user"
        direct = isinstance(table._meta.get_field("content_object"), models.ForeignKey)
        related = ["permission__content_type", kind, "content_object" if direct else "content_type"]
        rows = list(
            table._base_manager.using(using).filter(**{field: instance}).select_related(*related).order_by("pk")
        )
        subjects = (
            {row.pk: {"subject": row.content_object} for row in rows} if direct else _generic_subjects(rows, using)
        )
        for row in rows:
            principal = getattr(row, kind)
            name = principal.name if kind == "group" else principal.get_username()
            before = {"perm": _perm_name(row.permission), kind: name}
            events.append({"action": "permission.revoked", **subjects[row.pk], "before": before, "reason": reason})
    return events


def _revoked_tokens(user, using, reason: str) -> list[dict]:
    """The user's live (not yet revoked) API tokens, which the deletion drops by cascade, each revoked as
    token_revoke records it: one query."""
    now = timezone.now()
    tokens = user.api_tokens.using(using).filter(revoked_at__isnull=True).order_by("pk")
    return [token_revocation(token, revoked_at=now, reason=reason) for token in tokens]


def _cleared_references(group, using, reason: str) -> list[dict]:
    """`<field>.cleared` on each object whose field names the group and that the deletion empties (on_delete=SET_NULL),
    found through the relations Django's deletion follows, in whatever app: one query per such field."""
    events = []
    for relation in group._meta.get_fields(include_hidden=True):
        if not (relation.auto_created and not relation.concrete and (relation.one_to_many or relation.one_to_one)):
            continue
        if relation.on_delete is not models.SET_NULL:
            continue
        field = relation.field.name
        for obj in relation.related_model._base_manager.using(using).filter(**{field: group}).order_by("pk"):
            events.append(
                {
                    "action": f"{field}.cleared",
                    "subject": obj,
                    "before": {field: group.name},
                    "after": {field: None},
                    "reason": reason,
                }
            )
    return events


def _record_revoked(instance, actor) -> None:
    """What pre_delete read, recorded; inside the delete's transaction."""
    events = instance.__dict__.pop(_REVOKED, [])
    if events:
        record_many([{**event, "actor": actor} for event in events])


@receiver(pre_delete, sender=Permission)
def permission_before_delete(sender, instance, using, **kwargs):
    """A permission deleted (a shell, remove_stale_contenttypes after a model is removed) is revoked
    from every group and user that held it, model-wide or on objects."""
    name, reason = _perm_name(instance), "permission deleted"
    instance.__dict__[_REVOKED] = [
        {"action": "permission.revoked", "subject": holder, "before": {field: [name]}, "reason": reason}
        for model, field in ((Group, "permissions"), (get_user_model(), "user_permissions"))
        for holder in model._base_manager.using(using).filter(**{field: instance}).order_by("pk")
    ] + _revoked_object_permissions(instance, "permission", using, reason)


@receiver(post_delete, sender=Permission)
def permission_deleted(sender, instance, using, **kwargs):
    with transaction.atomic(using=using):
        _record_revoked(instance, _actor())


def object_before_delete(sender, instance, using, **kwargs):
    reason = f"{sender._meta.verbose_name} deleted"
    instance.__dict__[_REVOKED] = _revoked_object_permissions(instance, "content_object", using, reason)


def object_deleted(sender, instance, using, **kwargs):
    with transaction.atomic(using=using):
        _record_revoked(instance, _actor())


def connect_object_deletions() -> None:
    """Objects with direct object permission tables (whose rows their deletion cascades): once every app is loaded.
    guardian's generic tables hold no foreign key to the object, so deleting it drops nothing of theirs."""
    for table in apps.get_models():
        if issubclass(table, (UserObjectPermissionBase, GroupObjectPermissionBase)):
            key = table._meta.get_field("content_object")
            if isinstance(key, models.ForeignKey):
                uid = f"accounts-audit-{key.related_model._meta.label}"
                pre_delete.connect(object_before_delete, sender=key.related_model, dispatch_uid=uid)
                post_delete.connect(object_deleted, sender=key.related_model, dispatch_uid=uid)


# --- accounts: created, deleted, flags changed, password changed ------------------------------------------
# One mechanism for every way in (admin forms, createsuperuser, changepassword, create_user, a shell): pre_save
# reads the stored flags and password hash, post_save and post_delete record what changed, inside the
# transaction of the change when there is one (the admin's add, change, password and delete views; services).
# A save in autocommit (create_user or createsuperuser outside any transaction) has committed its row by itself
# when post_save runs: its event follows at once in a transaction of its own. QuerySet.update(), bulk_create()
# and raw saves (loaddata) are not audited. The password hash never reaches a payload, only the fact of the change.

User = get_user_model()
ACCOUNT_FLAGS = ("is_superuser", "is_staff", "is_active")
_WATCHED = frozenset({*ACCOUNT_FLAGS, "password"})
_BEFORE = "_account_audit_before"  # the stored flags and hash, set on the instance by pre_save for post_save


def _account(user) -> dict:
    return {"username": user.get_username(), **{flag: getattr(user, flag) for flag in ACCOUNT_FLAGS}}


def _system_actor() -> str:
    """Who changed an account when no signed-in user did: `cli:<command>` under manage.py (createsuperuser,
    changepassword, shell), else `system`."""
    if os.path.basename(sys.argv[0]) in {"manage.py", "django-admin"}:
        command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
        if command:
            return f"cli:{command}"
    return "system"


def _actor():
    """The request's user (the admin), an actor named by the caller (a service, a command), or a system actor;
    never anonymous."""
    actor = context.actor.get()
    if isinstance(actor, str) or getattr(actor, "is_authenticated", False):
        return actor
    return _system_actor()


def _written(update_fields) -> frozenset:
    return _WATCHED if update_fields is None else _WATCHED & frozenset(update_fields)


@receiver(pre_save, sender=User)
def user_before_save(sender, instance, raw, using, update_fields, **kwargs):
    instance.__dict__.pop(_BEFORE, None)
    if raw or instance._state.adding or not _written(update_fields):
        return  # a new user has no before; a last_login update (every login) writes nothing watched
    before = sender._base_manager.using(using).filter(pk=instance.pk).values(*ACCOUNT_FLAGS, "password").first()
    if before is not None:
        instance.__dict__[_BEFORE] = before


def _is_hash_upgrade(user, update_fields, old_hash: str, new_hash: str) -> bool:
    """check_password()'s re-hash of the same password with the preferred hasher (Django clears `_password` and
    saves only the password): not a password change."""
    if getattr(user, "_password", None) is not None or update_fields is None or set(update_fields) != {"password"}:
        return False
    if not (is_password_usable(old_hash) and is_password_usable(new_hash)):
        return False
    try:
        old, new, preferred = identify_hasher(old_hash), identify_hasher(new_hash), get_hasher("default")
    except ValueError:
        return False
    return new.algorithm == preferred.algorithm and (
        old.algorithm != preferred.algorithm or preferred.must_update(old_hash)
    )


@receiver(post_save, sender=User)
def user_saved(sender, instance, created, raw, using, update_fields, **kwargs):
    if raw:
        return
    if created:
        with transaction.atomic(using=using):
            record(action="user.created", subject=instance, actor=_actor(), after=_account(instance))
        return
    before = instance.__dict__.pop(_BEFORE, None)
    if before is None:
        return
    written = _written(update_fields)
    changed = [flag for flag in ACCOUNT_FLAGS if flag in written and before[flag] != getattr(instance, flag)]
    old_hash, new_hash = before["password"], instance.password
    new_password = (
        "password" in written
        and old_hash != new_hash
        and (is_password_usable(old_hash) or is_password_usable(new_hash))  # not one unusable marker for another
        and not _is_hash_upgrade(instance, update_fields, old_hash, new_hash)
    )
    if not (changed or new_password):
        return
    with transaction.atomic(using=using):
        actor = _actor()
        if changed:
            record(
                action="user.changed",
                subject=instance,
                actor=actor,
                before={flag: before[flag] for flag in changed},
                after={flag: getattr(instance, flag) for flag in changed},
            )
        if new_password:  # the fact only: whether a password one can sign in with is now set, never the hash
            record(
                action="user.password_changed",
                subject=instance,
                actor=actor,
                after={"usable": is_password_usable(instance.password)},
            )


_USER_GROUPS = "_user_audit_groups"  # the groups' names, set on the instance by pre_delete for post_delete


@receiver(pre_delete, sender=User)
def user_before_delete(sender, instance, using, **kwargs):
    # The delete drops the user's memberships and permissions by cascades that send no m2m signal: read them while
    # they exist.
    instance.__dict__[_USER_GROUPS] = sorted(instance.groups.using(using).values_list("name", flat=True))
    instance.__dict__[_REVOKED] = [
        *_revoked_model_wide(instance, "user_permissions", using, "user deleted"),
        *_revoked_object_permissions(instance, "user", using, "user deleted"),
        *_revoked_tokens(instance, using, "user deleted"),
    ]


@receiver(post_delete, sender=User)
def user_deleted(sender, instance, using, **kwargs):
    before = {**_account(instance), "groups": instance.__dict__.pop(_USER_GROUPS, [])}
    with transaction.atomic(using=using):  # the delete's own transaction (Django's Collector runs in one)
        actor = _actor()
        _record_revoked(instance, actor)
        record(action="user.deleted", subject=instance, actor=actor, before=before)


# --- groups: created, renamed, deleted ------------------------------------------------------------------------
# Policies name their approver groups by name (governance `approver_groups`), so a group's name is access: renaming
# one hands its rights to whoever is in the group that now bears the name. Deleting a group drops its memberships by
# a cascade that sends no m2m signal: pre_delete reads the members while they still exist, post_delete records them
# as `membership.revoked` (as group.user_set.clear() would) with `group.deleted`, in the delete's own transaction.
# Created and renamed follow the accounts above: in the transaction of the change when there is one (the admin's
# add, change and delete views), else at once in a transaction of their own; raw saves (loaddata) and
# QuerySet.update() are not audited. A save that does not change the name writes nothing.

_GROUP_BEFORE = "_group_audit_before"  # the stored name, set on the instance by pre_save for post_save
_GROUP_MEMBERS = "_group_audit_members"  # the members' usernames, set on the instance by pre_delete for post_delete


@receiver(pre_save, sender=Group)
def group_before_save(sender, instance, raw, using, update_fields, **kwargs):
    instance.__dict__.pop(_GROUP_BEFORE, None)
    if raw or instance._state.adding or (update_fields is not None and "name" not in update_fields):
        return
    name = sender._base_manager.using(using).filter(pk=instance.pk).values_list("name", flat=True).first()
    if name is not None:
        instance.__dict__[_GROUP_BEFORE] = name


@receiver(post_save, sender=Group)
def group_saved(sender, instance, created, raw, using, **kwargs):
    if raw:
        return
    if created:
        with transaction.atomic(using=using):
            record(action="group.created", subject=instance, actor=_actor(), after={"name": instance.name})
        return
    before = instance.__dict__.pop(_GROUP_BEFORE, None)
    if before is None or before == instance.name:
        return
    with transaction.atomic(using=using):
        record(
            action="group.renamed",
            subject=instance,
            actor=_actor(),
            before={"name": before},
            after={"name": instance.name},
        )


@receiver(pre_delete, sender=Group)
def group_before_delete(sender, instance, using, **kwargs):
    instance.__dict__[_GROUP_MEMBERS] = sorted(str(user) for user in instance.user_set.all().using(using))
    instance.__dict__[_REVOKED] = [
        *_revoked_model_wide(instance, "permissions", using, "group deleted"),
        *_revoked_object_permissions(instance, "group", using, "group deleted"),
        *_cleared_references(instance, using, "group deleted"),
    ]


@receiver(post_delete, sender=Group)
def group_deleted(sender, instance, using, **kwargs):
    members = instance.__dict__.pop(_GROUP_MEMBERS, [])
    with transaction.atomic(using=using):  # the delete's own transaction (Django's Collector runs in one)
        actor = _actor()
        if members:
            record(
                action="membership.revoked",
                subject=instance,
                actor=actor,
                before={"user_set": members},
                reason="group deleted",
            )
        _record_revoked(instance, actor)
        record(action="group.deleted", subject=instance, actor=actor, before={"name": instance.name})
