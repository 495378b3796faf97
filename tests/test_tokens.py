"""API tokens: shown once, stored hashed, identified by prefix, scoped, expiring, revocable, audited."""

import hashlib
import io
import json
import logging
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from accounts import scopes
from accounts.authentication import LAST_USED_RESOLUTION
from accounts.models import ApiToken
from audit.models import AuditEvent
from tests.conftest import bearer

TOKENS = "/api/v1/tokens/"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def parts(plaintext: str) -> tuple[str, str]:
    mgr, prefix, secret = plaintext.split("_", 2)
    assert mgr == "mgr"
    return prefix, secret


def create(client, scope_list=("read",), **extra):
    return client.post(TOKENS, {"name": "ci", "scopes": list(scope_list), **extra}, format="json")


def text_columns() -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type IN "
            "('text', 'character varying', 'character', 'json', 'jsonb') ORDER BY table_name, column_name"
        )
        return cursor.fetchall()


def occurrences(needle: str) -> list[tuple[str, str]]:
    """Every (table, column) of the whole database whose text contains `needle`."""
    found = []
    with connection.cursor() as cursor:
        for table, column in text_columns():
            cursor.execute(
                f'SELECT count(*) FROM "{table}" WHERE strpos("{column}"::text, %s) > 0',  # noqa: S608
                [needle],
            )
            if cursor.fetchone()[0]:
                found.append((table, column))
    return found


def dump(table: str) -> str:
    """Every row of a table, every column, as text."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT row_to_json(t)::text FROM {table} t")  # noqa: S608
        return "\n".join(row[0] for row in cursor.fetchall())


# --- storage --------------------------------------------------------------------------------


def test_token_is_shown_once_and_stored_only_as_a_hash(personas, caplog):
    caplog.set_level(logging.DEBUG)
    owner = personas["owner"]
    response = create(owner.client(), ["read", "versions:write"], expires_in_days=30)
    assert response.status_code == 201, response.content
    body = response.json()
    plaintext = body["token"]
    prefix, secret = parts(plaintext)
    assert len(secret) >= 40
    assert body["prefix"] == prefix
    assert "no-store" in response["Cache-Control"]  # no cache on the way keeps the one copy of the token

    token = ApiToken.objects.get(pk=body["id"])
    assert token.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert token.prefix == prefix
    assert ApiToken.objects.get(prefix=prefix) == token  # the prefix identifies it

    assert bearer(plaintext).get("/api/v1/me").status_code == 200  # used once, so logs had a chance

    assert any("apitoken" in t for t, _ in text_columns())
    for persona in personas.values():
        for needle in (persona.token, parts(persona.token)[1]):
            assert occurrences(needle) == []
    for needle in (plaintext, secret, secret[:20]):
        assert occurrences(needle) == [], needle
        assert needle not in dump("accounts_apitoken")
        assert needle not in dump("audit_auditevent")
        assert needle not in caplog.text
    assert occurrences(token.token_hash) == [("accounts_apitoken", "token_hash")]
    assert prefix in dump("audit_auditevent")  # the audit trail names the token by its prefix

    listed = owner.client().get(TOKENS).json()
    assert {t["prefix"] for t in listed} == {prefix, parts(owner.token)[0]}
    assert all(set(t) == {"id", "name", "prefix", "user", "scopes", "created_at", "expires_at", "revoked_at",
                          "last_used_at"} for t in listed)  # fmt: skip
    assert plaintext not in json.dumps(listed)


def test_list_shows_only_my_tokens(personas):
    listed = personas["reviewer"].client().get(TOKENS).json()
    assert [t["user"] for t in listed] == ["reviewer"]


# --- expiry, revocation, last use -----------------------------------------------------------


def test_expiry_is_honoured(personas, make_token):
    plaintext = make_token(personas["ci_bot"].user, ["read"], expires_in_days=2)
    token = ApiToken.objects.get(prefix=parts(plaintext)[0])
    assert timedelta(days=2) - timedelta(minutes=1) < token.expires_at - timezone.now() <= timedelta(days=2)
    assert bearer(plaintext).get("/api/v1/me").status_code == 200

    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = bearer(plaintext).get("/api/v1/me")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "authentication_failed"
    assert f"API token {token.prefix} expired at" in error["message"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_revocation_through_the_api(personas, make_token):
    ci_bot = personas["ci_bot"]
    plaintext = make_token(ci_bot.user, ["read"])
    token = ApiToken.objects.get(prefix=parts(plaintext)[0])
    assert bearer(plaintext).get("/api/v1/me").status_code == 200

    response = ci_bot.client().post(f"{TOKENS}{token.pk}/revoke", {"reason": "rotated"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["revoked_at"] is not None
    token.refresh_from_db()
    assert token.revoked_at is not None

    refused = bearer(plaintext).get("/api/v1/me")
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == f"API token {token.prefix} has been revoked."

    again = ci_bot.client().post(f"{TOKENS}{token.pk}/revoke", {}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


def test_a_token_can_revoke_itself(personas, make_token):
    plaintext = make_token(personas["ci_bot"].user, ["read", "tokens:write"])
    token = ApiToken.objects.get(prefix=parts(plaintext)[0])
    assert bearer(plaintext).post(f"{TOKENS}{token.pk}/revoke", {}, format="json").status_code == 200
    assert bearer(plaintext).get("/api/v1/me").status_code == 401


def test_cannot_revoke_someone_elses_token(personas, make_token):
    victim = make_token(personas["auditor"].user, ["read"])
    token = ApiToken.objects.get(prefix=parts(victim)[0])
    response = personas["outsider"].client().post(f"{TOKENS}{token.pk}/revoke", {}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    token.refresh_from_db()
    assert token.revoked_at is None
    assert bearer(victim).get("/api/v1/me").status_code == 200
    # an administrator may
    assert personas["admin"].client().post(f"{TOKENS}{token.pk}/revoke", {}, format="json").status_code == 200
    assert bearer(victim).get("/api/v1/me").status_code == 401


def test_inactive_user_token_is_refused(personas):
    user = personas["outsider"].user
    user.is_active = False
    user.save(update_fields=["is_active"])
    response = personas["outsider"].client().get("/api/v1/me")
    assert response.status_code == 401
    assert "inactive" in response.json()["error"]["message"]


def test_last_used_at_is_set(personas, make_token):
    plaintext = make_token(personas["ci_bot"].user, ["read"])
    token = ApiToken.objects.get(prefix=parts(plaintext)[0])
    assert token.last_used_at is None
    before = timezone.now()
    assert bearer(plaintext).get("/api/v1/me").status_code == 200
    token.refresh_from_db()
    assert before <= token.last_used_at <= timezone.now()

    stale = timezone.now() - LAST_USED_RESOLUTION - timedelta(seconds=5)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=stale)
    bearer(plaintext).get("/api/v1/me")
    token.refresh_from_db()
    assert token.last_used_at > stale + LAST_USED_RESOLUTION

    listed = bearer(plaintext).get(TOKENS).json()
    assert next(t for t in listed if t["id"] == token.pk)["last_used_at"] is not None


def test_failed_authentication_does_not_touch_last_used(personas, make_token):
    plaintext = make_token(personas["ci_bot"].user, ["read"], expires_in_days=1)
    token = ApiToken.objects.get(prefix=parts(plaintext)[0])
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert bearer(plaintext).get("/api/v1/me").status_code == 401
    token.refresh_from_db()
    assert token.last_used_at is None


# --- scopes ---------------------------------------------------------------------------------


def test_read_only_token_cannot_create_tokens(personas, make_token):
    plaintext = make_token(personas["owner"].user, ["read"])
    client = bearer(plaintext)
    assert client.get(TOKENS).status_code == 200
    assert client.get("/api/v1/me").json()["token_scopes"] == ["read"]
    count = ApiToken.objects.count()
    response = create(client, ["read"])
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert "tokens:write" in error["message"]
    assert ApiToken.objects.count() == count


def test_token_without_read_cannot_read(personas, make_token):
    client = bearer(make_token(personas["owner"].user, ["tokens:write"]))
    response = client.get("/api/v1/me")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_token_cannot_mint_more_scopes_than_itself(personas, make_token):
    client = bearer(make_token(personas["owner"].user, ["read", "tokens:write"]))
    count = ApiToken.objects.count()
    response = create(client, ["read", "versions:write"])
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert "versions:write" in error["message"]
    assert ApiToken.objects.count() == count

    subset = create(client, ["read"])
    assert subset.status_code == 201
    assert subset.json()["scopes"] == ["read"]


def test_token_cannot_mint_a_token_that_outlives_it(personas, make_token):
    client = bearer(make_token(personas["owner"].user, ["read", "tokens:write"], expires_in_days=7))
    count = ApiToken.objects.count()
    for extra in ({}, {"expires_in_days": 30}, {"expires_in_days": None}):
        response = create(client, ["read"], **extra)
        assert response.status_code == 403, extra
        assert "outlives" in response.json()["error"]["message"]
    assert ApiToken.objects.count() == count
    assert create(client, ["read"], expires_in_days=6).status_code == 201


def test_a_token_with_less_than_a_day_left_is_told_it_cannot_create_any(personas, make_token):
    """It was told to pass expires_in_days of at most 0, which is a 400 (the shortest token lasts a day)."""
    from datetime import timedelta

    from django.utils import timezone

    plaintext = make_token(personas["owner"].user, ["read", "tokens:write"], expires_in_days=1)
    ApiToken.objects.filter(prefix=plaintext.split("_")[1]).update(expires_at=timezone.now() + timedelta(hours=5))
    count = ApiToken.objects.count()
    for extra in ({}, {"expires_in_days": 1}):
        response = create(bearer(plaintext), ["read"], **extra)
        assert response.status_code == 403, response.json()
        error = response.json()["error"]
        assert "has less than a day left and cannot create any token" in error["message"]
        assert "at most 0" not in error["message"]
        assert error["detail"] == {"expires_in_days": ["This token has less than a day left: it cannot create tokens."]}
    assert ApiToken.objects.count() == count


def test_session_may_create_any_scopes(personas, client):
    client.force_login(personas["outsider"].user)
    response = client.post(TOKENS, {"name": "x", "scopes": list(scopes.ALL)}, content_type="application/json")
    assert response.status_code == 201
    assert response.json()["scopes"] == sorted(scopes.ALL)


# --- auditing -------------------------------------------------------------------------------


def new_events(since_seq: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(seq__gt=since_seq).order_by("seq"))


def last_seq() -> int:
    return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


def assert_no_secret(event: AuditEvent, *secrets: str) -> None:
    text = json.dumps(event.as_export_dict())
    for secret in secrets:
        assert secret not in text


def test_creation_and_revocation_each_write_one_event(personas):
    ci_bot = personas["ci_bot"]
    using = ApiToken.objects.get(prefix=parts(ci_bot.token)[0])
    start = last_seq()
    body = create(ci_bot.client(), ["read"], expires_in_days=3).json()
    plaintext = body["token"]
    token = ApiToken.objects.get(pk=body["id"])

    [created] = new_events(start)
    assert created.action == "token.created"
    assert (created.subject_type, created.subject_id) == ("accounts.apitoken", str(token.pk))
    assert created.actor_username == "ci_bot"
    assert created.actor_id == ci_bot.user.pk
    assert created.token_id == using.pk
    after = json.loads(created.after)
    assert after["prefix"] == token.prefix
    assert after["scopes"] == ["read"]
    assert after["user"] == "ci_bot"
    assert created.before == "null"
    assert_no_secret(created, plaintext, parts(plaintext)[1], token.token_hash, ci_bot.token)

    start = last_seq()
    response = ci_bot.client().post(f"{TOKENS}{token.pk}/revoke", {"reason": "leaked in a log"}, format="json")
    assert response.status_code == 200
    [revoked] = new_events(start)
    assert revoked.action == "token.revoked"
    assert revoked.subject_id == str(token.pk)
    assert revoked.reason == "leaked in a log"
    assert json.loads(revoked.before)["revoked_at"] is None
    assert json.loads(revoked.after)["revoked_at"] is not None
    assert_no_secret(revoked, plaintext, parts(plaintext)[1], token.token_hash, ci_bot.token)


def test_refused_creation_writes_no_event(personas, make_token):
    client = bearer(make_token(personas["owner"].user, ["read", "tokens:write"]))
    start = last_seq()
    assert create(client, ["audit:read"]).status_code == 403
    assert create(client, ["bogus"]).status_code == 400
    assert new_events(start) == []


# --- the create_api_token command -----------------------------------------------------------


def run_command(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("create_api_token", *args, stdout=out)
    return out.getvalue().rstrip("\n").split("\n")


def test_command_prints_the_token_alone_on_the_last_line(personas):
    start = last_seq()
    lines = run_command("ci_bot", "--scopes", "read,versions:write")
    plaintext = lines[-1]
    prefix, secret = parts(plaintext)
    assert plaintext.strip() == plaintext and " " not in plaintext
    assert all(plaintext not in line for line in lines[:-1])
    token = ApiToken.objects.get(prefix=prefix)
    assert token.user.username == "ci_bot"
    assert token.scopes == ["read", "versions:write"]
    assert token.expires_at is None
    assert token.token_hash == ApiToken.hash_token(plaintext)

    me = bearer(plaintext).get("/api/v1/me")
    assert me.status_code == 200
    assert me.json()["username"] == "ci_bot"
    assert me.json()["token_scopes"] == ["read", "versions:write"]

    [event] = new_events(start)
    assert event.action == "token.created"
    assert event.actor_username == "cli:create_api_token"
    assert event.actor_id is None
    assert_no_secret(event, plaintext, secret)


def test_command_create_user_and_expiry(db):
    User = get_user_model()
    assert not User.objects.filter(username="pipeline").exists()
    start = last_seq()
    lines = run_command("pipeline", "--scopes", "read", "--create-user", "--expires-in-days", "3", "--name", "gh")
    plaintext = lines[-1]
    user = User.objects.get(username="pipeline")
    assert not user.has_usable_password()
    token = ApiToken.objects.get(prefix=parts(plaintext)[0])
    assert token.name == "gh"
    assert timedelta(days=3) - timedelta(minutes=1) < token.expires_at - timezone.now() <= timedelta(days=3)
    assert "expires: never" not in lines[0]
    assert bearer(plaintext).get("/api/v1/me").json()["username"] == "pipeline"
    assert [e.action for e in new_events(start)] == ["user.created", "token.created"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ci_bot", "--scopes", "read,admin"], "Unknown scope(s): admin"),
        (["ci_bot", "--scopes", ","], "At least one scope"),
        (["ci_bot", "--scopes", "read", "--expires-in-days", "0"], "from 1 to 3650"),
        (["ghost", "--scopes", "read"], "--create-user"),
        # a token refused leaves no user created and no role granted behind (they were, each audited)
        (["ghost", "--scopes", "read,admin", "--create-user", "--roles", "auditors"], "Unknown scope(s): admin"),
        (["ci_bot", "--scopes", "read", "--expires-in-days", "0", "--roles", "auditors"], "from 1 to 3650"),
    ],
)
def test_command_errors(personas, args, message):
    count, start = ApiToken.objects.count(), last_seq()
    groups = set(personas["ci_bot"].user.groups.values_list("name", flat=True))
    with pytest.raises(CommandError) as excinfo:
        run_command(*args)
    assert message in str(excinfo.value)
    assert ApiToken.objects.count() == count
    assert new_events(start) == []
    assert not get_user_model().objects.filter(username="ghost").exists()
    assert set(personas["ci_bot"].user.groups.values_list("name", flat=True)) == groups


# --- the hand-written look-up (accounts.authentication.token_by_hash) ----------------------------


def _orm_fields(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def test_token_look_up_reads_what_the_orm_reads(personas, make_token):
    """Every column of the token and its user comes back as the ORM converts it (JSON scopes, aware
    datetimes, booleans), and the user needs no further query."""
    from django.test.utils import CaptureQueriesContext

    from accounts.authentication import token_by_hash

    user = personas["owner"].user
    user.first_name, user.last_login = "Ada", timezone.now()
    user.save()
    plaintext = make_token(user, ["read", "versions:write"], expires_in_days=3)
    digest = ApiToken.hash_token(plaintext)
    ApiToken.objects.filter(token_hash=digest).update(revoked_at=timezone.now())
    with CaptureQueriesContext(connection) as queries:
        token = token_by_hash(digest)
        username = token.user.username
    assert len(queries) == 1 and username == "owner"
    stored = ApiToken.objects.select_related("user").get(token_hash=digest)
    assert _orm_fields(token) == _orm_fields(stored)
    assert _orm_fields(token.user) == _orm_fields(stored.user)
    assert token.scopes == ["read", "versions:write"] and token.revoked_at.tzinfo is not None
    assert token_by_hash(ApiToken.hash_token(plaintext + "x")) is None


def test_token_look_up_on_sqlite(sqlite_shell):
    """The embedded default: SQLite hands back text dates and integer booleans, the converters fix them."""
    script = (
        "from datetime import datetime\n"
        "from django.contrib.auth.models import User\n"
        "from accounts import services\n"
        "from accounts.authentication import token_by_hash\n"
        "from accounts.models import ApiToken\n"
        "user = User.objects.create_user('sq', is_staff=True)\n"
        "issued = services.token_create(actor='test', user=user, name='t', scopes=['read'])\n"
        "token = token_by_hash(ApiToken.hash_token(issued.plaintext))\n"
        "assert token.scopes == ['read'] and isinstance(token.created_at, datetime), vars(token)\n"
        "assert token.user.is_staff is True and token.user.is_active is True, vars(token.user)\n"
        "assert isinstance(token.user.date_joined, datetime) and token.user.date_joined.tzinfo is not None\n"
        "print('ok', token.user.username)\n"
    )
    printed, _ = sqlite_shell(script)
    assert "ok sq" in printed


@pytest.mark.parametrize("path", ["/api/v1/audit/events", "/api/v1/audit/head"])
def test_head_needs_the_scope_get_needs(personas, make_token, path):
    """HEAD runs the view's get(); its scope was looked up under "HEAD", found nowhere, and fell back to `read`:
    a read-only token got the audit chain's head (and could issue trails, which writes the audit log)."""
    read_only = bearer(make_token(personas["auditor"].user, ["read"]))
    for method in (read_only.get, read_only.head):
        response = method(path)
        assert response.status_code == 403, (method, response.status_code)
        assert "X-Audit-Last-Hash" not in response
    assert bearer(make_token(personas["auditor"].user, ["audit:read"])).head(path).status_code == 200


def test_a_name_holding_a_token_is_refused_and_an_events_subject_is_masked(personas, make_token):
    """A token's name is listed and kept in its events' subject_repr for good: one holding another token (pasted by
    mistake) is a 400 and nothing is created; and whatever reaches an event's subject is masked as in the logs."""
    from audit.services import new_event

    ci_bot = personas["ci_bot"]
    pasted = make_token(ci_bot.user, ["read"])
    count, start = ApiToken.objects.count(), last_seq()
    refused = ci_bot.client().post(TOKENS, {"name": f"copy of {pasted}", "scopes": ["read"]}, format="json")
    assert refused.status_code == 400 and "looks like a secret" in refused.json()["error"]["message"]
    assert pasted not in refused.content.decode()
    assert ApiToken.objects.count() == count and new_events(start) == []
    event = new_event(action="x.y", subject_type="a.b", subject_id=1, subject_repr=f"copy of {pasted}")
    assert event.subject_repr == f"copy of mgr_{parts(pasted)[0]}_***"


def test_a_token_pasted_into_a_reason_is_masked_in_the_audit_log(personas, make_token):
    """The audit log is append-only: a secret pasted into it could never be removed."""
    ci_bot = personas["ci_bot"]
    plaintext = make_token(ci_bot.user, ["read"])
    token = ApiToken.objects.get(prefix=parts(plaintext)[0])
    reason = f"leaked in a CI log: {plaintext}"
    assert ci_bot.client().post(f"{TOKENS}{token.pk}/revoke", {"reason": reason}, format="json").status_code == 200
    event = AuditEvent.objects.get(action="token.revoked")
    assert plaintext not in event.reason and event.reason == f"leaked in a CI log: mgr_{token.prefix}_***"
    assert plaintext not in (AuditEvent.objects.get(pk=event.pk).line or "")
