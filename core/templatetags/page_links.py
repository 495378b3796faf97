"""`{% page_query param number %}`: the current page's query string with only `param` set to `number`.

Pagination links keep every other query parameter (a card `?revision=`, filters, another list's
page), multi-valued ones included. The result is URL-encoded and, like any simple tag's output,
HTML-escaped by the template.
"""

from django import template
from django.http import QueryDict

register = template.Library()


def _current_query(context) -> QueryDict:
    """A mutable copy of the current request's query (empty outside a request)."""
    request = context.get("request")
    return request.GET.copy() if request is not None else QueryDict(mutable=True)


@register.simple_tag(takes_context=True)
def page_query(context, param: str, number) -> str:
    query = _current_query(context)
    query[param] = str(number)
    return f"?{query.urlencode()}"


@register.simple_tag(takes_context=True)
def keyset_query(context, direction: str = "", pk=None) -> str:
    """The current query string with the keyset cursor (core/keyset.py) set to `direction`=`pk` (after or
    before), the other one and any page number dropped; with no direction, the first page's."""
    query = _current_query(context)
    for param in ("after", "before", "page"):
        query.pop(param, None)
    if direction:
        query[direction] = str(pk)
    return f"?{query.urlencode()}"
