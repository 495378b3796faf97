"""A small threaded HTTP server base for the wire-compatible fakes of managed hosts.

Each fake runs a stdlib `ThreadingHTTPServer` on 127.0.0.1 in a background thread (or as its own
process: `python -m tests.fakes.replicate_server --port N`). Shared here:

- fault injection: `fail_rate` (answer `fail_status`, a 5xx, before doing anything) and `timeout_rate`
  (sleep `fault_sleep` seconds, past the client's timeout, then drop the connection; with
  `timeout_applies` the request is carried out first and only its answer is lost). Decisions come
  from a seeded `random.Random`, so a run is reproducible. Set them as attributes (`server.faults(...)`)
  or over HTTP: `POST /_fake/faults {"fail_rate": 0.3, "timeout_rate": 0.0, "seed": 7}`. `retry_after` (seconds; False
  removes it) adds a `Retry-After` header to the injected failures, as a throttling platform does on a 429 or 503.
- `GET /_fake/state` (counters and requests seen), `POST /_fake/reset`.
- a request log (method, path, whether an Authorization header was present) for assertions.
- `intercept(method, path, body)`: when set (in-process only), called on the server's thread before a
  platform request is handled; it may act meanwhile (a test doing something while the caller waits on the
  host) and may raise `Reply` to answer in the platform's place.

The `/_fake/*` routes are not part of any platform's API; they are never subject to faults or auth.
"""

import contextlib
import json
import random
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Reply(Exception):
    """Raise from a route to answer with a status and a JSON body."""

    def __init__(self, status: int, body: object = None, headers: dict | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


class FakeServer:
    """Subclasses implement `route(method, path, body, headers) -> (status, body)` and `error_body`."""

    name = "fake"

    def __init__(self, *, port: int = 0, seed: int = 0):
        self.lock = threading.RLock()
        self.seed = seed
        self.fail_rate = 0.0
        self.timeout_rate = 0.0
        self.fail_status = 503
        self.fault_sleep = 2.0
        self.retry_after: int | None = None  # seconds in a Retry-After header on injected failures
        self.timeout_applies = False  # True: a timed-out request is still carried out (its answer is lost)
        self.rng = random.Random(seed)
        self.requests: list[dict] = []
        self.faults_injected = {"fail": 0, "timeout": 0}
        self.intercept = None
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"{self.name}-fake", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    # -- faults ------------------------------------------------------------------------------------

    def faults(
        self,
        *,
        fail_rate=None,
        timeout_rate=None,
        seed=None,
        fail_status=None,
        fault_sleep=None,
        timeout_applies=None,
        retry_after=None,
    ) -> None:
        with self.lock:
            if retry_after is not None:
                self.retry_after = None if retry_after is False else int(retry_after)
            if timeout_applies is not None:
                self.timeout_applies = bool(timeout_applies)
            if fail_rate is not None:
                self.fail_rate = float(fail_rate)
            if timeout_rate is not None:
                self.timeout_rate = float(timeout_rate)
            if fail_status is not None:
                self.fail_status = int(fail_status)
            if fault_sleep is not None:
                self.fault_sleep = float(fault_sleep)
            if seed is not None:
                self.seed = int(seed)
                self.rng = random.Random(self.seed)

    def _fault(self) -> str | None:
        with self.lock:
            roll = self.rng.random()
            if roll < self.fail_rate:
                self.faults_injected["fail"] += 1
                return "fail"
            if roll < self.fail_rate + self.timeout_rate:
                self.faults_injected["timeout"] += 1
                return "timeout"
            return None

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults_injected = {"fail": 0, "timeout": 0}
            self.fail_rate = self.timeout_rate = 0.0
            self.retry_after = None
            self.rng = random.Random(self.seed)
            self.reset_state()

    # -- for subclasses ----------------------------------------------------------------------------

    def reset_state(self) -> None:
        pass

    def snapshot(self) -> dict:
        return {}

    def route(self, method: str, path: str, body, headers) -> tuple[int, object]:
        raise Reply(404, self.error_body(404, "Not found."))

    def error_body(self, status: int, detail: str) -> object:
        return {"detail": detail}

    def extra_fake_route(self, method: str, path: str, body) -> tuple[int, object] | None:
        """Fake-only setup routes of a subclass (e.g. registering model versions); None if unknown."""
        return None

    def faults_apply(self, path: str) -> bool:
        """Whether fault injection applies to a path (the platform API, not helper routes)."""
        return True

    # -- plumbing ----------------------------------------------------------------------------------

    def _fake_route(self, method: str, path: str, body) -> tuple[int, object]:
        if path == "/_fake/faults" and method == "POST":
            self.faults(**{k: body[k] for k in body if k in FAULT_KEYS})
            return 200, self._fault_settings()
        if path == "/_fake/state" and method == "GET":
            with self.lock:
                return 200, {
                    **self.snapshot(),
                    "faults": self._fault_settings(),
                    "faults_injected": dict(self.faults_injected),
                    "requests": list(self.requests),
                }
        if path == "/_fake/reset" and method == "POST":
            self.reset()
            return 200, {}
        return self.extra_fake_route(method, path, body) or (404, {"detail": "no such fake route"})

    def _fault_settings(self) -> dict:
        return {
            "fail_rate": self.fail_rate,
            "timeout_rate": self.timeout_rate,
            "fail_status": self.fail_status,
            "fault_sleep": self.fault_sleep,
            "timeout_applies": self.timeout_applies,
            "retry_after": self.retry_after,
            "seed": self.seed,
        }

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two sends: no 40 ms wait for a delayed ACK

            def log_message(self, *args):  # quiet
                pass

            def _dispatch(self, method: str) -> None:
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    self._send(400, server.error_body(400, "Request body is not valid JSON."))
                    return
                if path.startswith("/_fake/"):
                    self._send(*server._fake_route(method, path, body or {}))
                    return
                with server.lock:
                    server.requests.append(
                        {
                            "method": method,
                            "path": self.path,
                            "authorized": "Authorization" in self.headers,
                            "body": body,
                        }
                    )
                if server.intercept is not None:
                    try:
                        server.intercept(method, path, body)
                    except Reply as exc:
                        self._send(exc.status, exc.body, exc.headers)
                        return
                fault = server._fault() if server.faults_apply(path) else None
                if fault == "fail":
                    status = server.fail_status
                    wait = {} if server.retry_after is None else {"Retry-After": str(server.retry_after)}
                    self._send(status, server.error_body(status, "Injected fault: the service is unavailable."), wait)
                    return
                if fault == "timeout" and not server.timeout_applies:
                    time.sleep(server.fault_sleep)  # the caller gives up; nothing was done
                    self.close_connection = True
                    return
                try:
                    status, reply = server.route(method, path, body, self.headers)
                    headers = {}
                except Reply as exc:
                    status, reply, headers = exc.status, exc.body, exc.headers
                if fault == "timeout":  # timeout_applies: done on the server, but the answer is lost
                    time.sleep(server.fault_sleep)
                    self.close_connection = True
                    return
                self._send(status, reply, headers)

            def _send(self, status: int, body, headers: dict | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                ctype = (headers or {}).pop("Content-Type", "application/json")
                if data:
                    self.send_header("Content-Type", ctype)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_PATCH(self):
                self._dispatch("PATCH")

            def do_DELETE(self):
                self._dispatch("DELETE")

        return Handler


FAULT_KEYS = ("fail_rate", "timeout_rate", "seed", "fail_status", "fault_sleep", "timeout_applies", "retry_after")


def bearer_token(headers) -> str | None:
    """`Authorization: Bearer <t>` (current clients) or `Token <t>` (older replicate 1.x)."""
    value = headers.get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme in ("Bearer", "Token") and token:
        return token
    return None


def run_main(factory, description: str) -> None:
    """`python -m tests.fakes.<name> --port N [--token T]`: run one fake in the foreground."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    server = factory(port=args.port, token=args.token, seed=args.seed)
    print(server.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
