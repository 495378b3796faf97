"""Outgoing webhooks: endpoints, the dispatcher that reads the audit log, and signed delivery.

The audit log is the transactional outbox. Every change of state already writes an AuditEvent in
its own transaction, so nothing here has to be enqueued inside a caller's transaction:

- `dispatch()` locks the single `WebhookCursor` row, reads the audit events after its `last_seq`,
  creates one `WebhookDelivery` per (event, subscribed endpoint) and advances the cursor, all in
  one transaction. Two dispatchers serialize on the row lock and never create a delivery twice
  (the (endpoint, event_seq) unique constraint backs this up). Audit seqs are assigned under the
  chain-head lock, so committed events are always a gapless prefix: the cursor never skips one.
- `deliver()` claims a due delivery with a conditional UPDATE (pushing `next_attempt_at` forward by
  a lease), POSTs it signed in the Standard Webhooks format, logs the attempt, and either marks it
  delivered, schedules the next attempt (exponential backoff with jitter) or marks it failed after
  `WEBHOOK_MAX_ATTEMPTS` (at once on 410 Gone, which also deactivates the endpoint). A duplicate task finds
  nothing to claim. `delivery_redeliver()` queues a failed delivery again, under the same webhook-id.
- Celery beat runs the dispatcher every few seconds and the sweeper, which re-enqueues pending
  deliveries whose time has come but whose task was lost (broker down at enqueue time, long
  backoffs). A delivery starts within one dispatch interval (`WEBHOOK_DISPATCH_INTERVAL_SECONDS`): writes
  never touch the broker, so a change of state costs no broker round trip and cannot fail for want of one.

So when the broker is down nothing is lost: the events wait in the audit table and the
deliveries in theirs until a worker can be reached again.

Secrets: `whsec_<base64 of 32 random bytes>`, shown once on creation (and on rotation), stored encrypted with a
Fernet key derived (HKDF-SHA256) from SECRET_KEY (keys in SECRET_KEY_FALLBACKS, read from the environment
by config/settings.py, still decrypt), and never logged, audited or returned again. A rotation keeps the previous
secret signing too (a second `v1,` signature, after the new one) for a grace period. Receiver URLs may carry a
credential of the receiver's, so they are encrypted the same way; audit events and logs get `redact_url()`.

Egress: an attempt's answer is kept in the delivery log, so deliveries connect only to public addresses and to
WEBHOOK_ALLOWED_NETWORKS, checked on each address a host resolves to as it is connected (governance.webhook_egress).
"""

import base64
import contextlib
import email.utils
import http.client
import ipaddress
import json
import logging
import math
import random
import re
import secrets as pysecrets
import socket
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

from celery import current_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import BooleanField, ExpressionWrapper, Max, Min, Q
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.crypto import salted_hmac
from standardwebhooks import Webhook

from audit.models import AuditEvent, format_time
from audit.services import record
from core.errors import Conflict, InvalidInput, NotFound
from core.etags import check_if_match, etag_of
from core.logging import refuse_secret
from core.unicode import printable
from governance.webhook_egress import ALLOW_HINT, EgressRefused, egress_refusal, host_refusal, ip_literal
from governance.webhook_models import (
    DeliveryState,
    WebhookAttempt,
    WebhookCursor,
    WebhookDelivery,
    WebhookEndpoint,
)

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

log = logging.getLogger(__name__)

# Audit actions that are sent as webhooks. Everything else in the audit log is skipped.
EVENT_TYPES = (
    "version.registered",
    "promotion.requested",
    "promotion.approved",
    "promotion.rejected",
    "promotion.cancelled",
    "promotion.expired",
    "release.started",
    "release.live",
    "release.failed",
    "release.rolled_back",
)
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
SECRET_BYTES = 32
ROTATION_GRACE_SECONDS = 24 * 3600  # the default, and the longest, time both secrets sign after a rotation
MANAGE_PERMISSION = "governance.manage_webhooks"
# A subscription is a live copy of the audit log across every object, so managing one (which includes
# reading its delivery log) also needs what exporting the audit log needs.
AUDIT_PERMISSION = "audit.view_auditevent"
MANAGE_PERMISSIONS = (MANAGE_PERMISSION, AUDIT_PERMISSION)
SYSTEM_ACTOR = "system:webhooks"  # the audit actor of what deliveries do by themselves
GONE_REASON = "receiver answered 410 Gone"
USER_AGENT = "model-governance-registry-webhooks/1"
EXCERPT_CHARS = 500
ERROR_CHARS = 1000  # an attempt's stored error (and the delivery's last_error), whatever the receiver sent


def max_attempts() -> int:
    return settings.WEBHOOK_MAX_ATTEMPTS


def timeout_seconds() -> float:
    return settings.WEBHOOK_TIMEOUT_SECONDS


# --- access ---------------------------------------------------------------------------------


def may_manage(user) -> bool:
    """Webhooks are platform configuration: superusers, or holders of both governance.manage_webhooks and
    audit.view_auditevent. The one rule for every webhook endpoint of the API (list, create, change, delete,
    delivery log): an endpoint subscribed to "*" receives the audit event of every model and target, which
    is exporting the audit log, so manage_webhooks alone must not be a way around the auditor role."""
    return bool(user and user.is_active and user.has_perms(MANAGE_PERMISSIONS))


# --- secrets --------------------------------------------------------------------------------


# cryptography is imported where a secret is sealed or opened (creating an endpoint, delivering): loaded by
# this module, it would cost every web worker 6.5 MB that most of them never use.


def _fernet_key(secret_key: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"model-governance-registry",
        info=b"governance.webhooks endpoint secrets v1",
    )
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))


@lru_cache(maxsize=4)
def _secret_box(secret_key: str, fallbacks: tuple[str, ...]) -> "MultiFernet":
    from cryptography.fernet import Fernet, MultiFernet

    return MultiFernet([Fernet(_fernet_key(k)) for k in (secret_key, *fallbacks)])


def secret_box() -> "MultiFernet":
    """Encrypts with the key from SECRET_KEY; also decrypts with keys from SECRET_KEY_FALLBACKS."""
    return _secret_box(settings.SECRET_KEY, tuple(settings.SECRET_KEY_FALLBACKS))


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(pysecrets.token_bytes(SECRET_BYTES)).decode()


def encrypt_secret(secret: str) -> str:
    return secret_box().encrypt(secret.encode()).decode()


def decrypt_secret(token: str) -> str:
    return secret_box().decrypt(token.encode()).decode()


# The URL goes in the same box: a receiver's token in its query or path is a secret too.
encrypt_url = encrypt_secret
decrypt_url = decrypt_secret

REDACTED = "***"


# A path segment shown in clear: a short lowercase word (`services`, `hooks`, `api`, `v1`, `registry-hook`). A
# token is long, mixed-case, digit-heavy or holds other characters (Telegram's `/bot<id>:<token>/` comes first).
_WORDLIKE_SEGMENT = re.compile(r"[a-z][a-z0-9._-]{0,23}")


def redact_url(url: str) -> str:
    """A receiver URL as audit events and logs hold it: scheme, host, port and the first path segment when it reads
    as a word (else ***); the rest of the path is *** and so is every query value. Receivers put their credential
    anywhere in the path (Slack's third segment, Zapier's short last one, Telegram's first), so nothing past a
    first word is guessed safe; the host is kept, as where the events went is what an auditor needs. No fragment
    (never sent), no userinfo (refused anyway)."""
    parts = urllib.parse.urlsplit(url)
    first, rest = (parts.path.lstrip("/").split("/", 1) + [""])[:2]
    if first and not (_WORDLIKE_SEGMENT.fullmatch(first) and sum(c.isdigit() for c in first) <= 2):
        first = REDACTED
    path = f"/{first}/{REDACTED}" if rest else f"/{first}" if first else parts.path
    query = "&".join(
        f"{pair.partition('=')[0]}={REDACTED}" if "=" in pair else REDACTED for pair in parts.query.split("&") if pair
    )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], path, query, ""))


def url_fingerprint(url: str) -> str:
    """A keyed digest of the whole URL (HMAC with a key derived from SECRET_KEY): tells in the audit log that a URL
    changed where its redacted form did not (a new token), without a way back to the token."""
    return salted_hmac("governance.webhooks.url", url, algorithm="sha256").hexdigest()[:16]


# --- signing (Standard Webhooks) ------------------------------------------------------------


def sign(*, secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed by the base64-decoded secret."""
    return Webhook(secret).sign(webhook_id, datetime.fromtimestamp(timestamp, tz=UTC), body)


def signed_headers(
    *, secret: str, webhook_id: str, body: str, timestamp: int | None = None, previous_secret: str | None = None
) -> dict[str, str]:
    """With a previous secret (a rotation's grace period), one signature per secret, space-separated, the new one
    first: a receiver holding either verifies the message."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signatures = [
        sign(secret=key, webhook_id=webhook_id, timestamp=timestamp, body=body)
        for key in (secret, previous_secret)
        if key
    ]
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


# --- event filters and payloads -------------------------------------------------------------


def _pattern_matches(pattern: str, event_type: str) -> bool:
    if pattern == "*" or pattern == event_type:
        return True
    return pattern.endswith(".*") and event_type.startswith(pattern[:-1])


def validate_event_types(patterns) -> list[str]:
    """Each entry: an event type, a group wildcard ("promotion.*") or "*" for all of them."""
    known = f"Known event types: {', '.join(EVENT_TYPES)}; or a group such as 'promotion.*'; or '*'."
    if not isinstance(patterns, list) or not patterns:
        raise InvalidInput(
            'event_types must be a non-empty list, e.g. ["promotion.approved", "release.*"] or ["*"].',
            detail={"event_types": [known]},
        )
    unknown = [
        str(p) for p in patterns if not isinstance(p, str) or not any(_pattern_matches(p, t) for t in EVENT_TYPES)
    ]
    if unknown:
        raise InvalidInput(
            f"event_types: {', '.join(unknown)} matches no known event type.", detail={"event_types": [known]}
        )
    return sorted(set(patterns))


def subscribed(patterns: list[str], event_type: str) -> bool:
    return event_type in EVENT_TYPES and any(_pattern_matches(p, event_type) for p in patterns)


def event_payload(event: AuditEvent) -> dict:
    """What receivers get. Audit payloads are already redacted, so no secret can be in here."""
    return {
        "type": event.action,
        "timestamp": format_time(event.at),
        "data": {
            "seq": event.seq,
            "action": event.action,
            "at": format_time(event.at),
            "subject": {"type": event.subject_type, "id": event.subject_id, "repr": event.subject_repr},
            "actor": event.actor_username or None,
            "before": json.loads(event.before),
            "after": json.loads(event.after),
            "reason": event.reason,
            "request_id": event.request_id,
            "audit_hash": event.hash,
        },
    }


def _body(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- endpoints ------------------------------------------------------------------------------


def _bad_url(message: str) -> InvalidInput:
    return InvalidInput(f"url {message}", detail={"url": ["Use http(s)://host[:port]/path."]})


def _validate_url(url: str) -> str:
    url = url or ""
    bad = next((c for c in url if c.isspace() or unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise _bad_url(f"must not contain whitespace or control characters (found U+{ord(bad):04X}).")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # an unclosed or invalid [IPv6] host, a netloc that NFKC-normalises to a delimiter
        raise _bad_url(f"is malformed: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise _bad_url("must be an absolute http(s) URL.")
    if not parts.hostname:
        raise _bad_url("must name a host.")
    try:
        port = parts.port
    except ValueError:  # not all ASCII digits, or above 65535
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise _bad_url("port must be a number from 1 to 65535.")
    if parts.username or parts.password:
        raise InvalidInput(
            "url must not carry credentials: receivers authenticate deliveries by their signature.",
            detail={"url": ["Remove user:password@ from the URL."]},
        )
    # A literal address is refused now; a name only at delivery, where what it resolves to then is what counts.
    address = ip_literal(parts.hostname)
    refusal = egress_refusal(address) if address else None
    if refusal:
        raise InvalidInput(
            f"url {refusal}: webhooks reach only public addresses.",
            detail={"url": [f"Use a public host, or {ALLOW_HINT} (docs/webhooks.md)."]},
        )
    return url


def _endpoint_snapshot(endpoint: WebhookEndpoint) -> dict:
    """The endpoint as audit events record it: the URL redacted and fingerprinted, no secret."""
    url = endpoint.url  # decrypted once
    return {
        "name": endpoint.name,
        "url": redact_url(url),
        "url_fingerprint": url_fingerprint(url),
        "event_types": endpoint.event_types,
        "active": endpoint.active,
        "description": endpoint.description,
    }


def endpoint_create(
    *, actor, name: str, url: str, event_types: list[str], description: str = "", active: bool = True
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint. Returns it with its plaintext secret, which is never available again."""
    refuse_secret("name", name)
    refuse_secret("description", description)
    url = _validate_url(url)
    event_types = validate_event_types(event_types)
    secret = generate_secret()
    try:
        with transaction.atomic():
            endpoint = WebhookEndpoint.objects.create(
                name=name,
                url_encrypted=encrypt_url(url),
                secret_encrypted=encrypt_secret(secret),
                event_types=event_types,
                active=active,
                description=description,
                created_by=actor,
            )
            event = record(action="webhook.created", subject=endpoint, actor=actor, after=_endpoint_snapshot(endpoint))
            endpoint.created_seq = event.seq
            endpoint.save(update_fields=["created_seq"])
    except IntegrityError:
        raise Conflict(f"A webhook named {name} already exists.", code="already_exists") from None
    log.info(
        "webhook endpoint %s (%s) at %s created for %s",
        endpoint.pk,
        endpoint.name,
        redact_url(url),
        ", ".join(event_types),
    )
    return endpoint, secret


def endpoint_etag(endpoint: WebhookEndpoint, snapshot: dict | None = None) -> str:
    """The endpoint's entity tag: it changes when what a PATCH can change does (core.etags). `snapshot`: the
    endpoint's _endpoint_snapshot, when the caller has made it already (it decrypts the URL)."""
    return etag_of({"webhook": endpoint.pk, **(snapshot or _endpoint_snapshot(endpoint))})


def endpoint_update(
    *, actor, endpoint: WebhookEndpoint, if_match: str | None = None, reason: str = "", **changes
) -> WebhookEndpoint:
    """Change name, url, event_types, description or active. The secret stays as it is. With `if_match` (an If-Match
    header) only if the endpoint is still the one that ETag was read from, or already as asked: event_types is sent
    whole, so an edit of an older read would undo the change made since. `reason` goes into the audit event.

    Deactivating sends nothing more: the dispatcher skips the endpoint, and its pending deliveries are abandoned
    (failed, nothing sent) at their next attempt, unless it is activated again before then."""
    allowed = {"name", "url", "event_types", "description", "active"}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))} of a webhook.")
    for field in ("name", "description"):
        if field in changes:
            refuse_secret(field, changes[field])
    if "url" in changes:
        changes["url"] = _validate_url(changes["url"])
    if "event_types" in changes:
        changes["event_types"] = validate_event_types(changes["event_types"])
    try:
        with transaction.atomic():
            locked = WebhookEndpoint.objects.select_for_update(no_key=True).filter(pk=endpoint.pk).first()
            if locked is None:  # deleted since the caller read it
                raise NotFound(f"No webhook {endpoint.pk}.")
            before = _endpoint_snapshot(locked)
            etag = endpoint_etag(locked, before)
            if "url" in changes:
                locked.url_encrypted = encrypt_url(changes.pop("url"))
            for field, value in changes.items():
                setattr(locked, field, value)
            after = _endpoint_snapshot(locked)
            if after != before:
                check_if_match(if_match, etag, f"Webhook {locked.name}")
                locked.save()
                record(action="webhook.updated", subject=locked, actor=actor, before=before, after=after, reason=reason)
    except IntegrityError:
        raise Conflict(f"A webhook named {changes.get('name')} already exists.", code="already_exists") from None
    return locked


def _decrypts(token: str) -> bool:
    from cryptography.fernet import InvalidToken

    try:
        decrypt_secret(token)
    except InvalidToken:
        return False
    return True


def endpoint_rotate_secret(
    *, actor, endpoint: WebhookEndpoint, grace_period_seconds: int = ROTATION_GRACE_SECONDS
) -> tuple[WebhookEndpoint, str]:
    """Give the endpoint a new secret. Returns it with the new plaintext secret, which is never available again.

    For `grace_period_seconds` (at most ROTATION_GRACE_SECONDS) deliveries are signed with the previous secret too,
    so the receiver can switch when it likes; 0 ends the previous secret at once, and so does a previous secret
    that no longer decrypts (SECRET_KEY changed without SECRET_KEY_FALLBACKS: rotating is the way out). Rotating
    during a grace period ends it: only the secret just replaced keeps signing."""
    if not 0 <= grace_period_seconds <= ROTATION_GRACE_SECONDS:
        raise InvalidInput(
            f"grace_period_seconds must be from 0 (the previous secret stops at once) to {ROTATION_GRACE_SECONDS}.",
            detail={"grace_period_seconds": [f"0 to {ROTATION_GRACE_SECONDS}"]},
        )
    secret = generate_secret()
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update(no_key=True).filter(pk=endpoint.pk).first()
        if locked is None:  # deleted since the caller read it
            raise NotFound(f"No webhook {endpoint.pk}.")
        keep = grace_period_seconds > 0 and _decrypts(locked.secret_encrypted)
        locked.previous_secret_encrypted = locked.secret_encrypted if keep else ""
        # The database's clock, which deliveries compare it with (see _claim).
        locked.previous_secret_expires_at = Now() + timedelta(seconds=grace_period_seconds) if keep else None
        locked.secret_encrypted = encrypt_secret(secret)
        locked.save()
        locked.refresh_from_db(fields=["previous_secret_expires_at"])
        ends_at = locked.previous_secret_expires_at
        record(
            action="webhook.secret_rotated",
            subject=locked,
            actor=actor,
            after={
                "grace_period_seconds": grace_period_seconds if keep else 0,
                "grace_period_ends_at": format_time(ends_at) if ends_at else None,
            },
        )
    log.info(
        "webhook endpoint %s (%s): secret rotated; the previous one %s",
        locked.pk,
        locked.name,
        f"also signs until {format_time(ends_at)}" if ends_at else "no longer signs",
    )
    return locked, secret


def expire_previous_secrets() -> int:
    """Drop the previous secrets whose grace period is over (deliveries already ignore them). Returns how many."""
    return WebhookEndpoint.objects.filter(previous_secret_expires_at__lte=Now()).update(
        previous_secret_encrypted="", previous_secret_expires_at=None
    )


def endpoint_delete(*, actor, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint with its deliveries and their log (the audit log keeps that it existed).

    FOR UPDATE on the endpoint waits for a dispatcher fanning out to it (it holds the endpoint FOR NO KEY
    UPDATE) and makes a later one skip it; FOR UPDATE on its deliveries waits for an attempt being recorded
    (`_finish` holds its delivery) and makes a later one find the delivery gone. So whatever is in flight,
    nothing can insert a row that still points at the endpoint or its deliveries when they are deleted."""
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().filter(pk=endpoint.pk).first()
        if locked is None:  # a concurrent delete got there first
            raise NotFound(f"No webhook {endpoint.pk}.")
        list(WebhookDelivery.objects.select_for_update().filter(endpoint=locked).values_list("pk", flat=True))
        record(action="webhook.deleted", subject=locked, actor=actor, before=_endpoint_snapshot(locked))
        locked.delete()


# --- the egress rule applied to stored endpoints (manage.py webhook_egress_check) --------------


@dataclass
class EgressFinding:
    endpoint: WebhookEndpoint
    url: str  # redacted, as audit events hold it
    reason: str
    refused: bool  # False: the receiver could not be checked, and `reason` says why


def receiver_refusal(url: str) -> str | None:
    """Why a delivery to `url` would be refused now (every address its host resolves to is refused), resolved as a
    delivery resolves it; None when a delivery may connect. Raises OSError or ValueError when the host cannot be
    resolved."""
    parts = urllib.parse.urlsplit(url)
    addresses = resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout_seconds())
    refused = [r for *_, sockaddr in addresses if (r := egress_refusal(ipaddress.ip_address(sockaddr[0])))]
    return host_refusal(parts.hostname, refused) if refused and len(refused) == len(addresses) else None


def egress_findings() -> list[EgressFinding]:
    """Every active endpoint whose receiver the egress rule refuses now (saved before the rule, or under a
    WEBHOOK_ALLOWED_NETWORKS since narrowed, or a name that now resolves inside), and every one that could not be
    checked. Such an endpoint stays active and fails each delivery until it is changed or disabled."""
    findings = []
    for endpoint in WebhookEndpoint.objects.filter(active=True).select_related("created_by").order_by("pk"):
        url = endpoint.url
        if not url:
            reason = "not checked: its url cannot be decrypted (SECRET_KEY changed without SECRET_KEY_FALLBACKS?)"
            findings.append(EgressFinding(endpoint, "", reason, refused=False))
            continue
        try:
            reason = receiver_refusal(url)
        except (OSError, ValueError) as exc:  # a name that does not resolve, or not in time
            findings.append(
                EgressFinding(endpoint, redact_url(url), f"not checked: cannot resolve its host ({exc})", refused=False)
            )
            continue
        if reason:
            findings.append(EgressFinding(endpoint, redact_url(url), reason, refused=True))
    return findings


# --- dispatch: audit events -> deliveries ---------------------------------------------------


def _cursor_start() -> int:
    """Where a fresh cursor starts: just before the oldest endpoint, or at the end of the log."""
    first = WebhookEndpoint.objects.aggregate(s=Min("created_seq"))["s"]
    if first is not None:
        return first
    return AuditEvent.objects.aggregate(s=Max("seq"))["s"] or 0


@dataclass
class DispatchResult:
    delivery_ids: list[int]
    last_seq: int
    more: bool


def dispatch(*, batch_size: int = 200) -> DispatchResult:
    """Turn the next batch of audit events into deliveries. Safe to run concurrently.

    Beat runs it every few seconds, so it is also what drops rotated secrets whose grace period is over."""
    expire_previous_secrets()
    if not WebhookCursor.objects.filter(pk=1).exists():
        WebhookCursor.objects.get_or_create(pk=1, defaults={"last_seq": _cursor_start()})
    with transaction.atomic():
        cursor = WebhookCursor.objects.select_for_update(no_key=True).get(pk=1)
        log_end = AuditEvent.objects.aggregate(s=Max("seq"))["s"] or 0
        if cursor.last_seq > log_end:  # the audit log was reset (a restored or flushed database)
            log.warning("webhook cursor at #%s is past the audit log's end #%s; restarting", cursor.last_seq, log_end)
            cursor.last_seq = min(_cursor_start(), log_end)
            cursor.save(update_fields=["last_seq", "updated_at"])
        events = list(AuditEvent.objects.filter(seq__gt=cursor.last_seq).defer("line").order_by("seq")[:batch_size])
        if not events:
            return DispatchResult([], cursor.last_seq, False)
        # Locked (FOR NO KEY UPDATE, which an endpoint update also takes) until the deliveries are committed: a
        # concurrent delete waits and then deletes them too, and an endpoint deleted or deactivated first is
        # skipped here, instead of this transaction failing at commit on the deferred foreign key.
        endpoints = list(WebhookEndpoint.objects.filter(active=True).order_by("pk").select_for_update(no_key=True))
        deliveries = [
            WebhookDelivery(
                endpoint=endpoint,
                event_seq=event.seq,
                event_type=event.action,
                webhook_id=f"msg_{uuid.uuid4().hex}",
                body=_body(event_payload(event)),
                next_attempt_at=Now(),  # the database's clock, like every comparison with it (see _claim)
            )
            for event in events
            if event.action in EVENT_TYPES
            for endpoint in endpoints
            if endpoint.created_seq < event.seq and subscribed(endpoint.event_types, event.action)
        ]
        WebhookDelivery.objects.bulk_create(deliveries)
        cursor.last_seq = events[-1].seq
        cursor.save(update_fields=["last_seq", "updated_at"])
    if deliveries:
        log.info("webhooks: %s deliveries for audit events #%s..#%s", len(deliveries), events[0].seq, events[-1].seq)
    return DispatchResult([d.pk for d in deliveries], cursor.last_seq, len(events) == batch_size)


# --- delivery -------------------------------------------------------------------------------


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: exponential from WEBHOOK_RETRY_BASE_SECONDS, capped at
    WEBHOOK_RETRY_MAX_SECONDS, with jitter (uniform in [half, full] of the step) so receivers coming back
    from an outage are not hit by every sender at once. A receiver's Retry-After is honoured (capped)."""
    base, cap = settings.WEBHOOK_RETRY_BASE_SECONDS, settings.WEBHOOK_RETRY_MAX_SECONDS
    step = min(cap, base * 2 ** max(0, attempt - 1))
    delay = random.uniform(step / 2, step)  # noqa: S311 - jitter, not cryptography
    if retry_after:
        delay = max(delay, min(cap, retry_after))
    return delay


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is not a delivery: the 3xx is recorded as a failed attempt."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Deadline:
    """One attempt's overall deadline (WEBHOOK_TIMEOUT_SECONDS), not a per-read timeout.

    A socket timeout bounds each read, so a receiver trickling a byte at a time (in the status line, the
    headers or the body) could hold an attempt indefinitely, past its lease. At the deadline a watchdog
    shuts down the sockets it watches: whatever the attempt is blocked in (connecting through a proxy, the
    TLS handshake, sending, reading the answer) returns at once."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {self.seconds:g}s")
        return left

    def watch(self, sock: socket.socket) -> None:
        # The socket itself, not the connection's: urllib detaches it from the connection once the headers
        # are in, and the response reads its body from it.
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            self._shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        # socket.socket's own shutdown: an SSLSocket's would also drop its SSL object under the reader. OSError:
        # already closed, detached (then wrapped in TLS, which is watched too) or not connected yet (connecting
        # has its own timeout: the time left).
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class ResolveTimeout(TimeoutError):
    """The resolver gave no answer in time."""


def resolve(host: str, port: int, timeout: float) -> list:
    """socket.getaddrinfo(host, port) for a TCP connection, given up after `timeout` seconds. The C resolver takes no
    timeout (resolv.conf's retries over several servers add up to minutes), no socket timeout bounds it and no signal
    interrupts it, a task's soft time limit included. So it runs in a daemon thread: one that stalls ends by itself
    at the resolver's own timeout, and the caller goes on now."""
    done = threading.Event()
    outcome: dict = {}

    def lookup():
        try:
            outcome["addresses"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except Exception as exc:  # raised again below, in the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name="webhook-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise ResolveTimeout(f"timed out resolving {host}: no answer within {timeout:.3g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["addresses"]


def _deadline_connection(base: type[http.client.HTTPConnection], deadline: _Deadline):
    """`base` whose connect honours the deadline and whose sockets the deadline's watchdog can shut down."""

    class Connection(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = self._connect_before_deadline

        def _connect_before_deadline(self, address, timeout, source_address=None):
            # socket.create_connection, except that all the addresses a name resolves to share the deadline, and
            # that each is checked just before it is connected to: the address checked is the one used, whatever
            # the name resolved to before (DNS rebinding).
            host, port = address
            error: OSError | None = None
            refused: list[str] = []
            for family, kind, proto, _, sockaddr in resolve(host, port, min(timeout, deadline.remaining())):
                refusal = egress_refusal(ipaddress.ip_address(sockaddr[0]))
                if refusal:
                    refused.append(refusal)
                    continue
                sock = socket.socket(family, kind, proto)
                deadline.watch(sock)
                try:
                    sock.settimeout(min(timeout, deadline.remaining()))
                    if source_address:
                        sock.bind(source_address)
                    sock.connect(sockaddr)
                    return sock
                except OSError as exc:
                    sock.close()
                    error = exc
                    if isinstance(exc, TimeoutError):
                        break
            if refused and error is None:
                raise EgressRefused(host_refusal(host, refused))
            raise error or OSError(f"cannot resolve {host}")

        if issubclass(base, http.client.HTTPSConnection):

            def connect(self):
                # HTTPSConnection.connect, with the handshake done once self.sock is the TLS socket, so the
                # watchdog can cut a handshake that trickles too.
                http.client.HTTPConnection.connect(self)
                server_hostname = self._tunnel_host or self.host
                self.sock = self._context.wrap_socket(
                    self.sock, server_hostname=server_hostname, do_handshake_on_connect=False
                )
                deadline.watch(self.sock)
                self.sock.do_handshake()

    return Connection


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._connection_class = _deadline_connection(http.client.HTTPConnection, deadline)

    def http_open(self, req):
        return self.do_open(self._connection_class, req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._connection_class = _deadline_connection(http.client.HTTPSConnection, deadline)

    def https_open(self, req):
        return self.do_open(self._connection_class, req, context=self._context)


@dataclass
class HttpResult:
    status: int | None
    error: str
    excerpt: str
    retry_after: float | None


def _retry_after(headers) -> float | None:
    """Retry-After (RFC 9110): a number of seconds (digits only) or an HTTP date. None when absent, in the
    past, or not one of those (retry_delay applies the cap)."""
    value = (headers.get("Retry-After") or "").strip() if headers else ""
    if not value:
        return None
    if value.isascii() and value.isdigit():
        seconds = float(min(int(value), 10**9))  # far beyond any cap; keeps float() finite
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": an HTTP date is always GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _excerpt(response, deadline: _Deadline) -> str:
    """The start of the response body (at most EXCERPT_CHARS bytes), as much of it as came before the deadline.
    Only informative: a body that breaks off or arrives too slowly does not change the outcome."""
    data = b""
    read = getattr(response, "read1", None) or response.read
    try:
        while len(data) < EXCERPT_CHARS and not deadline.expired:
            chunk = read(EXCERPT_CHARS - len(data))
            if not chunk:
                break
            data += chunk
    except (OSError, ValueError, http.client.HTTPException):
        pass
    return data.decode("utf-8", "replace")


def _post(url: str, body: str, headers: dict[str, str], timeout: float) -> HttpResult:
    """POST and read the answer within `timeout` seconds in all (not per read). Never raises for anything the
    receiver (or the network) does: every such outcome is a failed attempt with its reason."""
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")  # noqa: S310
    with _Deadline(timeout) as deadline:
        opener = urllib.request.build_opener(
            _NoRedirect, _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline)
        )
        timed_out = HttpResult(None, f"TimeoutError: no complete answer within {timeout:g}s", "", None)
        try:
            with opener.open(request, timeout=timeout) as response:
                if deadline.expired:  # cut off in the headers (http.client takes the end of input for their end)
                    return timed_out
                return HttpResult(response.status, "", _excerpt(response, deadline), None)
        except urllib.error.HTTPError as exc:
            excerpt = _excerpt(exc, deadline)
            return HttpResult(exc.code, f"HTTP {exc.code} {exc.reason}", excerpt, _retry_after(exc.headers))
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            # HTTPException: what urllib lets through from http.client when the answer is not HTTP (an SSH
            # banner or TLS bytes on an http:// URL), or has an overlong line or too many headers.
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, EgressRefused | ResolveTimeout):  # nothing was sent: a failed attempt like any other
                return HttpResult(None, str(reason), "", None)
            if deadline.expired:
                return timed_out
            return HttpResult(None, f"{type(exc).__name__}: {reason}", "", None)


@dataclass
class DeliveryOutcome:
    delivery_id: int
    state: str
    attempt: int
    status: int | None
    error: str
    retry_in: float | None  # seconds until the next attempt, when one is scheduled


# What a claim adds to an attempt's deadline (WEBHOOK_TIMEOUT_SECONDS, name resolution included): recording the
# attempt, and the task's time limits above the deadline. While the lease runs, neither a duplicate task nor the
# sweeper can start a second attempt at the same delivery.
LEASE_MARGIN_SECONDS = 60


def lease_seconds() -> float:
    """How long claiming a delivery holds it: always longer than an attempt's deadline."""
    return timeout_seconds() + LEASE_MARGIN_SECONDS


def _claim(delivery_id: int) -> WebhookDelivery | None:
    # Due times are stamped and compared with the database's clock: a worker whose clock runs ahead would
    # otherwise claim a delivery another worker is attempting and send it twice.
    lease = timedelta(seconds=lease_seconds())
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, state=DeliveryState.PENDING, next_attempt_at__lte=Now()
    ).update(next_attempt_at=Now() + lease)
    if not claimed:
        return None
    # Whether a rotated secret's grace period still runs: the same clock decides.
    previous_live = ExpressionWrapper(Q(endpoint__previous_secret_expires_at__gt=Now()), output_field=BooleanField())
    return (
        WebhookDelivery.objects.select_related("endpoint")
        .annotate(previous_secret_live=previous_live)
        .filter(pk=delivery_id)
        .first()
    )


def _attempt(delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> HttpResult:
    if not endpoint.active:
        return HttpResult(None, "endpoint is inactive; delivery abandoned", "", None)
    from cryptography.fernet import InvalidToken

    try:
        secret = decrypt_secret(endpoint.secret_encrypted)
        url = decrypt_url(endpoint.url_encrypted)
        previous = decrypt_secret(endpoint.previous_secret_encrypted) if delivery.previous_secret_live else None
    except InvalidToken:
        return HttpResult(
            None,
            "cannot decrypt the endpoint secret or url (SECRET_KEY changed without SECRET_KEY_FALLBACKS?); "
            "set its url again and rotate its secret",
            "",
            None,
        )
    headers = signed_headers(
        secret=secret, webhook_id=delivery.webhook_id, body=delivery.body, previous_secret=previous
    )
    return _post(url, delivery.body, headers, timeout_seconds())


def deliver(*, delivery_id: int) -> DeliveryOutcome | None:
    """Make one attempt at a due delivery. None when there is nothing to do (delivered, failed, not due
    yet, or another worker is attempting it right now).

    Every claimed attempt is counted, whatever happens: an error of ours while attempting is logged with
    its traceback and recorded as a failed attempt, so WEBHOOK_MAX_ATTEMPTS always applies and a delivery
    cannot stay pending for ever."""
    delivery = _claim(delivery_id)
    if delivery is None:
        return None
    endpoint = delivery.endpoint
    started_at = timezone.now()
    started = time.monotonic()
    try:
        result = _attempt(delivery, endpoint)
    except SoftTimeLimitExceeded:
        # The task's time ran out before the attempt's own deadline (a limit below WEBHOOK_TIMEOUT_SECONDS, say one
        # sent by a publisher configured otherwise): a timeout of the attempt, counted and retried like any other.
        result = HttpResult(None, _time_limit_passed(), "", None)
    except Exception as exc:
        # The message is not stored (it could quote anything, the secret included): it is in the log.
        log.exception("webhook delivery %s: unexpected error while attempting it", delivery.pk)
        result = HttpResult(None, f"internal error ({type(exc).__name__}); see the worker log", "", None)
    duration_ms = int((time.monotonic() - started) * 1000)
    try:
        return _finish(delivery, endpoint, result, started_at, duration_ms)
    except DatabaseError as exc:
        log.exception("webhook delivery %s: could not record attempt; recording it without details", delivery.pk)
        bare = HttpResult(
            result.status, f"the attempt's details could not be stored ({type(exc).__name__})", "", result.retry_after
        )
        return _finish(delivery, endpoint, bare, started_at, duration_ms)


def _time_limit_passed() -> str:
    """An attempt stopped by its task's soft time limit, with the limit the worker applied: the message's, else the
    task's own, else the app's default."""
    limit = None
    if current_task:
        task = current_task
        sent = (task.request.timelimit or (None, None))[1]
        limit = sent or task.soft_time_limit or task.app.conf.task_soft_time_limit
    passed = f"time limit ({limit:g} s) passed" if limit else "time limit passed"
    allowed = f"an attempt may take WEBHOOK_TIMEOUT_SECONDS ({timeout_seconds():g} s)"
    return f"timed out: the delivery task's {passed}; {allowed}"


def _disable_gone(endpoint: WebhookEndpoint) -> bool:
    """The receiver answered 410 Gone: Standard Webhooks asks the sender to disable the endpoint and stop sending.
    Deactivated as an operator does it (endpoint_update: the endpoint row locked, audited, its pending deliveries
    abandoned at their next attempt), by the system. False when the endpoint was deleted meanwhile."""
    locked = WebhookEndpoint.objects.select_for_update(no_key=True).filter(pk=endpoint.pk).first()
    if locked is None:
        return False
    if locked.active:  # not already deactivated (by another delivery's 410, or an operator)
        endpoint_update(actor=SYSTEM_ACTOR, endpoint=locked, active=False, reason=GONE_REASON)
        log.warning("webhook endpoint %s (%s): %s; deactivated", locked.pk, locked.name, GONE_REASON)
    return True


def _finish(
    delivery: WebhookDelivery, endpoint: WebhookEndpoint, result: HttpResult, started_at, duration_ms: int
) -> DeliveryOutcome | None:
    ok = result.status is not None and 200 <= result.status < 300
    gone = result.status == http.HTTPStatus.GONE
    # Receivers answer anything: PostgreSQL text cannot hold NUL, and UTF-8 no lone surrogate. And a reason
    # phrase of any length: every error is cut here, the one place all of them pass.
    error = printable(result.error)[:ERROR_CHARS]
    excerpt = printable(result.excerpt)[:EXCERPT_CHARS]
    with transaction.atomic():
        # On a 410 the endpoint is locked (and deactivated) before the delivery: the order endpoint_delete and
        # delivery_redeliver lock them in, so neither can deadlock with this.
        if gone and not _disable_gone(endpoint):
            return None
        locked = WebhookDelivery.objects.select_for_update(no_key=True).filter(pk=delivery.pk).first()
        if locked is None:  # the endpoint was deleted meanwhile
            return None
        # Numbered on across redeliveries (the log keeps every attempt); `attempts` counts this round's only.
        number = (locked.attempt_log.aggregate(n=Max("number"))["n"] or 0) + 1
        WebhookAttempt.objects.create(
            delivery=locked,
            number=number,
            at=started_at,
            duration_ms=duration_ms,
            status_code=result.status,
            error=error,
            response_excerpt=excerpt,
        )
        locked.attempts += 1
        locked.last_status = result.status
        locked.last_error = error
        retry_in = None
        if ok:
            locked.state = DeliveryState.DELIVERED
            locked.delivered_at = timezone.now()
        elif gone or locked.attempts >= max_attempts() or not endpoint.active:
            locked.state = DeliveryState.FAILED
        else:
            retry_in = retry_delay(locked.attempts, result.retry_after)  # this round's: a redelivery starts afresh
            locked.next_attempt_at = Now() + timedelta(seconds=retry_in)
        locked.save()
    level = logging.INFO if ok else logging.WARNING
    log.log(
        level,
        "webhook delivery %s (%s #%s) to endpoint %s attempt %s: %s%s",
        locked.pk,
        locked.event_type,
        locked.event_seq,
        endpoint.name,
        number,
        result.status if result.status is not None else error,
        f"; next attempt in {retry_in:.1f}s" if retry_in is not None else f"; {locked.state}",
    )
    return DeliveryOutcome(locked.pk, locked.state, number, result.status, error, retry_in)


def due_deliveries(*, grace_seconds: float | None = None, limit: int = 500) -> list[int]:
    """Pending deliveries overdue by more than the grace period: their task was lost or never sent."""
    grace = settings.WEBHOOK_SWEEP_GRACE_SECONDS if grace_seconds is None else grace_seconds
    return list(
        WebhookDelivery.objects.filter(
            state=DeliveryState.PENDING, next_attempt_at__lte=Now() - timedelta(seconds=grace)
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


# --- enqueueing (never raises: the database is the truth, beat and the sweeper catch up) ----


def enqueue(task, *args, countdown: float | None = None) -> bool:
    try:
        task.apply_async(args=args, countdown=countdown, retry=False)
        return True
    except SoftTimeLimitExceeded:  # the calling task's time is up: it ends now, not at its hard limit
        raise
    except Exception as exc:  # broker down: the sweeper / beat will pick it up
        log.warning("could not enqueue %s%s: %s", task.name, args, exc)
        return False


def deliveries_of(endpoint: WebhookEndpoint):
    return endpoint.deliveries.prefetch_related("attempt_log")


# --- redelivery -------------------------------------------------------------------------------


def _enqueue_delivery(delivery_id: int) -> None:
    from governance.tasks import webhooks_deliver  # governance.tasks imports this module

    enqueue(webhooks_deliver, delivery_id)


def delivery_redeliver(*, actor, endpoint: WebhookEndpoint, delivery_id: int) -> WebhookDelivery:
    """Queue a failed delivery again, due now, with a fresh WEBHOOK_MAX_ATTEMPTS: the same body under the same
    webhook-id (receivers de-duplicate on it), signed afresh when attempted. Only a failed one: a pending delivery
    is still being retried, a delivered one was answered 2xx. The task is sent once committed; if the broker
    cannot take it, the sweeper starts the delivery a little later."""
    with transaction.atomic():
        # The endpoint, then the delivery: the order endpoint_delete and _finish lock them in. The endpoint's lock
        # also keeps it from being deactivated or deleted before this commits.
        locked_endpoint = WebhookEndpoint.objects.select_for_update(no_key=True).filter(pk=endpoint.pk).first()
        if locked_endpoint is None:  # deleted since the caller read it
            raise NotFound(f"No webhook {endpoint.pk}.")
        delivery = (
            WebhookDelivery.objects.select_for_update(no_key=True)
            .filter(pk=delivery_id, endpoint=locked_endpoint)
            .first()
        )
        if delivery is None:
            raise NotFound(f"Webhook {locked_endpoint.pk} has no delivery {delivery_id}.")
        if delivery.state == DeliveryState.PENDING:
            raise Conflict(
                f"Delivery {delivery.pk} is still pending: it is retried on its own (attempt {delivery.attempts + 1} "
                f"of {max_attempts()} is due at {format_time(delivery.next_attempt_at)}). Only a failed delivery can "
                "be redelivered.",
                code="delivery_pending",
            )
        if delivery.state == DeliveryState.DELIVERED:
            raise Conflict(
                f"Delivery {delivery.pk} was delivered (HTTP {delivery.last_status}): only a failed delivery can be "
                "redelivered.",
                code="already_delivered",
            )
        if not locked_endpoint.active:
            raise Conflict(
                f"Webhook {locked_endpoint.name} is inactive: nothing is sent to it. Activate it first "
                '(PATCH {"active": true}), then redeliver.',
                code="endpoint_inactive",
            )
        failed = {"attempts": delivery.attempts, "last_status": delivery.last_status}
        delivery.state = DeliveryState.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = Now()  # the database's clock, like every due time (see _claim)
        delivery.save(update_fields=["state", "attempts", "next_attempt_at"])
        # No URL and no secret: the delivery names what is sent again, the endpoint (the subject) where.
        record(
            action="webhook.redelivered",
            subject=locked_endpoint,
            actor=actor,
            before={"state": DeliveryState.FAILED, **failed},
            after={
                "delivery": delivery.pk,
                "webhook_id": delivery.webhook_id,
                "event_seq": delivery.event_seq,
                "event_type": delivery.event_type,
                "state": DeliveryState.PENDING,
            },
        )
        transaction.on_commit(lambda: _enqueue_delivery(delivery.pk))
    delivery.refresh_from_db(fields=["next_attempt_at"])
    log.info(
        "webhook delivery %s (%s #%s) to endpoint %s redelivered",
        delivery.pk,
        delivery.event_type,
        delivery.event_seq,
        locked_endpoint.name,
    )
    return delivery
