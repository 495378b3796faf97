from rest_framework import exceptions, permissions

from accounts import scopes
from accounts.models import ApiToken


class InsufficientScope(exceptions.PermissionDenied):
    error_code = "insufficient_scope"


def token_scopes(request) -> list[str] | None:
    """The scopes that bind this request, or None for a session (bound only by permissions)."""
    return request.auth.scopes if isinstance(request.auth, ApiToken) else None


class HasTokenScopes(permissions.BasePermission):
    """A view names the scope each method needs in `required_scopes` ({"GET": "read", ...}).

    Safe methods need "read" unless the view says otherwise; an unsafe method that a view has not
    mapped is refused, so a new endpoint can't be written to by any token by accident.
    """

    def has_permission(self, request, view):
        granted = token_scopes(request)
        if granted is None:
            return True
        method = request.method.lower()
        if method not in view.http_method_names or not hasattr(view, method):
            return True  # the view answers 405 Method Not Allowed; no scope can make it valid
        # HEAD runs the view's get() (Django answers it so): it needs what GET needs, not the default `read`.
        asked = "GET" if request.method == "HEAD" else request.method
        required = getattr(view, "required_scopes", {}).get(asked)
        if required is None:
            required = scopes.READ if request.method in permissions.SAFE_METHODS else None
        if required is None or required not in granted:
            raise InsufficientScope(
                f"This API token lacks the scope '{required or 'n/a'}' needed for {request.method} "
                f"{request.path}. Its scopes: {', '.join(granted)}."
            )
        return True
