"""manage.py webhook_egress_check: enabled endpoints saved before the egress rule, or under a WEBHOOK_ALLOWED_NETWORKS
since narrowed, or whose name now resolves inside, fail at every delivery; the command finds them with the rule the
deliveries apply and, with --disable, disables them through the API's service. Real rows, real name resolution
(`localhost` resolves to loopback, which production's settings refuse), and the command as manage.py runs it."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from governance import webhooks
from governance.management.commands.webhook_egress_check import Command
from governance.webhook_models import WebhookEndpoint

pytestmark = pytest.mark.django_db

TOKEN = "Zr8Qw2Lp5Xv9Tn4K"  # noqa: S105 - the receiver's credential in a path and a query: never printed
HINT = "allow it with WEBHOOK_ALLOWED_NETWORKS"
LONG_LABEL = "a" * 64  # a label longer than DNS allows: refused by the resolver's encoding, without a query


@pytest.fixture
def stored(personas, settings):
    """Endpoints saved while loopback and 10/8 were allowed (a debug deployment, an allow-list since narrowed);
    then production's settings: debug off, only 10.9/16 allowed."""
    admin = personas["admin"].user
    settings.DEBUG = False
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8", "10.0.0.0/8"]
    urls = {
        "by-name": f"http://localhost:8123/hooks/{TOKEN}?token={TOKEN}",
        "literal": f"http://10.1.2.3/ci/{TOKEN}",
        "allowed": "http://10.9.1.1/hook",
        "public": "https://93.184.215.14/hook",
        "inactive": "http://127.0.0.1:8123/hook",
        "unresolvable": f"http://{LONG_LABEL}.example/hook",
    }
    endpoints = {
        name: webhooks.endpoint_create(
            actor=admin, name=name, url=url, event_types=["release.*"], active=name != "inactive"
        )[0]
        for name, url in urls.items()
    }
    settings.WEBHOOK_ALLOWED_NETWORKS = ["10.9.0.0/16"]
    return endpoints


def run(*args) -> tuple[str, str, CommandError | None]:
    out, err = StringIO(), StringIO()
    try:
        call_command("webhook_egress_check", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


def active(endpoints) -> dict[str, bool]:
    return {name: WebhookEndpoint.objects.get(pk=e.pk).active for name, e in endpoints.items()}


def test_lists_each_enabled_endpoint_the_rule_refuses_redacted_and_exits_1(stored):
    by_name, literal = stored["by-name"], stored["literal"]
    events_before = AuditEvent.objects.count()

    out, err, error = run()

    described = "(created by admin; events release.*)"
    assert out.splitlines() == [
        f"webhook {by_name.pk} 'by-name' {described} http://localhost:8123/hooks/***?token=***: refused: localhost "
        f"resolves only to addresses webhooks may not reach (127.0.0.1 is a loopback address); {HINT}",
        f"webhook {literal.pk} 'literal' {described} http://10.1.2.3/ci/***: refused: 10.1.2.3 is a private address; "
        + HINT,
    ]
    assert error is not None and error.returncode == 1
    assert str(error) == (
        "2 enabled webhook(s) refused by the egress rule: "
        "change their url, allow their network, or rerun with --disable."
    )
    # A name that cannot be resolved is not refused by the rule: reported apart, and never disabled.
    [unchecked] = err.splitlines()
    assert unchecked.startswith(f"webhook {stored['unresolvable'].pk} 'unresolvable' ")
    assert ": not checked: cannot resolve its host (encoding with 'idna' codec failed" in unchecked
    assert TOKEN not in out + err + str(error)
    # Only listed: nothing changed, nothing audited.
    assert all(active(stored)[name] for name in stored if name != "inactive")
    assert AuditEvent.objects.count() == events_before


def test_disable_disables_them_through_the_service_audited_like_the_apis_change(stored):
    out, _, error = run("--disable")

    assert error is not None and error.returncode == 1
    assert str(error) == "2 enabled webhook(s) refused by the egress rule: disabled."
    assert [line.rsplit("; ", 1)[1] for line in out.splitlines()] == ["disabled", "disabled"]
    assert active(stored) == {
        "by-name": False,
        "literal": False,
        "allowed": True,
        "public": True,
        "inactive": False,
        "unresolvable": True,
    }
    updates = AuditEvent.objects.filter(action="webhook.updated").order_by("seq")
    assert [e.subject_id for e in updates] == [str(stored["by-name"].pk), str(stored["literal"].pk)]
    for event in updates:
        before, after = json.loads(event.before), json.loads(event.after)
        assert event.actor_username == "cli:webhook_egress_check"
        assert (before["active"], after["active"]) == (True, False)
        assert {k: v for k, v in before.items() if k != "active"} == {k: v for k, v in after.items() if k != "active"}
        assert TOKEN not in event.before + event.after and "***" in after["url"]

    # Once disabled they are no longer listed; the check passes.
    out, _, error = run()
    assert error is None
    assert out.splitlines() == ["No enabled webhook is refused by the egress rule."]


def test_debug_allows_loopback_so_nothing_is_listed(stored, settings):
    settings.DEBUG = True  # the rule's own settings: debug's loopback is added to what is allowed
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]
    out, _, error = run()
    assert error is None and out.splitlines() == ["No enabled webhook is refused by the egress rule."]


def test_disable_leaves_an_endpoint_changed_since_it_was_checked(stored, personas):
    """The url fixed through the API between the check and the disable (while the command resolved names): the
    endpoint as checked is gone, so it stays enabled, said so, and only the other one is disabled and audited."""
    findings = [f for f in webhooks.egress_findings() if f.refused]
    assert [f.endpoint.name for f in findings] == ["by-name", "literal"]
    webhooks.endpoint_update(actor=personas["admin"].user, endpoint=stored["literal"], url="http://10.9.1.2/hook")
    assert [Command.disable(f.endpoint) for f in findings] == [
        "disabled",
        "changed meanwhile, not disabled: run the check again",
    ]
    assert active(stored)["literal"] is True and active(stored)["by-name"] is False
    updates = AuditEvent.objects.filter(action="webhook.updated", actor_username="cli:webhook_egress_check")
    assert [e.subject_id for e in updates] == [str(stored["by-name"].pk)]
