"""List the enabled webhooks whose receiver the egress rule refuses; with --disable, disable them (audited)."""

from django.core.management.base import BaseCommand, CommandError

from core.errors import NotFound
from governance import webhooks

ACTOR = "cli:webhook_egress_check"


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
        for finding in findings:
            line = f"{describe(finding)}: {finding.reason}"
            if not finding.refused:
                self.stderr.write(line)
                continue
            if disable:
                line += f"; {self.disable(finding.endpoint)}"
            self.stdout.write(line)
        refused = sum(finding.refused for finding in findings)
        if refused:
            then = "disabled" if disable else "change their url, allow their network, or rerun with --disable"
            raise CommandError(f"{refused} enabled webhook(s) refused by the egress rule: {then}.")
        self.stdout.write("No enabled webhook is refused by the egress rule.")

    @staticmethod
    def disable(endpoint) -> str:
        try:
            webhooks.endpoint_update(actor=ACTOR, endpoint=endpoint, active=False)
        except NotFound:
            return "deleted meanwhile"
        return "disabled"


def describe(finding: webhooks.EgressFinding) -> str:
    endpoint = finding.endpoint
    owner = endpoint.created_by.get_username() if endpoint.created_by else "-"
    events = ",".join(endpoint.event_types)
    return f"webhook {endpoint.pk} {endpoint.name!r} (created by {owner}; events {events}) {finding.url or '-'}"
