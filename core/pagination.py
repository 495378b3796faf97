from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination


class Cursor(CursorPagination):
    """Opaque-cursor pagination: stable under concurrent inserts, constant cost per page."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = "-id"

    def get_page_size(self, request):
        """page_size from the query, 1..max_page_size; anything else is a 400 (not silently the default)."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = None
        if size is None or not 1 <= size <= self.max_page_size:
            message = f"page_size must be an integer from 1 to {self.max_page_size}."
            raise ValidationError({self.page_size_query_param: [message]})
        return size

    def paginate_queryset(self, queryset, request, view=None):
        self._position_field = queryset.model._meta.get_field(self.ordering.lstrip("-"))
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        """DRF's, and the position must be a value of the ordering column: a forged cursor (p=abc on an integer
        id) is the invalid-cursor 404, not a 500 from the filter."""
        decoded = super().decode_cursor(request)
        if decoded is not None and decoded.position is not None:
            try:
                self._position_field.to_python(decoded.position)
            except DjangoValidationError:
                raise NotFound(self.invalid_cursor_message) from None
        return decoded


def cursor(ordering: str) -> type[Cursor]:
    return type(f"Cursor_{ordering.strip('-')}", (Cursor,), {"ordering": ordering})


_PAGES: dict[type, serializers.Serializer] = {}


def paginated(serializer_class: type[serializers.Serializer]) -> serializers.Serializer:
    """The schema of one page of a cursor-paginated list: {next, previous, results: [...]}."""
    if serializer_class not in _PAGES:
        _PAGES[serializer_class] = inline_serializer(
            name=f"Paginated{serializer_class.__name__}List",
            fields={
                "next": serializers.URLField(allow_null=True, help_text="the next page, or null on the last"),
                "previous": serializers.URLField(allow_null=True, help_text="the previous page, or null"),
                "results": serializer_class(many=True),
            },
        )
    return _PAGES[serializer_class]
