"""List the enabled webhooks whose receiver the egress rule refuses; with --disable, disable them (audited)."""

from django.core.management.base import BaseCommand, CommandError

from core.errors import NotFound, PreconditionFailed
from governance import webhooks

ACTOR = "cli:webhook_egress_check"
DISABLED = "disabled"


class Command(BaseCommand):
    help = (
        "List every enabled webhook whose receiver deliveries may not reach (governance.webhook_egress: public "
        "addresses and WEBHOOK_ALLOWED_NETWORKS only), with its redacted url and why. Exits 1 when there is one. "
        "--disable disables them, audited as webhook.updated like the API's change."
    )

    def add_arguments(self, parser):
        parser.add_argument("--disable", action="store_true", help="disable each webhook listed")

    def handle(self, *args, disable, **options):
        findings = webhooks.egress_findings()
        outcomes = []
        for finding in findings:
            line = f"{describe(finding)}: {finding.reason}"
            if not finding.refused:
                self.stderr.write(line)
                continue
            if disable:
                outcomes.append(self.disable(finding.endpoint))
                line += f"; {outcomes[-1]}"
            self.stdout.write(line)
        refused = sum(finding.refused for finding in findings)
        if refused:
            then = "change their url, allow their network, or rerun with --disable"
            if disable:
                left = refused - outcomes.count(DISABLED)
                then = DISABLED + (f", {left} changed or deleted meanwhile (not disabled)" if left else "")
            raise CommandError(f"{refused} enabled webhook(s) refused by the egress rule: {then}.")
        self.stdout.write("No enabled webhook is refused by the egress rule.")

    @staticmethod
    def disable(endpoint) -> str:
        """Disable the endpoint as it was checked: one changed since (a url fixed through the API while its name
        resolved) is left alone, like an API client's PATCH with If-Match."""
        try:
            webhooks.endpoint_update(
                actor=ACTOR, endpoint=endpoint, if_match=webhooks.endpoint_etag(endpoint), active=False
            )
        except NotFound:
            return "deleted meanwhile"
        except PreconditionFailed:
            return "changed meanwhile, not disabled: run the check again"
        return DISABLED


def describe(finding: webhooks.EgressFinding) -> str:
    endpoint = finding.endpoint
    owner = endpoint.created_by.get_username() if endpoint.created_by else "-"
    events = ",".join(endpoint.event_types)
    return f"webhook {endpoint.pk} {endpoint.name!r} (created by {owner}; events {events}) {finding.url or '-'}"
