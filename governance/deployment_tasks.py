"""Celery tasks of the deployment engine: thin, idempotent, fetching by id and calling governance.deployment."""

import random

from celery import shared_task
from django.conf import settings

from governance import deployment
from governance.hosts.base import HostError


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter: 1 s, 2 s, 4 s, … capped at 60 s."""
    return random.uniform(0, min(60.0, 2.0**retries))  # noqa: S311 - jitter, not security


POLLS = 120  # "still deploying" re-checks before leaving the target to the periodic reconcile


@shared_task(bind=True, acks_late=True, max_retries=None)
def reconcile_target(self, target_id: int, failures: int = 0) -> str:
    """Converge one target. Host errors retry with backoff (bounded), then the release fails with the reason.

    Retries never expire: a retry keeps its message's options, and a periodic run's `expires` (reconcile_all)
    dropped every retry due after it, so the failures never added up to a failed release."""
    try:
        outcome = deployment.reconcile(target_id, owner=self.request.id or "inline")
    except HostError as exc:
        if exc.retryable and failures < settings.RECONCILE_MAX_RETRIES:
            raise self.retry(
                args=(target_id, failures + 1), countdown=backoff(failures), exc=exc, expires=None
            ) from None
        deployment.release_fail(target_id=target_id, release_id=exc.release_id, reason=str(exc))
        return "failed"
    if outcome in ("deploying", "busy") and self.request.retries < POLLS:
        raise self.retry(args=(target_id, failures), countdown=1, expires=None)
    return outcome


@shared_task
def reconcile_all() -> int:
    """Periodic: look at every target with a desired release (unfinished work, drift)."""
    ids = deployment.targets_to_reconcile()
    for target_id in ids:  # the next periodic run covers a task that waited longer than the interval
        reconcile_target.apply_async((target_id,), expires=settings.RECONCILE_INTERVAL_SECONDS)
    return len(ids)


@shared_task
def expire_promotions() -> int:
    from governance.services import promotions_expire

    return promotions_expire()
