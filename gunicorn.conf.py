"""gunicorn's settings wherever the registry runs under it (Dockerfile, docker-compose.yml, scripts/dev.py, the
tests, bench/): gunicorn reads ./gunicorn.conf.py from the directory it starts in; command-line flags override it.

Threaded workers. An artifact upload (`PUT …/artifacts/sha256:…`) is one request that lasts as long as the
client takes to send the file. A sync worker cannot report to the arbiter while it serves, so every upload
slower than `timeout` (30 s) was killed with a 500, and each slow client held a whole worker. A gthread
worker's main loop keeps reporting while its threads serve; a slow upload holds one thread.
"""

import os

worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))


def _log_format() -> str:
    """LOG_FORMAT as config/settings.py reads it (json unless DJANGO_DEBUG is on), without loading the settings here:
    an invalid value is the settings' to refuse, as each worker loads the application."""
    debug = os.environ.get("DJANGO_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}
    return os.environ.get("LOG_FORMAT") or ("text" if debug else "json")


# With LOG_FORMAT=json, gunicorn's own lines (boot, worker start and exit, a worker killed at its timeout) go through
# the project's JSON formatter too: in plain text they were the lines of the stream a log pipeline could not parse.
# gunicorn.error has no `level` here, so it keeps gunicorn's --log-level. gunicorn.access stays off (a logging config
# turns it on in gunicorn): core.access already writes one JSON line per request, without the query string.
if _log_format() == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "core.logging.RequestIdFilter"}},
        "formatters": {"json": {"()": "core.logging.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "INFO", "handlers": ["json"]},  # until Django's LOGGING replaces it in each worker
        "loggers": {
            "gunicorn.error": {"handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }
