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

from accounts import scopes as scope_names
from accounts.models import ApiToken
from audit.services import record
from core import context
from core.errors import Conflict, Forbidden, InvalidInput, NotFound

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
        raise Forbidden(
            f"A token that expires at {max_expires_at:%Y-%m-%dT%H:%M:%SZ} cannot create a token that outlives it: "
            f"pass expires_in_days of at most {days}.",
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


def token_revoke(*, actor, token_id: int, reason: str = "") -> ApiToken:
    with transaction.atomic():
        token = ApiToken.objects.select_for_update(no_key=True).select_related("user").filter(pk=token_id).first()
        if token is None or not token_revocable_by(actor, token):
            raise NotFound(f"No API token with id {token_id}.")
        if token.revoked_at is not None:
            raise Conflict(f"Token {token.prefix} was already revoked at {token.revoked_at.isoformat()}.")
        before = _token_snapshot(token)
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        record(
            action="token.revoked",
            subject=token,
            actor=actor,
            before=before,
            after=_token_snapshot(token),
            reason=reason,
        )
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
    """Give a user or group an object permission (guardian), audited on the object."""
    kind, name = _principal(principal)
    with transaction.atomic():
        assign_perm(perm, principal, obj)
        record(action="permission.granted", subject=obj, actor=actor, after={"perm": perm, kind: name}, reason=reason)


def permission_revoke(*, actor, principal, perm: str, obj: models.Model, reason: str = "") -> None:
    kind, name = _principal(principal)
    with transaction.atomic():
        remove_perm(perm, principal, obj)
        record(action="permission.revoked", subject=obj, actor=actor, before={"perm": perm, kind: name}, reason=reason)
