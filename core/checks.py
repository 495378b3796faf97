"""System checks on the configuration that settings import cannot refuse outright.

With DJANGO_DEBUG off, the embedded SQLite database, file broker and local artifact directory are the demo's
defaults that a production deployment got silently when DATABASE_URL, CELERY_BROKER_URL or ARTIFACT_STORAGE was
missing (and /readyz said ok). Refused here rather than at settings import, because the image's build step
(`collectstatic` with DJANGO_DEBUG=0 and no database) must still run: `collectstatic` runs only the staticfiles
checks, while `check`, `migrate` and the other commands run this one, the web refuses to start on it
(core.middleware.StartupCheckMiddleware), gunicorn running no system checks, and so do Celery workers and beat
(config.celery, at worker_init and beat_init: Celery runs the system checks but ignores what they find).
"""

from django.conf import settings
from django.core import checks

OPT_OUT = "ALLOW_EMBEDDED_BACKENDS"


def embedded_backends(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    if settings.DEBUG or settings.ALLOW_EMBEDDED_BACKENDS:
        return []
    errors = []
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        errors.append(
            checks.Error(
                "DATABASE_URL is not set (or names SQLite) while DJANGO_DEBUG is off: the registry would keep "
                "its data in the demo's SQLite file under DATA_DIR.",
                hint=f"Set DATABASE_URL=postgres://user:password@host:5432/registry, or {OPT_OUT}=1 "
                "if a single-machine deployment on SQLite is meant.",
                id="core.E001",
            )
        )
    eager = settings.CELERY_TASK_ALWAYS_EAGER  # tasks run in the web process: no broker is used
    if not eager and (not settings.CELERY_BROKER_URL or settings.CELERY_BROKER_URL.startswith("filesystem://")):
        errors.append(
            checks.Error(
                "CELERY_BROKER_URL is not set (or names the file broker) while DJANGO_DEBUG is off: tasks would "
                "go through the demo's broker files under DATA_DIR, which only a worker on this machine sees.",
                hint=f"Set CELERY_BROKER_URL=redis://host:6379/0 (or amqp://...), or {OPT_OUT}=1 "
                "if a single-machine deployment with the file broker is meant.",
                id="core.E002",
            )
        )
    if settings.ARTIFACT_STORAGE == "local" and not settings.ARTIFACT_STORAGE_CHOSEN:
        errors.append(
            checks.Error(
                "ARTIFACT_STORAGE is not set while DJANGO_DEBUG is off: uploaded artifacts would be kept on this "
                f"machine's disk, under {settings.ARTIFACT_ROOT} (lost when a container is recreated, unseen by "
                "workers on other machines).",
                hint="Set ARTIFACT_STORAGE=s3 with S3_BUCKET (docs/operations.md), or ARTIFACT_STORAGE=local with "
                f"ARTIFACT_ROOT on persistent storage every web and worker process shares, or {OPT_OUT}=1 for a "
                "single-machine deployment on the demo's defaults.",
                id="core.E003",
            )
        )
    return errors


def refusal(errors: list[checks.CheckMessage]) -> str:
    """The errors as one message for a process that stops on them."""
    return " ".join(f"{error.msg} {error.hint} ({error.id})" for error in errors)
