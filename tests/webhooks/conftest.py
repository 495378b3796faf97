"""Webhook test helpers: a real HTTP receiver on localhost and a small registry/governance world."""

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from governance import services as governance_services
from registry import services as registry_services


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST. `script[path]` is a list of status codes answered in turn (then 200)."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, predicate, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                hits = [r for r in self.requests if predicate(r)]
            if hits:
                return hits
            time.sleep(0.1)
        return []


@pytest.fixture
def receiver():
    receiver_ref: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            rec = receiver_ref["r"]
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with rec.lock:
                rec.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                )
                queue = rec.script.get(self.path, [])
                status = queue.pop(0) if queue else 200
            payload = b"ok" if status < 300 else b"receiver says no"
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(server=server)
    receiver_ref["r"] = receiver
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


def manifest(seed: str) -> dict:
    data = seed.encode()
    return {"files": [{"path": "model.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}


def register(actor, model, seed: str):
    content = registry_services.VersionContent(manifest=manifest(seed), artifact_uri="s3://bucket/models/x")
    version, _ = registry_services.version_register(actor=actor, model=model, content=content)
    return version


@pytest.fixture
def world(personas):
    """acme/churn (owned by `owner`), target prod needing one approval from `reviewers`."""
    admin, owner = personas["admin"].user, personas["owner"].user
    model = registry_services.model_create(actor=owner, namespace="acme", name="churn")
    target = governance_services.target_create(
        actor=admin,
        name="prod",
        kind="self_hosted",
        stage="production",
        config={},
        policy={"approvals_required": 1, "approver_groups": ["reviewers"]},
    )
    return {"model": model, "target": target, **personas}
