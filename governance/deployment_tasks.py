"""Celery tasks of the deployment engine: thin, idempotent, fetching by id and calling governance.deployment."""

import random

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from config.celery import MAX_AGE_HEADER
from governance import deployment
from governance.hosts.base import HostError


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter: 1 s, 2 s, 4 s, … capped at 60 s."""
    return random.uniform(0, min(60.0, 2.0**retries))  # noqa: S311 - jitter, not security


POLLS = 120  # "still deploying" re-checks before leaving the target to the periodic reconcile


# Stopped when its claim on the target stops being renewed (deployment._LeaseKeeper), and killed before that claim
# can run out (it was renewed a third of a lease before at the latest): no second worker deploys beside a hung one.
@shared_task(
    bind=True,
    acks_late=True,
    max_retries=None,
    soft_time_limit=settings.RECONCILE_MAX_HOLD_SECONDS,
    time_limit=settings.RECONCILE_MAX_HOLD_SECONDS + settings.RECONCILE_LEASE_SECONDS / 3,
)
def reconcile_target(
    self, target_id: int, failures: int = 0, failing_release: int | None = None, periodic: bool = False
) -> str:
    """Converge one target. Host errors retry with backoff (bounded), then the release fails with the reason.

    A run that leaves the release deploying (the host still at it, a canary step held), finds another worker on the
    target or lost its claim looks again every second (up to POLLS times) when an approval, a rollback or a
    fallback sent it (deployment._enqueue). A periodic run (reconcile_all's, `periodic`) ends there: the next
    periodic run is its poll. When every run polled, the periodic runs added up to several chains polling (and
    deploying to) one target at once.

    Retries never expire: a retry keeps its message's options, and an `expires` given to the first run dropped
    every retry due after it, so the failures never added up to a failed release (a max age, reconcile_all's, is
    never carried into a retry: config/celery.py).

    Past its soft time limit (RECONCILE_MAX_HOLD_SECONDS) the release fails at once: a host call that hung that long
    would hold a worker as long again on every retry. The claim is released on the way out (deployment.reconcile),
    and a fallback to the last good release is reconciled like any other desired state.

    The failures counted are those of one release (`failing_release`), and only in a row: a poll the host answered
    ("deploying") starts the count again, so passing errors spread over a long deploy do not add up to a failure.
    A rollback made during a chain of retries starts its destination's count at zero, not at what the release it
    replaced had used up."""
    try:
        outcome = deployment.reconcile(target_id, owner=self.request.id or "inline")
    except HostError as exc:
        timed_out = isinstance(exc.__cause__, SoftTimeLimitExceeded)
        if exc.release_id != failing_release:
            failures = 0
        if exc.retryable and not timed_out and failures < settings.RECONCILE_MAX_RETRIES:
            raise self.retry(
                args=(target_id, failures + 1, exc.release_id), countdown=backoff(failures), exc=exc, expires=None
            ) from None
        reason = str(exc)
        if timed_out:
            reason = (
                f"the reconcile was stopped after {settings.RECONCILE_MAX_HOLD_SECONDS} s "
                "(RECONCILE_MAX_HOLD_SECONDS): a host call or the copy of the release's files did not end"
            )
        deployment.release_fail(target_id=target_id, release_id=exc.release_id, reason=reason)
        return "failed"
    # A run that lost its claim mid-way recorded nothing: look again, as for a target another worker holds. A busy
    # target or a lost claim says nothing of the host: the count goes on; an answer from it ends the run of errors.
    if not periodic and outcome in ("deploying", "busy", deployment.LEASE_LOST) and self.request.retries < POLLS:
        failures = 0 if outcome == "deploying" else failures
        raise self.retry(args=(target_id, failures, failing_release), countdown=1, expires=None)
    return outcome


@shared_task
def reconcile_all() -> int:
    """Periodic: look at every target with a desired release (unfinished work, drift)."""
    ids = deployment.targets_to_reconcile()
    for target_id in ids:  # the next periodic run covers a task that waited longer than the interval
        reconcile_target.apply_async(
            (target_id,), {"periodic": True}, headers={MAX_AGE_HEADER: settings.RECONCILE_INTERVAL_SECONDS}
        )
    return len(ids)


@shared_task
def expire_promotions() -> int:
    from governance.services import promotions_expire

    return promotions_expire()
