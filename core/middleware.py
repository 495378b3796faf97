import contextvars
import logging
import re
import time
import uuid

from django.conf import settings
from django.core.exceptions import BadRequest, ImproperlyConfigured, MiddlewareNotUsed
from django.http import HttpResponseBadRequest

from core import checks, context, metrics
from core.errors import DomainError
from core.views import not_found

# fullmatch: with re.match, `$` also matched before a trailing newline, so "id\n" was taken as given.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class StartupCheckMiddleware:
    """Stops the web process from starting on a configuration that core.checks refuses: gunicorn and the ASGI
    servers run no system checks, and a production web on the demo's SQLite file answered /readyz ok. Runs
    once, as the handler loads its middleware; then steps out of the chain."""

    def __init__(self, get_response):
        errors = checks.embedded_backends()
        if errors:
            raise ImproperlyConfigured(checks.refusal(errors))
        raise MiddlewareNotUsed


class RequestIdMiddleware:
    """Takes a caller's X-Request-ID (if well-formed) or makes one; echoes it on the response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = request.headers.get("X-Request-ID", "")
        rid = given if _VALID_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.request_id = rid
        # Set (not reset) per request: Django logs the response after the middleware chain returns,
        # and those log lines should still carry the request id. Each request overwrites all three.
        context.request_id.set(rid)
        context.token_id.set(None)
        context.actor.set(None)
        response = self.get_response(request)
        response["X-Request-ID"] = rid
        return response


class RequestTimeout(DomainError, BadRequest):
    """A request's body stopped arriving: for the API a JSON 408; a BadRequest for Django, which answers a web form's
    post 400. Here, not in core.errors: that module stays plain Python (the host adapters import it without Django)."""

    status = 408
    code = "request_timeout"


class RequestCut(DomainError, BadRequest):
    """The client's connection broke mid-body (reset): a 400 nobody may read, rather than Django's
    UnreadablePostError, an API's 500 with a traceback logged for what the client did."""

    status = 400
    code = "incomplete_body"


io_log = logging.getLogger("core.request_io")


class RequestIOTimeoutMiddleware:
    """Bounds each wait on the client's connection, for the next bytes of the request's body or for room to send
    the response, to REQUEST_IO_TIMEOUT_SECONDS. Under gunicorn a client that stopped sending mid-body (a CI runner
    preempted during an upload, a network partition) held its thread for good: gthread's `timeout` watches the
    worker, not its threads, and a worker has GUNICORN_THREADS of them; four such uploads and the registry answered
    nothing, /healthz included. A body that stops arriving is a 408 `request_timeout`, nothing stored (an upload's
    scratch copy goes, as for any upload that fails), and gunicorn closes the connection, whose body is unfinished.
    A response the client stops reading fails its write, and the connection is closed (gunicorn writes a response
    that is not streamed in one call: what the network's buffers do not hold of it must leave within the timeout).

    The timeout is set on gunicorn's socket of the request's connection (environ's `gunicorn.socket`): gthread makes
    it blocking (no timeout) as a thread takes each request and non-blocking while a kept-alive connection waits in
    its poller, so it lasts until the response is sent and never reaches the poller or the next request. Here
    rather than in gunicorn's pre_request hook, which runs at the same point (after the headers): the setting is
    checked as the others are, and a body read that times out is made an answer. Other servers (runserver, the
    test client) pass no socket and keep their own rules."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.seconds = settings.REQUEST_IO_TIMEOUT_SECONDS

    def __call__(self, request):
        sock = request.META.get("gunicorn.socket")
        if sock is None:
            return self.get_response(request)
        sock.settimeout(self.seconds)
        # Every read of the body (request.body, request.POST, DRF's parsers, an upload's stream) goes through
        # request._stream; Django would make a timeout an UnreadablePostError, an API's 500.
        body = request._stream = _TimedBody(request._stream, self.seconds)
        response = self.get_response(request)
        if body.failure:
            io_log.warning(
                "%s %s: %s (%d of %s bytes read); answered %s, connection closed",
                request.method,
                request.path,
                body.failure,
                body.received,
                request.META.get("CONTENT_LENGTH") or "?",
                response.status_code,
                extra={"method": request.method, "path": request.path, "read_bytes": body.received},
            )
        return response


class _TimedBody:
    """A request's body stream whose socket timeout is a RequestTimeout and whose broken connection a RequestCut (each
    noted in `failure`, for the log line)."""

    def __init__(self, stream, seconds: float):
        self._stream, self._seconds = stream, seconds
        self.received, self.failure = 0, ""

    def read(self, *args, **kwargs) -> bytes:
        return self._counted(self._stream.read, *args, **kwargs)

    def readline(self, *args, **kwargs) -> bytes:
        return self._counted(self._stream.readline, *args, **kwargs)

    def _counted(self, read, *args, **kwargs) -> bytes:
        try:
            data = read(*args, **kwargs)
        except TimeoutError:
            self.failure = f"the request's body stopped arriving (nothing for {self._seconds} s)"
            raise RequestTimeout(
                f"The request's body stopped arriving: nothing came for {self._seconds} seconds "
                "(REQUEST_IO_TIMEOUT_SECONDS), and the registry stopped waiting. Nothing was stored; send the "
                "request again (an upload: the whole file).",
                detail={"timeout_seconds": self._seconds},
            ) from None
        except ConnectionError as exc:  # reset, aborted, broken pipe: the client is gone
            self.failure = f"the connection was closed before the request's body arrived ({type(exc).__name__})"
            raise RequestCut(
                "The connection was closed before the request's body arrived whole. Nothing was stored; send the "
                "request again (an upload: the whole file)."
            ) from None
        self.received += len(data)
        return data

    def __getattr__(self, name):  # close(), seekable(), ... as the wrapped stream's
        return getattr(self._stream, name)


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
    and actor that the inner middleware put in core.context.

    A streamed response (audit and lineage exports) is measured when its body has been sent, not when the
    view returns it: a 13 MB export took its client 5 s and was logged as 243 ms. An error while streaming
    is counted and logged as a 500 (the client got a 200 header and a cut body)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        status = 500
        try:
            response = self.get_response(request)
            status = response.status_code
        except BaseException:
            _record(request, status, started)
            raise
        if response.streaming:
            _observe_stream(response, request, started)
        else:
            _record(request, status, started)
        return response


def _record(request, status: int, started: float) -> None:
    seconds = time.perf_counter() - started
    metrics.observe_request(request, status, seconds)  # never raises: a metric is not worth a response
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


def _observe_stream(response, request, started: float) -> None:
    # The body is sent after this middleware returns, maybe in another context (ASGI) or after the thread
    # served something else: the request's own context (request id, actor, token) is kept for the log line.
    request_context = contextvars.copy_context()
    done = False

    def finish(status: int) -> None:
        nonlocal done
        if not done:
            done = True
            request_context.run(_record, request, status, started)

    if getattr(response, "file_to_stream", None) is not None:
        # A file (WhiteNoise's static files) is left as it is, so that the server may still send it with
        # sendfile (wsgi.file_wrapper), which never iterates streaming_content: measured when it is closed.
        close = response.close

        def finish_and_close() -> None:
            finish(response.status_code)
            close()

        response.close = finish_and_close
        return
    wrapper = _ObservedAsyncStream if response.is_async else _ObservedStream
    response.streaming_content = wrapper(response.streaming_content, response.status_code, finish)


class _Observed:
    """A streamed body that reports once, when it ends, fails or is closed (the server closes the response
    when it stops sending: done, or the client went away; an unsent body, e.g. for HEAD, is only closed).
    Having close(), it is one of the closers that HttpResponse.close() calls. A subclass is iterable one way
    only: Django takes anything with __iter__ for a sync body."""

    def __init__(self, content, status: int, finish):
        self._content, self._status, self._finish = content, status, finish

    def close(self) -> None:
        self._finish(self._status)


class _ObservedStream(_Observed):
    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._content)
        except StopIteration:
            self._finish(self._status)
            raise
        except Exception:
            self._finish(500)
            raise


class _ObservedAsyncStream(_Observed):
    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await anext(self._content)
        except StopAsyncIteration:
            self._finish(self._status)
            raise
        except Exception:
            self._finish(500)
            raise


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


class PrivateResponseMiddleware:
    """An answer to a signed-in user (a session or an API token) that says nothing of caching is `private, no-store`:
    the back button after a logout, a shared browser or a proxy would show a reviewer's pages (cards, metrics,
    approvals) from its cache. Answers that chose their own caching (static files, a webhook secret) keep it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if "Cache-Control" not in response and user is not None and user.is_authenticated:
            response["Cache-Control"] = "private, no-store"  # set as is: add_never_cache_headers costs 30 µs
        return response
