"""Transaction-scoped locks on names, for rules no row can hold: a name may be claimed before any row for it exists
(a run's UUID before its first event), or the thing named lives outside the database (a stored blob)."""

from collections.abc import Iterable

from django.db import connection


def lock_names(scope: str, names: Iterable[str], *, shared: bool = False) -> None:
    """Hold a lock on (scope, name) for each name until the transaction ends. Shared locks of one name coexist; an
    exclusive one waits for them to end and they for it. On PostgreSQL these are advisory locks in the two-key space
    (hashtext(scope), hashtext(name)), apart from one-key advisory locks, taken in sorted order; a clash of hashes
    only makes one wait for another. SQLite needs none: a write transaction takes the database's write lock when it
    begins (transaction_mode IMMEDIATE)."""
    if not connection.in_atomic_block:
        raise RuntimeError("lock_names() must be called inside the transaction the locks guard")
    names = sorted(set(names))
    if connection.vendor != "postgresql" or not names:
        return
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cursor:
        names_in_order = "unnest(%s::text[]) WITH ORDINALITY AS t(name, i) ORDER BY i"
        cursor.execute(f"SELECT {function}(hashtext(%s), hashtext(name)) FROM {names_in_order}", [scope, names])  # noqa: S608
