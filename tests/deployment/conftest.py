"""The deployment engine end to end: gunicorn + a private Redis + a Celery worker (and beat) + PostgreSQL.

The test process only talks HTTP to the web server and reads the database; approvals enqueue reconciles
from the web process, the worker converges the hosts. Hosts are a real HAProxy with real model servers
(self-hosted) or the local Replicate server driven through the official client.
"""

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from accounts import roles, scopes, services
from governance.hosts.self_hosted import SelfHostedHost
from tests import processes


@dataclass
class Stack:
    url: str
    env: dict
    workdir: Path
    redis: processes.Redis
    tokens: dict[str, str] = field(repr=False)
    worker: object = None
    beat: object = None
    web: object = None
    worker_starts: int = 0

    def api(self, persona: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.tokens[persona]}"},
            timeout=30,
            event_hooks={"response": [self._no_server_error]},
        )

    def _no_server_error(self, response: httpx.Response) -> None:
        """A 5xx is never expected here: fail with the server's own log, while the log still exists."""
        if response.status_code >= 500:
            response.read()
            raise AssertionError(
                f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}\n"
                f"{processes.tail(self.workdir / 'web.log', 8000)}"
            )

    def start_worker(self, pool: str = "solo") -> None:
        self.worker_starts += 1
        self.worker = processes.start_worker(
            self.env, self.workdir / "worker.log", f"deploy-{self.redis.port}-{self.worker_starts}@%h", pool=pool
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{processes.tail(self.workdir / name)}" for name in ("worker.log", "beat.log", "web.log")
        )


@pytest.fixture
def users(transactional_db, django_user_model):
    """admin, owner (requests promotions), reviewer (approves): committed, each with a full-scope token."""
    groups = roles.ensure_roles()
    tokens = {}
    for name, group in (("admin", None), ("owner", roles.MODEL_OWNERS), ("reviewer", roles.REVIEWERS)):
        user = django_user_model.objects.create_user(
            username=name, password=f"pw-{name}-123456", is_superuser=name == "admin", is_staff=name == "admin"
        )
        if group:
            user.groups.add(groups[group])
        tokens[name] = services.token_create(actor="test", user=user, name="e2e", scopes=list(scopes.ALL)).plaintext
    return tokens


def request_promotion(owner, admin, *, host_revision: str, **target) -> int:
    """Through the API (stack.api clients): acme/churn v1 (files elsewhere, tagged with its `host_revision`), the
    target (`name`, `kind`, `config`, `credentials_ref`; one reviewer approves) and v1's promotion request to it,
    whose id is returned."""
    assert owner.post("/models/", json={"namespace": "acme", "name": "churn"}).status_code == 201
    registered = owner.post(
        "/models/acme/churn/versions/",
        json={
            "artifact_uri": "s3://acme-models/churn/1",
            "manifest": {"files": [{"path": "model.bin", "size": 1, "sha256": "1" * 64}]},
            "tags": {"host_revision": host_revision},
        },
    )
    assert registered.status_code == 201, registered.text
    policy = {"approvals_required": 1, "approver_groups": ["reviewers"]}
    created = admin.post("/targets/", json={**target, "stage": "production", "policy": policy})
    assert created.status_code == 201, created.text
    promotion = owner.post("/promotions/", json={"model": "acme/churn", "version": 1, "target": target["name"]})
    assert promotion.status_code == 201, promotion.text
    return promotion.json()["id"]


def make_stack(users, tmp_path: Path, *, beat: bool = True, **settings_env: str) -> Stack:
    processes.require_postgresql()
    redis = processes.Redis(processes.free_port(), tmp_path / "redis.log")
    redis.start()
    env = processes.service_env(
        redis.url,
        DATA_DIR=str(tmp_path / "data"),
        RECONCILE_INTERVAL_SECONDS="2",
        RECONCILE_LEASE_SECONDS="6",
        WEBHOOK_DISPATCH_INTERVAL_SECONDS="3600",  # no webhook endpoints here; keep beat quiet
        **settings_env,
    )
    port = processes.free_port()
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=tmp_path, redis=redis, tokens=users)
    stack.web = processes.start_web(env, tmp_path / "web.log", port)
    stack.start_worker()
    stack.beat = processes.start_beat(env, tmp_path) if beat else None
    return stack


def stop_stack(stack: Stack, host_config: dict | None = None) -> None:
    """Beat and the worker first, then the model servers the worker started (`host_config`'s), then the rest:
    a reconcile still running during the shutdown could otherwise start a server that outlives the test."""
    for proc in (stack.beat, stack.worker):
        if proc is not None:
            processes.stop(proc)
    if host_config is not None:
        with contextlib.suppress(Exception):
            SelfHostedHost().shutdown(host_config)
    if stack.web is not None:
        processes.stop(stack.web)
    stack.redis.stop()


@pytest.fixture
def stack(users, tmp_path, selfhost_fleet):
    stack = make_stack(users, tmp_path)
    config = selfhost_fleet.host_config(state_dir=str(tmp_path / "serving"), ready_timeout=60)
    try:
        yield stack, config
    finally:
        stop_stack(stack, config)
