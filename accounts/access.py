"""The one place object-level access is decided (django-guardian, direct FK permission tables).

A model-wide permission (given to a user or their group) counts for every object; otherwise the
object permission decides. Not allowed to view -> 404 (the object's existence stays hidden);
allowed to view but not to act -> 403. Permissions are named by codename ("register_version");
the app label comes from the object.

`has_perm` answers exactly what `user.has_perm(perm) or user.has_perm(perm, obj)` answers with
Django's ModelBackend and guardian's ObjectPermissionBackend (active superusers hold everything;
inactive users nothing; model-wide perms by app label and codename; object perms by the object's
content type), but with one query per (user, object): every codename the user holds on the object,
model-wide or on the object, directly or through groups. The answer is memoized on the user
instance (one per request) and dropped whenever any permission or group membership changes in this
process, so a grant followed by a check in the same request sees the grant.
"""

# ruff: noqa: S608 - the permission SQL is assembled from the models' table and column names; values are bound

import itertools
import threading

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection, models
from django.db.models.signals import m2m_changed, post_delete, post_save
from guardian.ctypes import get_content_type
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase
from guardian.shortcuts import get_objects_for_user
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from core.errors import Forbidden, NotFound

_CACHE_ATTR = "_access_perm_cache"
_generation = itertools.count(1)
_current = [0]  # bumped on any permission change; a memo from an older generation is ignored
_connect_lock = threading.Lock()
_connected = [False]
_sql_by_model: dict[type, tuple[str, bool, bool]] = {}


def view_codename(model: type[models.Model] | models.Model) -> str:
    return f"view_{model._meta.model_name}"


def _invalidate(**kwargs) -> None:
    _current[0] = next(_generation)


def _connect_invalidation() -> None:
    """Drop memos whenever a grant changes. Connected before the first memo is made, so none is stale."""
    with _connect_lock:
        if _connected[0]:
            return
        for model in apps.get_models():
            if issubclass(model, (UserObjectPermissionBase, GroupObjectPermissionBase)):
                post_save.connect(_invalidate, sender=model, dispatch_uid=f"access-save-{model._meta.label}")
                post_delete.connect(_invalidate, sender=model, dispatch_uid=f"access-delete-{model._meta.label}")
        user_model = get_user_model()
        for through in (user_model.groups.through, user_model.user_permissions.through, Group.permissions.through):
            m2m_changed.connect(_invalidate, sender=through, dispatch_uid=f"access-m2m-{through._meta.label}")
        for model in (Group, Permission, ContentType):
            post_delete.connect(_invalidate, sender=model, dispatch_uid=f"access-delete-{model._meta.label}")
        _current[0] = next(_generation)
        _connected[0] = True


def _obj_filter(perm_model, alias: str, pk_sql: str) -> str:
    if perm_model.objects.is_generic():
        return f"{alias}.content_type_id = %s AND {alias}.object_pk = CAST({pk_sql} AS text)"
    column = perm_model._meta.get_field("content_object").column
    return f"{alias}.{column} = {pk_sql}"


def _perms_sql(model: type[models.Model], pk_sql: str = "%s") -> tuple[str, bool, bool]:
    """One statement: codenames held model-wide in the app, plus those held on one object, whose primary
    key is a parameter or, embedded in another statement, `pk_sql` (a column of the enclosing row).
    Also whether the user and the group object permission tables are guardian's generic ones."""
    entry = _sql_by_model.get((model, pk_sql))
    if entry is None:
        user_model = get_user_model()
        user_perms = user_model.user_permissions.through._meta.db_table
        user_groups = user_model.groups.through._meta.db_table
        group_perms = Group.permissions.through._meta.db_table
        uop = get_user_obj_perms_model(model)
        gop = get_group_obj_perms_model(model)
        uop_user = uop._meta.get_field("user").column
        gop_group = gop._meta.get_field("group").column
        ug_user = user_model.groups.through._meta.get_field(user_model.groups.field.m2m_field_name()).column
        ug_group = user_model.groups.through._meta.get_field(user_model.groups.field.m2m_reverse_field_name()).column
        up_user = user_model.user_permissions.through._meta.get_field(
            user_model.user_permissions.field.m2m_field_name()
        ).column
        sql = (
            f"SELECT p.codename FROM {Permission._meta.db_table} p"
            f" JOIN {ContentType._meta.db_table} ct ON ct.id = p.content_type_id AND ct.app_label = %s"
            f" WHERE p.id IN (SELECT up.permission_id FROM {user_perms} up WHERE up.{up_user} = %s)"
            f" OR p.id IN (SELECT gp.permission_id FROM {group_perms} gp"
            f" JOIN {user_groups} ug ON ug.{ug_group} = gp.group_id WHERE ug.{ug_user} = %s)"
            f" UNION SELECT p.codename FROM {Permission._meta.db_table} p WHERE p.content_type_id = %s AND ("
            f"p.id IN (SELECT o.permission_id FROM {uop._meta.db_table} o"
            f" WHERE o.{uop_user} = %s AND {_obj_filter(uop, 'o', pk_sql)})"
            f" OR p.id IN (SELECT g.permission_id FROM {gop._meta.db_table} g"
            f" JOIN {user_groups} ug ON ug.{ug_group} = g.{gop_group}"
            f" WHERE ug.{ug_user} = %s AND {_obj_filter(gop, 'g', pk_sql)}))"
        )
        entry = _sql_by_model[(model, pk_sql)] = (sql, uop.objects.is_generic(), gop.objects.is_generic())
    return entry


def _perms_params(user, model: type[models.Model], ctype: ContentType, pk=None) -> list:
    """The statement's parameters; `pk` None when the statement reads it from a column."""
    _, user_generic, group_generic = _perms_sql(model)

    def obj(generic: bool) -> list:  # the object's identity: generic tables store its type and pk as text
        ids = [ctype.id] if generic else []
        if pk is not None:
            ids.append(str(pk) if generic else pk)
        return ids

    return [
        model._meta.app_label,
        user.pk,
        user.pk,
        ctype.id,
        user.pk,
        *obj(user_generic),
        user.pk,
        *obj(group_generic),
    ]


def _memo(user) -> dict:
    if not _connected[0]:
        _connect_invalidation()
    generation, memo = user.__dict__.get(_CACHE_ATTR, (None, None))
    if generation != _current[0]:
        memo = {}
        user.__dict__[_CACHE_ATTR] = (_current[0], memo)
    return memo


def held_codenames(user, obj: models.Model) -> frozenset[str]:
    """Every codename `user` holds on `obj` (model-wide in obj's app, or on obj), one query, memoized."""
    memo = _memo(user)
    ctype = get_content_type(obj)
    key = (ctype.id, str(obj.pk))
    codenames = memo.get(key)
    if codenames is None:
        sql = _perms_sql(type(obj))[0]
        with connection.cursor() as cursor:
            cursor.execute(sql, _perms_params(user, type(obj), ctype, obj.pk))
            codenames = frozenset(row[0] for row in cursor.fetchall())
        memo[key] = codenames
    return codenames


def codenames_column(user, model: type[models.Model], pk_sql: str) -> tuple[str, list] | None:
    """held_codenames() as an ARRAY expression (and its parameters) for a statement that reads the object
    itself, whose primary key is the column `pk_sql`: one round trip instead of two. Hand the array to
    remember() with the object. None when has_perm() asks nothing for this user (inactive, superuser,
    anonymous) or the database has no arrays (SQLite: has_perm() then asks on its own)."""
    if connection.vendor != "postgresql" or not _asks_database(user):
        return None
    sql = _perms_sql(model, pk_sql)[0]
    return f"ARRAY({sql})", _perms_params(user, model, get_content_type(model))


def remember(user, obj: models.Model, codenames) -> None:
    """What codenames_column() read for `obj`, as if held_codenames() had asked."""
    _memo(user)[(get_content_type(obj).id, str(obj.pk))] = frozenset(codenames)


def _asks_database(user) -> bool:
    """Whether has_perm() reads this user's grants: inactive users hold nothing and active superusers
    everything without asking; anonymous or unsaved users hold nothing."""
    return bool(user and user.is_active and not user.is_superuser and not user.is_anonymous and user.pk is not None)


def has_perm(user, codename: str, obj: models.Model) -> bool:
    if not _asks_database(user):
        return bool(user and user.is_active and user.is_superuser)
    return codename in held_codenames(user, obj)


def may_view_all(users: list, objects: tuple) -> set[int]:
    """The ids of the users who may view every one of the objects, as has_perm() decides it. Their grants are read
    for all of them in one statement (codenames_column per user and object, handed to remember()), so a page
    asking it of many users (a request's approvers) costs the same however many they are. Users it asks nothing of
    (superusers; every user on SQLite) are answered by has_perm() itself."""
    user_meta = get_user_model()._meta
    pks = [f"o{i}.{o._meta.pk.column}" for i, o in enumerate(objects)]
    tables = ", ".join([f"{user_meta.db_table} u", *(f"{o._meta.db_table} o{i}" for i, o in enumerate(objects))])
    where = " AND ".join(f"{column} = %s" for column in [f"u.{user_meta.pk.column}", *pks])
    statements, params, asked = [], [], {}
    for user in users:
        columns = [codenames_column(user, type(o), pk) for o, pk in zip(objects, pks, strict=True)]
        if None in columns:
            continue
        arrays = ", ".join(sql for sql, _ in columns)
        statements.append(f"SELECT u.{user_meta.pk.column}, {arrays} FROM {tables} WHERE {where}")  # noqa: S608 - names from the models, values bound
        params.extend([*(p for _, column_params in columns for p in column_params), user.pk, *(o.pk for o in objects)])
        asked[user.pk] = user
    if statements:
        with connection.cursor() as cursor:
            cursor.execute(" UNION ALL ".join(statements), params)
            for user_pk, *held in cursor.fetchall():
                for obj, codenames in zip(objects, held, strict=True):
                    remember(asked[user_pk], obj, codenames)
    return {u.pk for u in users if all(has_perm(u, view_codename(o), o) for o in objects)}


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
