"""Celery tasks for governance. Thin: each fetches by id and calls a service."""

from celery import shared_task

from governance import webhooks

# --- Outgoing webhooks (services in governance/webhooks.py; docs/webhooks.md) --------------------
# Beat runs webhooks_dispatch every few seconds and webhooks_sweep every half minute
# (CELERY_BEAT_SCHEDULE in config/settings.py). The database is the truth: a lost or duplicated task
# changes nothing, because deliveries are claimed by a conditional UPDATE before each attempt.

# Retries longer than this are left to the sweeper rather than held by a worker as ETA tasks.
WEBHOOK_MAX_COUNTDOWN_SECONDS = 300
WEBHOOK_MAX_BATCHES_PER_RUN = 50


@shared_task(name="governance.tasks.webhooks_dispatch", ignore_result=True)
def webhooks_dispatch() -> int:
    """Turn new audit events into deliveries and enqueue them. Returns how many were created."""
    created = 0
    for _ in range(WEBHOOK_MAX_BATCHES_PER_RUN):
        result = webhooks.dispatch()
        for delivery_id in result.delivery_ids:
            webhooks.enqueue(webhooks_deliver, delivery_id)
        created += len(result.delivery_ids)
        if not result.more:
            break
    return created


# An attempt ends at WEBHOOK_TIMEOUT_SECONDS (name resolution included). The task is stopped, and at worst killed, well
# inside its claim on the delivery (webhooks.lease_seconds), so no second attempt starts beside a hung one; at the
# soft limit the attempt is recorded as failed and the next one scheduled.
@shared_task(
    name="governance.tasks.webhooks_deliver",
    ignore_result=True,
    soft_time_limit=webhooks.timeout_seconds() + webhooks.LEASE_MARGIN_SECONDS / 3,
    time_limit=webhooks.timeout_seconds() + webhooks.LEASE_MARGIN_SECONDS * 2 / 3,
)
def webhooks_deliver(delivery_id: int) -> str | None:
    """One attempt at one delivery; schedules the next attempt when the receiver failed."""
    outcome = webhooks.deliver(delivery_id=delivery_id)
    if outcome is None:
        return None
    if outcome.retry_in is not None and outcome.retry_in <= WEBHOOK_MAX_COUNTDOWN_SECONDS:
        webhooks.enqueue(webhooks_deliver, delivery_id, countdown=outcome.retry_in)
    return outcome.state


@shared_task(name="governance.tasks.webhooks_sweep", ignore_result=True)
def webhooks_sweep() -> int:
    """Re-enqueue pending deliveries whose task was lost (broker down when it was sent) or is due."""
    due = webhooks.due_deliveries()
    for delivery_id in due:
        webhooks.enqueue(webhooks_deliver, delivery_id)
    return len(due)


# --- end of outgoing webhooks -----------------------------------------------------------------------
