"""`{% page_query param number %}`: the current page's query string with only `param` set to `number`.

Pagination links keep every other query parameter (a card `?revision=`, filters, another list's
page), multi-valued ones included. The result is URL-encoded and, like any simple tag's output,
HTML-escaped by the template.
"""

from django import template
from django.http import QueryDict

register = template.Library()


@register.simple_tag(takes_context=True)
def page_query(context, param: str, number) -> str:
    request = context.get("request")
    query = request.GET.copy() if request is not None else QueryDict(mutable=True)
    query[param] = str(number)
    return f"?{query.urlencode()}"
