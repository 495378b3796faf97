"""The verified-digest rule asks the storage (a HEAD per file) before a promotion request or a review takes its
row locks: while a HEAD is in flight, another transaction can still lock the target (the reconciler does). Under
the locks, each HEAD held the target and request rows for as long as the storage took to answer."""

import threading

import psycopg
import pytest
from django.db import connection

from governance import services
from governance.models import PromotionRequest
from registry.storage import blob_store
from tests.governance.test_read_costs import DIGEST_POLICY, stored_version
from tests.registry.test_s3 import moto_server, s3  # noqa: F401
from tests.ui import builders

pytestmark = pytest.mark.django_db(transaction=True)


def lockable(table: str, pk: int) -> bool:
    """Whether a transaction of another connection can lock the row now, without waiting."""
    with psycopg.connect(**connection.get_connection_params()) as other:
        try:
            other.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR NO KEY UPDATE NOWAIT", [pk])  # noqa: S608
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            other.rollback()
    return True


@pytest.fixture
def during_heads(s3):  # noqa: F811
    """Calls `probe()` as each S3 HEAD is about to be sent; collects what it answers."""
    answers, probes = [], []
    one_at_a_time = threading.Lock()  # the HEADs go out in parallel: two probes of one row would lock each other out

    def record(**_):
        with one_at_a_time:
            answers.extend(probe() for probe in probes)

    client = blob_store().client
    client.meta.events.register("before-parameter-build.s3.HeadObject", record)
    yield probes, answers
    client.meta.events.unregister("before-parameter-build.s3.HeadObject", record)


def test_request_and_approval_ask_the_storage_before_locking_the_target(personas, during_heads):
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's")
    probes, answers = during_heads
    admin, owner = personas["admin"].user, personas["owner"].user
    target = builders.target(admin, "prod", policy={**DIGEST_POLICY, "approvals_required": 1})
    version = stored_version(owner, builders.model(owner), "locks")
    probes.append(lambda: lockable("governance_deploymenttarget", target.pk))

    request = services.promotion_request(actor=owner, version=version, target=target)
    assert answers == [True, True]  # one HEAD per file, each while the target could be locked
    answers.clear()
    probes.append(lambda: lockable("governance_promotionrequest", request.pk))
    services.promotion_approve(actor=builders.reviewer("r1"), request_id=request.pk)
    assert answers == [True] * 4  # two HEADs, each probed for the target and the request
    assert PromotionRequest.objects.get(pk=request.pk).state == "approved"
