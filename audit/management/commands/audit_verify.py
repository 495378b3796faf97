from django.core.management.base import BaseCommand, CommandError

from audit import chain
from audit.models import AuditEvent
from audit.selectors import head


class Command(BaseCommand):
    help = (
        "Recompute the stored audit hash chain and check each stored export line against its event; "
        "exit non-zero naming the first bad sequence number."
    )

    def handle(self, *args, **options):
        def check_line(event: AuditEvent, exported: dict) -> None:
            if event.line is not None and event.line.encode() != chain.canonical_json(exported):
                raise CommandError(
                    f"audit chain broken at sequence {event.seq}: its stored export line differs from its columns "
                    "(one of them was changed)"
                )

        def events():
            # The export serves each event's stored line, so it must say what the hashed columns say. A line is
            # compared once verify_events() has accepted its event's columns (when it asks for the next event):
            # a changed column is reported as the chain's break, a changed line as its own.
            previous = None
            for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=5000):
                if previous is not None:
                    check_line(*previous)
                previous = (event, event.as_export_dict())
                yield previous[1]
            if previous is not None:
                check_line(*previous)

        try:
            count, last_hash = chain.verify_events(events(), from_genesis=True)
        except chain.ChainError as exc:
            raise CommandError(f"audit chain broken at {exc}") from None
        tip = head()
        if (tip.seq, tip.hash) != (count, last_hash):  # also when every event is gone
            raise CommandError(f"audit chain head says #{tip.seq} {tip.hash} but the log ends at #{count} {last_hash}")
        self.stdout.write(f"OK: {count} audit events verified; head {last_hash}")
