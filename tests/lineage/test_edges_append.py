"""lineage.services.edges_append (governance's model version -> release edges) returns how many edges it created,
not how many it was given: an edge already recorded, given twice, or committed meanwhile by another transaction is
not counted, and keeps its first recorded_at."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from lineage import services
from lineage.choices import EdgeKind, NodeType
from lineage.models import Edge
from tests.lineage.test_ingest_concurrency import ON_POSTGRESQL, wait_for


def deployed(version: int, release: int):
    return ((NodeType.MODEL, version), (NodeType.RELEASE, release), EdgeKind.DEPLOYED)


def append(edges, recorded_at=None) -> int:
    with transaction.atomic():
        return services.edges_append(edges=edges, recorded_at=recorded_at)


@pytest.mark.django_db
def test_it_counts_the_edges_it_created():
    first = timezone.now() - timedelta(days=1)
    assert append([deployed(1, 1), deployed(1, 2)], first) == 2
    # one new, one recorded, one given twice: one created
    assert append([deployed(1, 2), deployed(2, 3), deployed(2, 3)]) == 1
    assert append([deployed(1, 1), deployed(1, 2), deployed(2, 3)]) == 0
    assert append([]) == 0
    assert Edge.objects.count() == 3
    # the same source and target with another kind is another edge
    assert append([((NodeType.MODEL, 1), (NodeType.RELEASE, 1), EdgeKind.INPUT)]) == 1
    assert Edge.objects.get(src_id=1, dst_id=2, kind=EdgeKind.DEPLOYED).recorded_at == first  # not rewritten


@ON_POSTGRESQL
@pytest.mark.django_db(transaction=True)
def test_an_edge_another_transaction_commits_meanwhile_is_not_counted():
    """The other transaction inserts the edge first; this one waits for it on the unique key, and once it commits
    the edge is that transaction's: this call created only the other edge."""
    inserted, commit, result = threading.Event(), threading.Event(), {}

    def other():
        try:
            with transaction.atomic():
                services.edges_append(edges=[deployed(7, 7)])
                inserted.set()
                commit.wait(30)
        finally:
            connection.close()

    def this():
        try:
            result["created"] = append([deployed(7, 7), deployed(7, 8)])
        finally:
            connection.close()

    threads = [threading.Thread(target=other)]
    threads[0].start()
    assert inserted.wait(20)
    threads.append(threading.Thread(target=this))
    threads[1].start()
    try:
        wait_for(1)  # this call waits for the other transaction's uncommitted edge
    finally:
        commit.set()
        for thread in threads:
            thread.join(30)
    assert result == {"created": 1}
    assert Edge.objects.filter(src_id=7).count() == 2
