"""gunicorn's settings wherever the registry runs under it (Dockerfile, docker-compose.yml, scripts/dev.py, the
tests, bench/): gunicorn reads ./gunicorn.conf.py from the directory it starts in; command-line flags override it.

Threaded workers. An artifact upload (`PUT …/artifacts/sha256:…`) is one request that lasts as long as the
client takes to send the file. A sync worker cannot report to the arbiter while it serves, so every upload
slower than `timeout` (30 s) was killed with a 500, and each slow client held a whole worker. A gthread
worker's main loop keeps reporting while its threads serve; a slow upload holds one thread.
"""

import os

from gunicorn.glogging import Logger

worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))


def _log_format() -> str:
    """LOG_FORMAT as config/settings.py reads it (json unless DJANGO_DEBUG is on), without loading the settings here:
    an invalid value is the settings' to refuse, as each worker loads the application."""
    debug = os.environ.get("DJANGO_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}
    return os.environ.get("LOG_FORMAT") or ("text" if debug else "json")


class JsonLogger(Logger):
    """gunicorn's logger, its own lines (boot, worker start and exit, a worker killed at its timeout) written by the
    project's JSON formatter: in plain text they were the lines of a LOG_FORMAT=json stream a log pipeline could not
    parse. The access log, only when asked for (--access-logfile, as bench/ does), keeps its own format; core.access
    already writes one JSON line per request, without the query string."""

    def setup(self, cfg):
        super().setup(cfg)
        from core.logging import JsonFormatter, RequestIdFilter

        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())
            handler.addFilter(RequestIdFilter())


if _log_format() == "json":
    logger_class = JsonLogger
