"""Keyset pages for web lists that can grow without bound: `?after=<pk>` / `?before=<pk>` instead of `?page=N`.

A numbered page costs an exact count of the whole list and an OFFSET that reads every row before the
page: with 10,000 pending requests the review queue's last page took twice its first (bench/README.md).
A keyset page asks for the rows past the boundary row's position in the list's order, so every page costs
what the first does; the count is capped, so it reads at most COUNT_CAP + 1 rows. A row that leaves the
list between two page loads (a request approved meanwhile) shifts nothing: the boundary is a position,
not a row number, and it holds even when its own row has left.

The cursor is the boundary row's primary key. Its position is read from `positions`, the rows the user may
see whatever their state (not from the list itself, which the row may have left): a cursor naming a row the
user may not see would otherwise place that row among theirs. A cursor that names no such row is the first
page, as a page number out of range is.
"""

from dataclasses import dataclass

from django.db.models import Q, QuerySet

PAGE_SIZE = 25
COUNT_CAP = 1000


@dataclass(frozen=True)
class KeysetPage:
    object_list: list
    previous: int | None  # the `before` cursor of the page before this one, None on the first page
    next: int | None  # the `after` cursor of the page after this one, None on the last page
    count: int  # rows in the whole list, at most `count_cap`
    count_cap: int

    @property
    def count_capped(self) -> bool:
        return self.count > self.count_cap

    @property
    def has_other_pages(self) -> bool:
        return self.previous is not None or self.next is not None


def _cursor(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isascii() and raw.isdigit() and len(raw) <= 18 else None


def _field(term: str) -> str:
    return term.removeprefix("-")


def _past(order: tuple[str, ...], values: dict, forward: bool, inclusive: bool = False) -> Q:
    """Rows after (forward) or before the position `values` in the lexicographic order of `order` (a field
    named "-field" descending)."""
    condition = Q(pk=values["pk"]) if inclusive else Q(pk__in=[])
    for term in reversed(order):
        field = _field(term)
        op = "gt" if forward != term.startswith("-") else "lt"
        condition = Q(**{f"{field}__{op}": values[field]}) | (Q(**{field: values[field]}) & condition)
    return condition


def keyset_page(
    queryset: QuerySet,
    params,
    *,
    positions: QuerySet,
    order: tuple[str, ...] = ("created_at", "pk"),
    size: int = PAGE_SIZE,
    count_cap: int = COUNT_CAP,
) -> KeysetPage:
    """The page of `queryset` (in `order`, "-field" for descending; the fields together unique) that `params` (a
    request's GET) asks for with `after` or `before`, the boundary read from `positions`; the first page when it
    asks for neither or names no row of `positions`."""
    after, before = _cursor(params.get("after")), _cursor(params.get("before"))
    cursor = after if after is not None else before
    fields = dict.fromkeys(("pk", *map(_field, order)))
    boundary = positions.filter(pk=cursor).values(*fields).first() if cursor else None
    queryset = queryset.order_by(*order)
    rows, earlier, more = [], False, False
    if boundary is not None and after is not None:
        rows = list(queryset.filter(_past(order, boundary, True))[: size + 1])
        more = len(rows) > size
        earlier = queryset.filter(_past(order, boundary, False, inclusive=True)).exists()
    elif boundary is not None:
        reverse = [_field(term) if term.startswith("-") else f"-{term}" for term in order]
        rows = list(queryset.filter(_past(order, boundary, False)).order_by(*reverse)[: size + 1])
        earlier = len(rows) > size
        rows = rows[:size][::-1]
        more = queryset.filter(_past(order, boundary, True, inclusive=True)).exists()
    if not rows:  # no cursor, or nothing left past it: the first page
        rows = list(queryset[: size + 1])
        more, earlier = len(rows) > size, False
    rows = rows[:size]
    return KeysetPage(
        object_list=rows,
        previous=rows[0].pk if earlier else None,
        next=rows[-1].pk if more else None,
        count=queryset.order_by()[: count_cap + 1].count(),
        count_cap=count_cap,
    )
