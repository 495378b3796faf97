from datetime import datetime

from django.db.models import QuerySet

from audit.models import AuditChainHead, AuditEvent


def events(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    actor: str | None = None,
    after_seq: int | None = None,
) -> QuerySet[AuditEvent]:
    """Events in chain order, filtered. Callers check the audit permission first."""
    qs = AuditEvent.objects.order_by("seq")
    if since:
        qs = qs.filter(at__gte=since)
    if until:
        qs = qs.filter(at__lt=until)
    if subject_type:
        qs = qs.filter(subject_type=subject_type)
    if subject_id:
        qs = qs.filter(subject_id=subject_id)
    if actor:
        qs = qs.filter(actor_username=actor)
    if after_seq is not None:
        qs = qs.filter(seq__gt=after_seq)
    return qs


def head() -> AuditChainHead:
    return AuditChainHead.objects.filter(pk=1).first() or AuditChainHead()
