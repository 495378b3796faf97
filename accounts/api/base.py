from django.db import models

from accounts import access
from core.api import BaseAPIView
from core.errors import NotFound


class GovernedAPIView(BaseAPIView):
    """Base for every API view on a governed object: the single enforcement point.

    Views fetch objects only through `governed()`, which hides objects the user may not view (404)
    and refuses actions the user may not take (403). Lists go through `access.visible()`.
    """

    def governed(self, queryset: models.QuerySet, codename: str | None = None, **lookup) -> models.Model:
        obj = next(iter(queryset.filter(**lookup)[:1]), None)  # lookups are unique: no ORDER BY needed
        return self.governed_object(obj, codename, queryset.model._meta.verbose_name)

    def governed_object(self, obj: models.Model | None, codename: str | None, kind: str) -> models.Model:
        """The same checks for an object the view read itself (None: there is none)."""
        if obj is None:
            raise NotFound(f"No {kind} matches the given path.")
        return access.require(self.request.user, obj, codename)
