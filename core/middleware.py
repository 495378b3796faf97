import logging
import re
import time
import uuid

from django.http import HttpResponseBadRequest

from core import context, metrics
from core.views import not_found

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


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_FORMS = {"application/x-www-form-urlencoded", "multipart/form-data"}


class UnstorableInputMiddleware:
    """Input that no name or text column can hold, refused before a view hands it to PostgreSQL (which cannot
    store a NUL: that was a 500). A path holding a control character (a NUL from %00, say) names nothing: the
    unknown-route 404. A web form field holding a NUL, which no browser sends from what a person typed: 400.
    JSON bodies are core.parsers' (it names where)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if _CONTROL_CHARACTER.search(request.path):
            return not_found(request)
        if request.content_type in _FORMS and not request.path.startswith("/api/") and _holds_nul(request.POST):
            return HttpResponseBadRequest("A form field holds a NUL character, which cannot be stored.")
        return self.get_response(request)


def _holds_nul(form) -> bool:
    return any("\x00" in key or any("\x00" in value for value in values) for key, values in form.lists())


class ActorMiddleware:
    """After Django's authentication: makes the session user the default audit actor."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        context.actor.set(request.user)  # lazy: evaluated only if something is audited
        return self.get_response(request)


access_log = logging.getLogger("core.access")
# Probes and scrapes arrive every few seconds; their lines are logged at DEBUG so they do not drown the rest.
_QUIET_VIEWS = {"healthz", "readyz", "metrics"}


class MetricsMiddleware:
    """Outermost: times every request for registry_http_request_duration_seconds and writes one access
    log line (method, path without query string, view name, status, duration) carrying the request id
    and actor that the inner middleware put in core.context."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        status = 500
        try:
            response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            seconds = time.perf_counter() - started
            metrics.observe_request(request, status, seconds)
            view = metrics.view_label(request)
            access_log.log(
                logging.DEBUG if view in _QUIET_VIEWS else logging.INFO,
                "%s %s %s %.1fms",
                request.method,
                request.path,
                status,
                seconds * 1000,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "view": view,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )


class ReleaseResponseMiddleware:
    """Lets a DRF-rendered API response go as soon as the server has sent it. It refers to itself
    (renderer_context["response"], set while it renders) and to its view, which refers back to it
    (view.response): reference cycles, so each response, its data and its rendered body waited for the
    garbage collector's next full pass. A web worker serving pages of 100 versions grew 7 MB in 30 pages (a
    high-water mark it kept); without the cycles it stays flat. Innermost: the response is rendered by then.
    (A streamed response, the audit export's, has no renderer_context: its view keeps it until the collector
    runs, which costs little, its chunks being consumed by then.)"""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        context = getattr(response, "renderer_context", None)
        if context:
            context.pop("response", None)
            if (view := context.get("view")) is not None:
                vars(view).pop("response", None)
        return response
