"""Writes for identity and access: API tokens and object permissions, each audited."""

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from accounts import scopes as scope_names
from accounts.models import ApiToken
from audit.services import record
from core import context
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.logging import refuse_secret

MAX_EXPIRY_DAYS = 3650
TOKEN_FIELDS = ["name", "prefix", "scopes", "expires_at", "revoked_at"]


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    plaintext: str  # shown once; never stored


def _token_snapshot(token: ApiToken) -> dict:
    return {"user": token.user.get_username(), **{f: getattr(token, f) for f in TOKEN_FIELDS}}


def token_create(
    *,
    actor,
    user,
    name: str,
    scopes: list[str] | str,
    expires_in_days: int | None = None,
    max_scopes: list[str] | None = None,
    max_expires_at: datetime | None = None,
) -> IssuedToken:
    """Issue a token for `user`. `max_scopes` and `max_expires_at` cap what a token-authenticated caller
    may grant: a token cannot mint one with more scopes than itself, or one that outlives it."""
    refuse_secret("name", name)
    try:
        scope_list = scope_names.parse(scopes)
    except ValueError as exc:
        raise InvalidInput(str(exc), detail={"scopes": [str(exc)]}) from None
    if max_scopes is not None and not set(scope_list) <= set(max_scopes):
        extra = sorted(set(scope_list) - set(max_scopes))
        raise Forbidden(f"A token cannot grant scopes it does not have itself: {', '.join(extra)}.")
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        message = f"expires_in_days must be from 1 to {MAX_EXPIRY_DAYS}."
        raise InvalidInput(message, detail={"expires_in_days": [message]})
    now = timezone.now()
    expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
    if max_expires_at is not None and (expires_at is None or expires_at > max_expires_at):
        days = max((max_expires_at - now).days, 0)
        ends = f"A token that expires at {max_expires_at:%Y-%m-%dT%H:%M:%SZ}"
        if days < 1:  # a token lasts at least a day: there is no expires_in_days to suggest
            raise Forbidden(
                f"{ends} has less than a day left and cannot create any token (the shortest lasts a day): create it "
                "with a longer-lived token, a signed-in session (POST /api/v1/tokens/) or manage.py create_api_token.",
                detail={"expires_in_days": ["This token has less than a day left: it cannot create tokens."]},
            )
        raise Forbidden(
            f"{ends} cannot create a token that outlives it: pass expires_in_days of at most {days}.",
            detail={"expires_in_days": [f"At most {days} for a token created with this token."]},
        )
    name = (name or "").strip() or "token"
    if len(name) > 100:
        raise InvalidInput("Token name must be at most 100 characters.", detail={"name": ["Too long."]})

    prefix = secrets.token_hex(6)
    plaintext = f"mgr_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            token_hash=ApiToken.hash_token(plaintext),
            scopes=scope_list,
            created_at=now,
            expires_at=expires_at,
        )
        record(action="token.created", subject=token, actor=actor, after=_token_snapshot(token))
    return IssuedToken(token=token, plaintext=plaintext)


def token_revocable_by(actor, token: ApiToken) -> bool:
    """Who may revoke a token: its owner, or a superuser (anyone's). Others are told it does not exist."""
    return actor.is_superuser or token.user_id == actor.pk


def token_revocation(token: ApiToken, *, revoked_at: datetime, reason: str) -> dict:
    """The audit event of revoking `token` at `revoked_at`, its snapshot before and after (never its secret or hash):
    what token_revoke records, and what deleting a user records for each live token the deletion takes with it."""
    before = _token_snapshot(token)
    after = {**before, "revoked_at": revoked_at}
    return {"action": "token.revoked", "subject": token, "before": before, "after": after, "reason": reason}


def token_revoke(*, actor, token_id: int, reason: str = "") -> ApiToken:
    with transaction.atomic():
        token = ApiToken.objects.select_for_update(no_key=True).select_related("user").filter(pk=token_id).first()
        if token is None or not token_revocable_by(actor, token):
            raise NotFound(f"No API token with id {token_id}.")
        if token.revoked_at is not None:
            raise Conflict(f"Token {token.prefix} was already revoked at {token.revoked_at.isoformat()}.")
        event = token_revocation(token, revoked_at=timezone.now(), reason=reason)
        token.revoked_at = event["after"]["revoked_at"]
        token.save(update_fields=["revoked_at"])
        record(**event, actor=actor)
    return token


def user_get_or_create(*, actor, username: str) -> tuple[models.Model, bool]:
    """A user without a usable password; its creation is audited (user.created) by accounts.signals, as `actor`."""
    User = get_user_model()
    acting = context.actor.set(actor)
    try:
        with transaction.atomic():
            return User.objects.get_or_create(username=username, defaults={"password": make_password(None)})
    finally:
        context.actor.reset(acting)


def _principal(principal) -> tuple[str, str]:
    if isinstance(principal, Group):
        return "group", principal.name
    return "user", principal.get_username()


def permission_grant(*, actor, principal, perm: str, obj: models.Model, reason: str = "") -> None:
    """Give a user or group an object permission (guardian), audited on the object. Only objects whose type has
    object permission tables of its own (models, deployment targets) take one: access checks read nothing else,
    and a row in guardian's generic tables would grant nothing and outlive its object (no foreign key to it)."""
    kind, name = _principal(principal)
    table = get_group_obj_perms_model(obj) if kind == "group" else get_user_obj_perms_model(obj)
    if table.objects.is_generic():
        raise InvalidInput(
            f"{obj._meta.verbose_name} objects take no object permissions: grant a model-wide permission instead, "
            "or an object permission on a registered model or a deployment target.",
            detail={"obj": [f"No object permissions on {obj._meta.label}."]},
        )
    with transaction.atomic():
        assign_perm(perm, principal, obj)
        record(action="permission.granted", subject=obj, actor=actor, after={"perm": perm, kind: name}, reason=reason)


def permission_revoke(*, actor, principal, perm: str, obj: models.Model, reason: str = "") -> None:
    kind, name = _principal(principal)
    with transaction.atomic():
        remove_perm(perm, principal, obj)
        record(action="permission.revoked", subject=obj, actor=actor, before={"perm": perm, kind: name}, reason=reason)
