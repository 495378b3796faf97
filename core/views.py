from django.core.exceptions import DisallowedHost
from django.db import connection
from django.http import HttpResponseServerError, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from config.celery import app as celery_app
from core import context
from core.api import error_body


def healthz(request):
    """The process is up and answering."""
    return JsonResponse({"status": "ok"})


def readyz(request):
    """Ready to serve: the database and the task broker both answer."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"error: {exc.__class__.__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


def _under_api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception=None):
    """handler400 (with DEBUG off): a request Django itself refuses before any view, such as a Host header not in
    ALLOWED_HOSTS. Under /api/ the one JSON error body, as every API error is; elsewhere Django's page."""
    if not _under_api(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, DisallowedHost):  # not request.get_host(): it raises again
        message = "The Host header names a host this server does not answer for: call it by one of its own names."
    else:
        message = "Bad request: the server could not read it."
    return JsonResponse(error_body("bad_request", message), status=400)


def permission_denied(request, exception=None):
    """handler403: a PermissionDenied raised outside DRF (DRF's own are core.api's JSON). JSON under /api/."""
    if not _under_api(request):
        return defaults.permission_denied(request, exception)
    return JsonResponse(error_body("forbidden", "You do not have permission to perform this action."), status=403)


def not_found(request, exception=None):
    """handler404 (with DEBUG off): JSON under /api/; elsewhere the web UI's own page, as a person reads it."""
    if not _under_api(request):
        return render(request, "ui/404.html", {"what": None}, status=404)
    return JsonResponse(error_body("not_found", f"No route matches {request.path}."), status=404)


@csrf_exempt  # any method: a POST without a CSRF token is this 404 too, not Django's HTML 403
def api_not_found(request):
    """Every path under /api/ that no route matches, in any method: the JSON not_found error whatever DEBUG is
    (with DEBUG on, Django answers an unmatched path with its HTML debug page instead of calling handler404)."""
    return not_found(request)


def server_error(request):
    """handler500: JSON under /api/; elsewhere a static page. Neither reads the database or the session (the error
    may be theirs): the page gets no request context, only the request id to quote."""
    if not _under_api(request):
        page = loader.get_template("ui/500.html").render({"request_id": context.request_id.get()})
        return HttpResponseServerError(page)
    return JsonResponse(
        error_body("internal_error", "Internal server error. Quote the request id when reporting it."), status=500
    )
