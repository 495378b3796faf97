from django.core.management.base import BaseCommand, CommandError

from audit import chain
from audit.models import AuditEvent
from audit.selectors import head


class Command(BaseCommand):
    help = "Recompute the stored audit hash chain; exit non-zero naming the first bad sequence number."

    def handle(self, *args, **options):
        events = (e.as_export_dict() for e in AuditEvent.objects.order_by("seq").iterator(chunk_size=5000))
        try:
            count, last_hash = chain.verify_events(events, from_genesis=True)
        except chain.ChainError as exc:
            raise CommandError(f"audit chain broken at {exc}") from None
        tip = head()
        if (tip.seq, tip.hash) != (count, last_hash):  # also when every event is gone
            raise CommandError(f"audit chain head says #{tip.seq} {tip.hash} but the log ends at #{count} {last_hash}")
        self.stdout.write(f"OK: {count} audit events verified; head {last_hash}")
