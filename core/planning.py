"""Statements whose best plan depends on their parameters, planned for those parameters every time.

The service's PostgreSQL connections prepare a statement once it has run five times (config/settings.py),
and five runs later PostgreSQL may keep one generic plan for it, made without the parameter values. That
is what the hot look-ups by key want, and wrong for a count over a permission-filtered queue: with 10,000
pending requests the review queue's count took 38 ms on its generic plan and 8-10 ms planned for its values
(bench/README.md, twelfth session). Planning costs too (2.5 ms for the queue's page query, with its joins),
so only such statements go in the block.
"""

from contextlib import contextmanager

from django.db import connections, transaction


@contextmanager
def custom_plans(using: str = "default"):
    """The block's statements are planned for their parameters (plan_cache_mode = force_custom_plan), in a
    transaction of its own, since SET LOCAL lasts until the transaction ends. A no-op elsewhere than on
    PostgreSQL."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic(using=using):
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        yield
