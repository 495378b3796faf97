from rest_framework.pagination import CursorPagination


class Cursor(CursorPagination):
    """Opaque-cursor pagination: stable under concurrent inserts, constant cost per page."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = "-id"


def cursor(ordering: str) -> type[Cursor]:
    return type(f"Cursor_{ordering.strip('-')}", (Cursor,), {"ordering": ordering})
