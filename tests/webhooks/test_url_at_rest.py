"""Receiver URLs carry credentials (?token=..., Slack-style path tokens): encrypted at rest, shown in full to
those who manage the endpoint, redacted in audit events and logs; and the migration that encrypts existing rows."""

import json
import logging

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from audit.models import AuditEvent
from governance import webhooks
from governance.webhook_models import WebhookEndpoint
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhooks/"
TOKEN = "qTk7pL2vX9rW4mZ8"  # noqa: S105 - the receiver's credential these tests must never find in clear
SLACK_TOKEN = "aB3dE5fG7hI9jK1lM3nO5pQ7"  # noqa: S105


def audit_text() -> str:
    return " ".join(f"{e.before} {e.after} {e.reason} {e.subject_repr}" for e in AuditEvent.objects.all())


def stored_row(pk: int) -> str:
    """The endpoint's row exactly as the database holds it, every column."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {WebhookEndpoint._meta.db_table} WHERE id = %s", [pk])  # noqa: S608
        return " ".join(str(value) for value in cursor.fetchone())


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (f"https://hooks.example.com/registry?token={TOKEN}&team=ml", "https://hooks.example.com/registry?token=***&team=***"),
        (f"https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SLACK_TOKEN}", "https://hooks.slack.com/services/***"),
        ("https://hooks.slack.com/services/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", "https://hooks.slack.com/services/***"),
        ("https://hooks.zapier.com/hooks/catch/1234567/3bz9k1x/", "https://hooks.zapier.com/hooks/***"),
        ("https://discord.com/api/webhooks/123456789012345678/Zx9-aB3_dE5fG7hI9jK1", "https://discord.com/api/***"),
        (f"http://127.0.0.1:8443/hook?{TOKEN}#frag", "http://127.0.0.1:8443/hook?***"),
        ("http://[::1]:9000/registry-hook", "http://[::1]:9000/registry-hook"),
        ("https://ci.example.com", "https://ci.example.com"),
        ("https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage", "https://api.telegram.org/***/***"),
        ("https://in.example.com/QmZkRtYvWxLpNsHdJcKbFgAe", "https://in.example.com/***"),
        ("https://in.example.com/3f9a1c0e7b2d4f6a8c1e3b5d7f9a2c4e?team=ml", "https://in.example.com/***?team=***"),
        ("https://in.example.com/a8f3k2m9q1x7", "https://in.example.com/***"),
        ("https://in.example.com/v1/events", "https://in.example.com/v1/***"),
    ],
    ids=[
        "query token", "slack path", "slack letters-only token", "zapier short token", "discord path",
        "bare query and fragment", "first segment kept", "no path", "telegram token first", "mixed-case token first",
        "hex token first", "digit-heavy token first", "version segment kept",
    ],
)  # fmt: skip
def test_redact_url(url, redacted):
    assert webhooks.redact_url(url) == redacted


def test_the_url_is_encrypted_at_rest_shown_to_managers_and_redacted_in_audit_and_logs(world, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    admin = world["admin"].client()
    url = receiver.url(f"/services/T0123ABCD/{SLACK_TOKEN}") + f"?token={TOKEN}"
    r = admin.post(URL, {"name": "slack", "url": url, "event_types": ["version.registered"]}, format="json")
    assert r.status_code == 201, r.content
    hook = r.json()["id"]
    assert r.json()["url"] == url

    second = admin.post(URL, {"name": "ci", "url": "https://ci.example.com/x", "event_types": ["*"]}, format="json")
    listed = admin.get(URL, {"page_size": 1})  # newest first, paginated as before
    assert [e["url"] for e in listed.json()["results"]] == [second.json()["url"]]
    assert [e["url"] for e in admin.get(listed.json()["next"]).json()["results"]] == [url]
    assert admin.get(f"{URL}{hook}").json()["url"] == url

    row = stored_row(hook)
    assert TOKEN not in row and SLACK_TOKEN not in row and "/services/" not in row
    assert WebhookEndpoint.objects.get(pk=hook).url == url

    register(world["owner"].user, world["model"], "v1")
    for delivery_id in webhooks.dispatch().delivery_ids:
        webhooks.deliver(delivery_id=delivery_id)
    [got] = receiver.to(f"/services/T0123ABCD/{SLACK_TOKEN}?token={TOKEN}")  # delivered to the URL in full

    [created] = AuditEvent.objects.filter(action="webhook.created", subject_id=str(hook))
    redacted = receiver.url("/services/***") + "?token=***"
    assert f'"url":"{redacted}"' in created.after
    assert redacted in caplog.text  # the creation's log line names where it points, redacted
    for secret in (TOKEN, SLACK_TOKEN):
        assert secret not in audit_text()
        assert secret not in caplog.text


def test_changing_only_the_token_is_audited_without_it(world):
    admin = world["admin"].client()
    old_url = f"https://hooks.example.com/registry?token={TOKEN}"
    new_token = "Zr8sT1uV6wX3yA5b"
    hook = admin.post(URL, {"name": "ci", "url": old_url, "event_types": ["*"]}, format="json").json()["id"]

    r = admin.patch(f"{URL}{hook}", {"url": f"https://hooks.example.com/registry?token={new_token}"}, format="json")
    assert r.status_code == 200 and r.json()["url"].endswith(new_token)
    [updated] = AuditEvent.objects.filter(action="webhook.updated")
    assert '"url":"https://hooks.example.com/registry?token=***"' in updated.after
    # The redacted URLs are equal: the keyed fingerprint tells that the URL changed.
    before, after = json.loads(updated.before), json.loads(updated.after)
    assert before["url"] == after["url"]
    assert before["url_fingerprint"] != after["url_fingerprint"]
    assert len(after["url_fingerprint"]) == 16
    assert admin.patch(f"{URL}{hook}", {"description": "same url"}, format="json").status_code == 200
    assert AuditEvent.objects.filter(action="webhook.updated").count() == 2

    assert admin.delete(f"{URL}{hook}").status_code == 204
    [deleted] = AuditEvent.objects.filter(action="webhook.deleted")
    assert '"url":"https://hooks.example.com/registry?token=***"' in deleted.before
    assert TOKEN not in audit_text() and new_token not in audit_text()


def test_credentials_in_userinfo_are_still_refused(world):
    r = (
        world["admin"]
        .client()
        .post(
            URL, {"name": "ci", "url": f"https://bot:{TOKEN}@hooks.example.com/x", "event_types": ["*"]}, format="json"
        )
    )
    assert r.status_code == 400 and "credentials" in r.json()["error"]["message"]
    assert TOKEN not in audit_text() and not WebhookEndpoint.objects.exists()


BEFORE = [("governance", "0009_host_revision_fixed_at_request")]
AFTER = [("governance", "0010_webhook_url_at_rest_secret_rotation")]


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_existing_urls_and_reverses():
    url = f"https://hooks.example.com/registry?token={TOKEN}"
    secret = webhooks.generate_secret()
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(BEFORE)
        old = executor.loader.project_state(BEFORE).apps.get_model("governance", "WebhookEndpoint")
        pk = old.objects.create(
            name="old", url=url, secret_encrypted=webhooks.encrypt_secret(secret), event_types=["*"]
        ).pk

        executor = MigrationExecutor(connection)
        executor.migrate(AFTER)
        assert TOKEN not in stored_row(pk)
        endpoint = WebhookEndpoint.objects.get(pk=pk)
        assert endpoint.url == url and webhooks.decrypt_secret(endpoint.secret_encrypted) == secret

        executor = MigrationExecutor(connection)
        executor.migrate(BEFORE)
        assert old.objects.get(pk=pk).url == url  # back in the plain column
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
