from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework import authentication, exceptions

from accounts.models import ApiToken
from core import context
from core.rows import SelectedColumns, fetch_one

# last_used_at is written at most this often per token, so reads don't turn into writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)


_TOKEN = SelectedColumns(ApiToken, "t")
_USER = SelectedColumns(get_user_model(), "u")
# Every API request runs this: hand-written, because the ORM's select_related query cost six times as
# much to build and compile as to run. Names come from the models' _meta; the hash is a parameter.
_BY_HASH = " ".join(
    [
        f"SELECT {_TOKEN.sql}, {_USER.sql} FROM {_TOKEN.table}",  # noqa: S608
        f"JOIN {_USER.table} ON {_USER.column('pk')} = {_TOKEN.column('user')}",
        f"WHERE {_TOKEN.column('token_hash')} = %s",
    ]
)


def token_by_hash(token_hash: str) -> ApiToken | None:
    """The token with this hash and its user (token.user needs no further query)."""
    row = fetch_one(_BY_HASH, [token_hash])
    if row is None:
        return None
    token = _TOKEN.instance(row)
    token.user = _USER.instance(row, start=_TOKEN.width)
    return token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer mgr_<prefix>_<secret>`; request.auth becomes the ApiToken."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if not parts or parts[0].lower() != self.keyword.lower():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'.")
        plaintext = parts[1]
        token = token_by_hash(ApiToken.hash_token(plaintext))
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid API token.")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed(f"API token {token.prefix} has been revoked.")
        if token.is_expired:
            expired = f"{token.expires_at:%Y-%m-%dT%H:%M:%SZ}"
            raise exceptions.AuthenticationFailed(f"API token {token.prefix} expired at {expired}.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The user of this API token is inactive.")
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        context.token_id.set(token.pk)
        context.actor.set(token.user)
        return token.user, token

    def authenticate_header(self, request):
        return f'{self.keyword} realm="api"'
