import re
import uuid

from core import context

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Takes a caller's X-Request-ID (if well-formed) or makes one; echoes it on the response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = request.headers.get("X-Request-ID", "")
        rid = given if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        request.request_id = rid
        # Set (not reset) per request: Django logs the response after the middleware chain returns,
        # and those log lines should still carry the request id. Each request overwrites all three.
        context.request_id.set(rid)
        context.token_id.set(None)
        context.actor.set(None)
        response = self.get_response(request)
        response["X-Request-ID"] = rid
        return response


class ActorMiddleware:
    """After Django's authentication: makes the session user the default audit actor."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        context.actor.set(request.user)  # lazy: evaluated only if something is audited
        return self.get_response(request)
