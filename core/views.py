from django.db import connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from config.celery import app as celery_app
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


def not_found(request, exception=None):
    return JsonResponse(error_body("not_found", f"No route matches {request.path}."), status=404)


@csrf_exempt  # any method: a POST without a CSRF token is this 404 too, not Django's HTML 403
def api_not_found(request):
    """Every path under /api/ that no route matches, in any method: the JSON not_found error whatever DEBUG is
    (with DEBUG on, Django answers an unmatched path with its HTML debug page instead of calling handler404)."""
    return not_found(request)


def server_error(request):
    return JsonResponse(
        error_body("internal_error", "Internal server error. Quote the request id when reporting it."), status=500
    )
