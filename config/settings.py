"""Settings, all from the environment (12-factor).

Defaults are safe for production (DEBUG off, secure cookies, HSTS); the local quickstart
turns on DJANGO_DEBUG=1, which also lets a SECRET_KEY be generated and kept under DATA_DIR.
"""

import ipaddress
import logging
import math
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent


# Every variable the settings read: the registry's own configuration, which a deployment target's
# credentials_ref may not name (governance.deployment.credentials_ref_problem).
OWN_ENVIRONMENT: set[str] = set()


def _read(name: str, default: str | None = None) -> str | None:
    OWN_ENVIRONMENT.add(name)
    return os.environ.get(name, default)


def env(name: str, default: str | None = None) -> str | None:
    return _read(name, default)


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_bool(name: str, default: bool) -> bool:
    """Unset or empty: the default. Anything outside the vocabulary is refused: a typo (`ture`, `y`,
    `enabled`) silently turned SESSION_COOKIE_SECURE and the like off."""
    value = _read(name)
    if value is None or value.strip() == "":
        return default
    word = value.strip().lower()
    if word not in _TRUE | _FALSE:
        raise ImproperlyConfigured(f"{name} must be one of 1/0, true/false, yes/no, on/off, got {value!r}.")
    return word in _TRUE


def _env_number(name: str, default, cast, what: str):
    value = _read(name)
    if value is None or value.strip() == "":
        return default
    try:
        return cast(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {what}, got {value!r}.") from None


def env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "a whole number")


def env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def positive(name: str, value, unit: str = ""):
    """The one range rule for counts, sizes, intervals and timeouts: more than 0 (and finite). 0 or less was taken:
    RECONCILE_INTERVAL_SECONDS=0 had beat send the reconcile as fast as it could, a 0 timeout failed every call."""
    if not (value > 0 and math.isfinite(value)):  # NaN fails the first test
        raise ImproperlyConfigured(f"{name} must be more than 0{unit}, got {_read(name)!r}.")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in _read(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)
DATA_DIR = Path(env("DATA_DIR", str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)
(DATA_DIR / "static").mkdir(exist_ok=True)  # WhiteNoise warns when STATIC_ROOT is missing


def _secret_key() -> str:
    key = env("SECRET_KEY")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DJANGO_DEBUG is off.")
    # Local use only: generate once and keep it so sessions survive restarts.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
# Previous keys, comma-separated, while rotating SECRET_KEY: old sessions and webhook secrets still open.
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", "")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served locally, so /api/docs/ works offline
    "guardian",
    "axes",  # failed sign-ins: a username is locked for a while after too many from one address
    "csp",
    "core",
    "audit",
    "accounts",
    "registry",
    "lineage",
    "governance",
]

MIDDLEWARE = [
    "core.middleware.StartupCheckMiddleware",  # refuses to start on what core.checks refuses; then not used
    "core.middleware.MetricsMiddleware",  # outermost: times the whole request, writes the access log line
    "core.middleware.RequestIdMiddleware",
    "core.middleware.RequestIOTimeoutMiddleware",  # before anything reads a body: a stalled client times out
    "core.middleware.UnstorableInputMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.middleware.ActorMiddleware",
    "core.middleware.PrivateResponseMiddleware",  # after authentication: the API's token user is set on the way out
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "core.middleware.ReleaseResponseMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: it turns a lockout into its 429 answer
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# The defaults below (SQLite under DATA_DIR, the file broker) are the demo's. With DJANGO_DEBUG off they
# are refused by a system check (core.checks: `check`, `migrate` and the web's start stop on it) unless
# ALLOW_EMBEDDED_BACKENDS=1 says a single-machine deployment means them.
ALLOW_EMBEDDED_BACKENDS = env_bool("ALLOW_EMBEDDED_BACKENDS", False)
# PostgreSQL: seconds to wait for a connection (TCP and the server's startup answer; libpq counts less than 2 as 2).
# Without it a server that accepts and never answers held each request, /readyz, workers and beat for minutes.
# A connect_timeout in DATABASE_URL wins.
DATABASE_CONNECT_TIMEOUT = positive("DATABASE_CONNECT_TIMEOUT", env_int("DATABASE_CONNECT_TIMEOUT", 5), " seconds")
DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{DATA_DIR / 'registry.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock at BEGIN, so concurrent writers queue instead of failing
    # with "database is locked" when a read transaction upgrades to a write.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 30}
elif DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    # Django's backend, with a health check that polls the socket instead of a SELECT 1 round trip
    DATABASES["default"]["ENGINE"] = "core.postgres"
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options.setdefault("connect_timeout", DATABASE_CONNECT_TIMEOUT)
    # JIT compilation costs ~1.9 s on the recursive lineage CTE of a large registry (12 ms without, see
    # bench/README.md); the service's queries are short OLTP ones that never gain from it. Put before libpq's
    # PGOPTIONS (which an `options` parameter replaces, so it is passed on here: `PGOPTIONS='-c lock_timeout=5s'
    # manage.py migrate`) and the URL's own `options` (`?options=-c%20statement_timeout%3D5000`), which this
    # used to replace: the later -c wins.
    _given = (env("PGOPTIONS") or "", _options.get("options") or "")
    _options["options"] = " ".join(["-c jit=off", *filter(None, (given.strip() for given in _given))])
    if env_bool("DATABASE_PREPARED_STATEMENTS", True):
        # Server-side binding lets psycopg prepare a statement once it has run 5 times on a connection,
        # so the hot ones (token, model/version/alias by path, registration) stop being parsed and,
        # once PostgreSQL settles on a generic plan, planned: about 0.3 ms each, a third of a version
        # get (bench/README.md). Off behind a pooler that cannot keep prepared statements (PgBouncer
        # in transaction mode before 1.22, which also handles psycopg's DEALLOCATE ALL on rollback).
        DATABASES["default"]["OPTIONS"].update(server_side_binding=True, prepare_threshold=5)
if env("TEST_DATABASE_NAME"):  # lets parallel test runs on one server keep their own databases
    DATABASES["default"]["TEST"] = {"NAME": env("TEST_DATABASE_NAME")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth and permissions -------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out sign-in before a password is checked
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
# django-axes: AXES_FAILURE_LIMIT failed sign-ins (UI and admin) for one username from one address lock that pair
# for AXES_COOLOFF_MINUTES; a success resets the count. Per pair, so an attacker cannot lock a user out everywhere.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_int("AXES_COOLOFF_MINUTES", 15) / 60  # hours
if AXES_COOLOFF_TIME <= 0:  # django-axes reads 0 as "locked until an admin resets it"
    raise ImproperlyConfigured(f"AXES_COOLOFF_MINUTES must be at least 1, got {env('AXES_COOLOFF_MINUTES')!r}.")
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "ui/lockout.html"  # the 429 as a page of the site, saying when to try again
# Proxies in front of the web processes that append to X-Forwarded-For (a load balancer, HAProxy with
# `option forwardfor`, nginx): without it every client shares the proxy's address, and five wrong passwords
# from anyone lock a username for everyone. Count only proxies of your own; core/client_ip.py says why.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(f"TRUSTED_PROXY_COUNT must be 0 or more, got {TRUSTED_PROXY_COUNT}.")
AXES_CLIENT_IP_CALLABLE = "core.client_ip.client_ip"
AXES_ENABLE_ADMIN = False  # attempts and lockouts are listed with `manage.py axes_list_attempts`, reset with axes_reset
# Content-Security-Policy (django-csp) on every response: the UI runs no script of its own, Swagger UI
# (/api/docs/) only files from the sidecar package; inline style stays (a few style attributes).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user object; anonymous requests get 401
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Security (safe by default; relaxed only by DEBUG or explicit env) ------------------------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# Load balancer probes and the Prometheus scraper speak plain HTTP to the process, not through the proxy.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if env_bool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Request bodies. An API JSON body above MAX_JSON_BODY_BYTES gets a 413 naming the limit (core.parsers); the
# default holds a registration of registry.manifest.MAX_FILES files with 1,024-character ASCII paths (~11.5 MB).
MAX_JSON_BODY_BYTES = positive("MAX_JSON_BODY_BYTES", env_int("MAX_JSON_BODY_BYTES", 16 * 1024 * 1024), " bytes")
# What Django reads whole itself (the web forms); API JSON bodies never pass through it (core.parsers).
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
# One artifact upload (PUT …/artifacts/sha256:<hex>) larger than this gets a 413. There is always a limit.
MAX_ARTIFACT_BYTES = positive("MAX_ARTIFACT_BYTES", env_int("MAX_ARTIFACT_BYTES", 100 * 1024**3), " bytes")
# The longest wait for a client's next bytes (of a request's body) or for room to send it more (of a response), per
# socket operation, not per request: a stalled client was a gunicorn thread held for good (core.middleware).
REQUEST_IO_TIMEOUT_SECONDS = positive(
    "REQUEST_IO_TIMEOUT_SECONDS", env_float("REQUEST_IO_TIMEOUT_SECONDS", 60.0), " seconds"
)

# --- Static and media storage ---------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
# Case-insensitive; anything else is refused (`S3` or a typo used to fall back to local disk silently).
ARTIFACT_STORAGE = (env("ARTIFACT_STORAGE") or "").strip().lower()
# Local disk named outright is a choice (ARTIFACT_ROOT on a volume every web and worker process shares), and so is
# DJANGO_DEBUG=1 (the demo's defaults; read here, as the process starts: Django's test runner turns DEBUG off later).
# Left to the default with debug off, a system check refuses it (core.checks, core.E003) unless ALLOW_EMBEDDED_BACKENDS.
ARTIFACT_STORAGE_CHOSEN = bool(ARTIFACT_STORAGE) or DEBUG
ARTIFACT_STORAGE = ARTIFACT_STORAGE or "local"
if ARTIFACT_STORAGE not in {"local", "s3"}:
    raise ImproperlyConfigured(f"ARTIFACT_STORAGE must be local or s3, got {env('ARTIFACT_STORAGE')!r}.")
ARTIFACT_ROOT = Path(env("ARTIFACT_ROOT", str(DATA_DIR / "artifacts")))
S3_BUCKET = (env("S3_BUCKET") or "").strip()
if ARTIFACT_STORAGE == "s3" and not S3_BUCKET:  # it was the first upload's 500
    raise ImproperlyConfigured("ARTIFACT_STORAGE=s3 needs S3_BUCKET (and S3_ENDPOINT_URL for servers other than AWS).")
S3_ENDPOINT_URL = env("S3_ENDPOINT_URL", "") or None
S3_REGION = env("S3_REGION", "us-east-1")
# botocore's defaults (60 s, 5 attempts) held a request for minutes on an endpoint that does not answer. The read
# timeout bounds each wait for the server (its answer, or room to send more), not a whole transfer: a large part
# streams as long as it moves, and S3 answers a part once its last byte is in. 3 attempts (standard retry mode).
S3_CONNECT_TIMEOUT = positive("S3_CONNECT_TIMEOUT", env_float("S3_CONNECT_TIMEOUT", 5.0), " seconds")
S3_READ_TIMEOUT = positive("S3_READ_TIMEOUT", env_float("S3_READ_TIMEOUT", 60.0), " seconds")
# Trusted public keys (PEM file paths, comma-separated) for model-signing signatures: docs/signing.md
MODEL_SIGNING_PUBLIC_KEYS = env_list("MODEL_SIGNING_PUBLIC_KEYS", "")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "accounts.permissions.HasTokenScopes",
    ],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "URL_FORMAT_OVERRIDE": None,  # `format` is ours (export formats), not DRF's renderer switch
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Model Governance Registry API",
    "DESCRIPTION": (
        "Immutable model versions, model cards, lineage, approvals, deployments and a "
        "hash-chained audit log. Authenticate with `Authorization: Bearer <token>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {},
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Error responses (400/401/403/404/409/413/415 with the one error body) on every operation.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "core.openapi.document_errors"],
}

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    # Embedded default: a broker made of files under DATA_DIR, shared by web and worker
    # processes on one machine. Production uses Redis or RabbitMQ.
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # A connection that dies without a word (a NAT or firewall idle timeout, a failover behind a proxy) hung
    # every publish on it for good: beat's, the web's enqueue after an approval, a worker's retry. Bounded reads,
    # keepalive probes, and a health check of idle connections.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 25,
    }
# Webhook deliveries have a queue of their own: an attempt may hold a worker for WEBHOOK_TIMEOUT_SECONDS, and
# a dead receiver behind a burst of events held deployments and rollbacks back. A worker started without -Q
# takes both queues (the consumer alternates between them); docker-compose.yml runs one worker per queue.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = (Queue("celery", routing_key="celery"), Queue("webhooks", routing_key="webhooks"))
CELERY_TASK_ROUTES = {"governance.tasks.webhooks_deliver": {"queue": "webhooks"}}
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", None)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# --- Deployment engine ----------------------------------------------------------------------
_SECONDS = " seconds"
RECONCILE_INTERVAL_SECONDS = positive("RECONCILE_INTERVAL_SECONDS", env_int("RECONCILE_INTERVAL_SECONDS", 30), _SECONDS)
# a crashed worker's claim runs out
RECONCILE_LEASE_SECONDS = positive("RECONCILE_LEASE_SECONDS", env_int("RECONCILE_LEASE_SECONDS", 120), _SECONDS)
# a hung worker's claim runs out too
RECONCILE_MAX_HOLD_SECONDS = positive(
    "RECONCILE_MAX_HOLD_SECONDS", env_int("RECONCILE_MAX_HOLD_SECONDS", 3600), _SECONDS
)
RECONCILE_MAX_RETRIES = env_int("RECONCILE_MAX_RETRIES", 6)  # host errors, with exponential backoff
# a release not live by then fails, with why
DEPLOY_TIMEOUT_SECONDS = positive("DEPLOY_TIMEOUT_SECONDS", env_int("DEPLOY_TIMEOUT_SECONDS", 3600), _SECONDS)
SECRETS_DIR = env("SECRETS_DIR", "/run/secrets")  # credentials_ref "secret:name" reads SECRETS_DIR/name

# Periodic tasks (run `celery -A config beat` once per deployment). Outgoing webhooks: the dispatcher
# turns new audit events into deliveries; the sweeper re-enqueues deliveries whose task was lost.
# `registry_max_age` (config/celery.py) drops runs that waited in the queue longer than that (the next run covers
# them), judged by the broker's clock: Celery's `expires`, judged by beat's clock against the worker's, dropped
# every run on a worker whose clock ran ahead by more than the allowance.
# Webhook delivery (docs/webhooks.md): with these defaults a dead receiver is tried for 1.5 to 3.1 hours.
WEBHOOK_MAX_ATTEMPTS = positive("WEBHOOK_MAX_ATTEMPTS", env_int("WEBHOOK_MAX_ATTEMPTS", 10))
# one attempt, whole
WEBHOOK_TIMEOUT_SECONDS = positive("WEBHOOK_TIMEOUT_SECONDS", env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0), _SECONDS)
WEBHOOK_RETRY_BASE_SECONDS = positive(
    "WEBHOOK_RETRY_BASE_SECONDS", env_float("WEBHOOK_RETRY_BASE_SECONDS", 30.0), _SECONDS
)
WEBHOOK_RETRY_MAX_SECONDS = positive(
    "WEBHOOK_RETRY_MAX_SECONDS", env_float("WEBHOOK_RETRY_MAX_SECONDS", 3600.0), _SECONDS
)
WEBHOOK_SWEEP_GRACE_SECONDS = positive(
    "WEBHOOK_SWEEP_GRACE_SECONDS", env_float("WEBHOOK_SWEEP_GRACE_SECONDS", 30.0), _SECONDS
)
_WEBHOOK_DISPATCH_EVERY = positive(
    "WEBHOOK_DISPATCH_INTERVAL_SECONDS", env_float("WEBHOOK_DISPATCH_INTERVAL_SECONDS", 5.0), _SECONDS
)
_WEBHOOK_SWEEP_EVERY = positive(
    "WEBHOOK_SWEEP_INTERVAL_SECONDS", env_float("WEBHOOK_SWEEP_INTERVAL_SECONDS", 30.0), _SECONDS
)


def _networks(name: str) -> list[str]:
    networks = []
    for item in env_list(name, ""):
        try:
            networks.append(str(ipaddress.ip_network(item)))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name} must be comma-separated networks such as 10.0.0.0/8 or fd00::/8; {item!r} is not one ({exc})."
            ) from None
    return networks


# Deliveries connect only to public addresses and to these networks: an attempt's answer is in the delivery log,
# so an internal address would let webhook managers read internal services (cloud metadata, a 10.x admin). Debug
# (the local demo, the test suite) adds loopback, where its receivers run.
WEBHOOK_ALLOWED_NETWORKS = _networks("WEBHOOK_ALLOWED_NETWORKS") + (["127.0.0.0/8", "::1/128"] if DEBUG else [])


def _max_age(seconds: float) -> dict:
    return {"headers": {"registry_max_age": seconds}}


CELERY_BEAT_SCHEDULE = {
    "webhooks-dispatch": {
        "task": "governance.tasks.webhooks_dispatch",
        "schedule": _WEBHOOK_DISPATCH_EVERY,
        "options": _max_age(_WEBHOOK_DISPATCH_EVERY * 2),
    },
    "webhooks-sweep": {
        "task": "governance.tasks.webhooks_sweep",
        "schedule": _WEBHOOK_SWEEP_EVERY,
        "options": _max_age(_WEBHOOK_SWEEP_EVERY * 2),
    },
    # Deployment engine: converge unfinished releases and detect drift; expire stale promotion requests.
    "reconcile-all-targets": {
        "task": "governance.deployment_tasks.reconcile_all",
        "schedule": float(RECONCILE_INTERVAL_SECONDS),
        "options": _max_age(RECONCILE_INTERVAL_SECONDS * 2.0),
    },
    "expire-promotion-requests": {
        "task": "governance.deployment_tasks.expire_promotions",
        "schedule": 300.0,
        "options": _max_age(600.0),
    },
}
# Time limits, enforced by the prefork pool (the default; `-P solo` and `-P threads` enforce none): at the soft
# limit the task gets SoftTimeLimitExceeded and ends cleanly; at the hard limit its process is killed and the
# message acknowledged (not redelivered). A host call or a receiver that hangs no longer holds a worker for good.
# These apply to the periodic tasks; a reconcile and a webhook delivery have their own, derived from
# RECONCILE_MAX_HOLD_SECONDS and WEBHOOK_TIMEOUT_SECONDS (governance/deployment_tasks.py, governance/tasks.py).
CELERY_TASK_SOFT_TIME_LIMIT = positive(
    "CELERY_TASK_SOFT_TIME_LIMIT", env_float("CELERY_TASK_SOFT_TIME_LIMIT", 120.0), _SECONDS
)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 60
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Redis hands a message out again once it is this long unacknowledged, even while its first run goes on: longer
    # than the longest countdown a worker holds a message for (300 s: governance.tasks; a reconcile's backoff is
    # less) plus the longest any task may run, i.e. the largest hard limit: a reconcile's (RECONCILE_MAX_HOLD_SECONDS
    # and a third of a lease; counted here with the whole lease), a webhook delivery's (inside its claim,
    # WEBHOOK_TIMEOUT_SECONDS + 60), every other task's (CELERY_TASK_TIME_LIMIT); and a minute to spare. At least an
    # hour. It was RECONCILE_MAX_HOLD_SECONDS + RECONCILE_LEASE_SECONDS + 300 alone: below a longer periodic limit.
    _LONGEST_RUN = max(
        RECONCILE_MAX_HOLD_SECONDS + RECONCILE_LEASE_SECONDS, WEBHOOK_TIMEOUT_SECONDS + 60, CELERY_TASK_TIME_LIMIT
    )
    CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] = max(3600, math.ceil(_LONGEST_RUN + 300 + 60))
# A message whose runs never end (each kills its worker process) is rejected at its next start after this many
# (config/celery.py); with another broker than Redis there is no count.
TASK_MAX_DELIVERIES = positive("TASK_MAX_DELIVERIES", env_int("TASK_MAX_DELIVERIES", 3))
CELERY_IMPORTS = ["governance.deployment_tasks"]


# --- Time, language, logging ----------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Logs and metrics (docs/operations.md) ------------------------------------------------------
# LOG_FORMAT=json: one JSON object per line with request_id, actor, token_id and, in Celery tasks,
# task_name and task_id. text: the same facts on human-readable lines (the default with DJANGO_DEBUG=1).
LOG_FORMAT = env("LOG_FORMAT") or ("text" if DEBUG else "json")
if LOG_FORMAT not in {"json", "text"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or text, not {LOG_FORMAT!r}.")
LOG_LEVEL = (env("LOG_LEVEL") or "INFO").strip().upper()
if LOG_LEVEL not in logging.getLevelNamesMapping():  # WARN and FATAL too, as logging itself takes them
    raise ImproperlyConfigured(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {env('LOG_LEVEL')!r}.")
# At DEBUG these libraries log each request they send with its headers: AWS signatures and session tokens
# (botocore), bearer tokens of host APIs. They stay at INFO (or LOG_LEVEL, if stricter) whatever LOG_LEVEL says.
_CLIENT_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3", "httpx", "httpcore", "httpx2", "httpcore2")
_CLIENT_LOG_LEVEL = logging.getLevelName(max(logging.INFO, logging.getLevelNamesMapping()[LOG_LEVEL]))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.logging.RequestIdFilter"}},
    "formatters": {
        "json": {"()": "core.logging.JsonFormatter"},
        "text": {"()": "core.logging.TextFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own handlers are replaced: everything goes through the one console handler above.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        **{name: {"level": _CLIENT_LOG_LEVEL} for name in _CLIENT_LOGGERS},
    },
}
# Celery would otherwise replace the root handler with its own plain format in worker processes.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# /metrics: with METRICS_TOKEN set, scrapers send `Authorization: Bearer <METRICS_TOKEN>`. Unset, /metrics
# is open with DJANGO_DEBUG=1 and answers 403 otherwise.
METRICS_TOKEN = env("METRICS_TOKEN", "")
# A Celery worker serves its tasks' metrics on this port (0: off). Needs PROMETHEUS_MULTIPROC_DIR for prefork.
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0)
# prometheus_client reads PROMETHEUS_MULTIPROC_DIR from the environment itself (core.metrics). Checked here
# so that a wrong one stops the process at start: a missing directory used to fail every request instead.
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR", "")
if PROMETHEUS_MULTIPROC_DIR and not (
    os.path.isdir(PROMETHEUS_MULTIPROC_DIR) and os.access(PROMETHEUS_MULTIPROC_DIR, os.W_OK | os.X_OK)
):
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR must be an existing, writable directory, got {PROMETHEUS_MULTIPROC_DIR!r}."
    )
