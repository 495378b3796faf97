"""The self-hosted demo of `scripts/dev.py up`: a tiny model registered, approved and served through HAProxy.

`manage.py demo_haproxy` runs a real HAProxy (Debian `haproxy`) in the foreground with the config of
`HAProxyFleet`: traffic on 127.0.0.1:8080, runtime API on 127.0.0.1:9999 (environment variables
DEMO_HAPROXY_PORT and DEMO_HAPROXY_ADMIN_PORT), files under DATA_DIR/haproxy. When it stops it also
stops the model servers behind it.

`manage.py demo_deploy` then does, through the same services the API and UI call, as the demo users:
the owner creates model demo/linear and registers versions 1 and 2 (a y = x·W + b ONNX model whose
bias tells them apart, uploaded into the registry's blob store, with metrics and a model card);
admin creates the self-hosted target `local` with a policy (one approval from `reviewers`, not the
requester; card sections and a metric gate); the owner requests promotion of version 1 and
`reviewer` approves; once the Celery worker has made release 1 live, version 2 goes the same way.
Version 2 then serves and release 1 is the one a rollback returns to. Every step is audited.
Re-running it changes nothing that exists; it only asks the reconciler to converge the target
again (after a restart, HAProxy's slots are empty until it does).

DEBUG only: the management commands refuse to run otherwise.
"""

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from accounts import roles
from core.errors import DomainError
from governance import deployment, deployment_tasks, services
from governance.choices import PromotionState, ReleaseState
from governance.hosts.base import HostError
from governance.hosts.demo_model import MODEL_FILE, linear_model_bytes
from governance.hosts.haproxy import HAProxyFleet
from governance.models import DeploymentTarget, PromotionRequest, Release
from registry import services as registry_services
from registry.models import ModelVersion, RegisteredModel

NAMESPACE, NAME = "demo", "linear"
MODEL = f"{NAMESPACE}/{NAME}"
TARGET = "local"
WEIGHTS = (0.5, 0.25, 1.0)
BIAS = {1: 10.0, 2: 20.0}  # version -> bias: the answer to SAMPLE is 14.0 from version 1, 24.0 from version 2
METRICS = {1: {"mae": 0.42, "rmse": 0.55}, 2: {"mae": 0.31, "rmse": 0.40}}
SAMPLE = (1.0, 2.0, 3.0)
POLICY = {
    "approvals_required": 1,
    "approver_groups": [roles.REVIEWERS],
    "requester_can_approve": False,
    "required_card_sections": ["intended_use", "training_data"],
    "metric_gates": [{"metric": "mae", "op": "<=", "threshold": 0.5}],
}
DEFAULT_PORT, DEFAULT_ADMIN_PORT = 8080, 9999


class DemoError(Exception):
    """The demo cannot go on; the message says what to do."""


def expected_output(version: int) -> float:
    return sum(x * w for x, w in zip(SAMPLE, WEIGHTS, strict=True)) + BIAS[version]


def infer_body() -> dict:
    return {"inputs": [{"name": "input", "shape": [1, len(SAMPLE)], "datatype": "FP32", "data": list(SAMPLE)}]}


def _port(variable: str, default: int) -> int:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    if not raw.isdecimal() or not 0 < int(raw) < 65536:
        raise DemoError(f"{variable}={raw!r} is not a TCP port")
    return int(raw)


def fleet() -> HAProxyFleet:
    """The demo HAProxy: DATA_DIR/haproxy, ports from DEMO_HAPROXY_PORT / DEMO_HAPROXY_ADMIN_PORT."""
    return HAProxyFleet(
        Path(settings.DATA_DIR) / "haproxy",
        port=_port("DEMO_HAPROXY_PORT", DEFAULT_PORT),
        admin_port=_port("DEMO_HAPROXY_ADMIN_PORT", DEFAULT_ADMIN_PORT),
        backend="models",
    )


def target_config(demo_fleet: HAProxyFleet | None = None) -> dict:
    demo_fleet = demo_fleet or fleet()
    state_dir = Path(settings.DATA_DIR) / "self-hosted" / TARGET
    return demo_fleet.host_config(state_dir=str(state_dir.resolve()), model_name=NAME)


def demo_targets(demo_fleet: HAProxyFleet) -> list[DeploymentTarget]:
    """Self-hosted targets behind this HAProxy (the demo's `local`, and any the user added the same way)."""
    return [
        t
        for t in DeploymentTarget.objects.filter(kind="self_hosted").order_by("pk")
        if t.config.get("haproxy_admin") == demo_fleet.admin_address
    ]


# --- the registry side ---------------------------------------------------------------------------


def _user(username: str):
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise DemoError(f"no demo user '{username}': run `manage.py seed_demo` first")
    return user


def _card(version: int) -> dict:
    return {
        "title": f"Model Card for {MODEL} version {version}",
        "model_details": (
            f"A linear model y = x·W + b with W = {list(WEIGHTS)} and b = {BIAS[version]}, stored as ONNX "
            "(opset 13). Written by `governance.hosts.demo_model` for the quickstart."
        ),
        "intended_use": "Demonstrating approvals, deployment and rollback. Not for any real decision.",
        "training_data": "None: the weights are set by hand, so no data was used.",
        "metrics": "Mean absolute error and RMSE against the hand-set reference line.",
        "evaluation_data": "Synthetic points on the reference line.",
        "caveats_and_recommendations": f"Answers {expected_output(version)} for the input {list(SAMPLE)}.",
        "governance": {
            "risk_class": "minimal",
            "intended_purpose": "Quickstart demonstration.",
            "human_oversight": "A reviewer approves every promotion.",
            "license": "apache-2.0",
        },
    }


def ensure_model(owner) -> RegisteredModel:
    model = RegisteredModel.objects.filter(namespace=NAMESPACE, name=NAME).first()
    if model is None:
        model = registry_services.model_create(
            actor=owner,
            namespace=NAMESPACE,
            name=NAME,
            description="The quickstart's tiny ONNX model (y = x·W + b); each version has its own bias.",
            owner_group=roles.MODEL_OWNERS,
        )
    return model


def ensure_version(owner, model: RegisteredModel, number: int) -> ModelVersion:
    """Version `number` of demo/linear: uploaded into the blob store, registered, with a card."""
    version = ModelVersion.objects.filter(model=model, number=number).first()
    if version is None:
        data = linear_model_bytes(WEIGHTS, BIAS[number], name=NAME)
        sha256 = hashlib.sha256(data).hexdigest()
        registry_services.blob_upload(actor=owner, model=model, chunks=[data], sha256=sha256, size=len(data))
        version, _ = registry_services.version_register(
            actor=owner,
            model=model,
            content=registry_services.VersionContent(
                manifest={"files": [{"path": MODEL_FILE, "size": len(data), "sha256": sha256}]},
                framework="onnx",
                task="regression",
                params={"weights": list(WEIGHTS), "bias": BIAS[number]},
                metrics=METRICS[number],
                source={"repository": "governance/hosts/demo_model.py"},
            ),
            tags={"demo": "quickstart"},
        )
    registry_services.card_revision_add(actor=owner, version=version, content=_card(number))
    return version


# --- the governance side -------------------------------------------------------------------------


def ensure_target(admin, config: dict) -> DeploymentTarget:
    target = DeploymentTarget.objects.filter(name=TARGET).first()
    if target is None:
        return services.target_create(
            actor=admin,
            name=TARGET,
            kind="self_hosted",
            stage="demo",
            config=config,
            policy=POLICY,
            description="Model servers on this machine behind the demo HAProxy (scripts/dev.py up).",
        )
    if target.kind != "self_hosted" or target.config.get("haproxy_admin") != config["haproxy_admin"]:
        raise DemoError(
            f"target '{TARGET}' exists with config {target.config}, which is not the demo HAProxy at "
            f"{config['haproxy_admin']}: start with the ports it was created with (DEMO_HAPROXY_PORT, "
            "DEMO_HAPROXY_ADMIN_PORT) or use a fresh DATA_DIR"
        )
    return target


def ensure_promoted(version: ModelVersion, target: DeploymentTarget, *, owner, reviewer, say) -> Release | None:
    """Request (as owner) and approve (as reviewer) the promotion, unless the version was released already.

    Returns the release the approval created, or the existing one if it is still on its way to live;
    None when the version was released before and has nothing left to wait for.
    """
    existing = Release.objects.filter(target=target, version=version).order_by("-number").first()
    if existing is not None:
        target.refresh_from_db()
        on_its_way = existing.state in (ReleaseState.PENDING, ReleaseState.DEPLOYING)
        if target.desired_release_id == existing.pk and on_its_way:
            return existing
        return None
    request = PromotionRequest.objects.filter(version=version, target=target, state=PromotionState.PENDING).first()
    if request is None:
        request = services.promotion_request(
            actor=owner, version=version, target=target, reason=f"quickstart: serve version {version.number}"
        )
        say(f"{owner.username} requested promotion #{request.pk}: {MODEL} v{version.number} -> {target.name}")
    services.promotion_approve(actor=reviewer, request_id=request.pk, comment="Card and metrics checked (demo).")
    say(f"{reviewer.username} approved promotion #{request.pk}; the worker deploys it")
    return Release.objects.get(promotion_id=request.pk)


def wait_live(release: Release, timeout: float, say) -> Release:
    """Poll the database until the Celery worker has made the release live (or failed it)."""
    deadline = time.monotonic() + timeout
    while True:
        release.refresh_from_db()
        if release.state == ReleaseState.LIVE:
            say(f"release {release.number} ({MODEL} v{release.version.number}) is live at {release.endpoint_url}")
            return release
        if release.state not in (ReleaseState.PENDING, ReleaseState.DEPLOYING):
            raise DemoError(f"release {release.number} ended {release.state}: {release.reason}")
        if time.monotonic() > deadline:
            raise DemoError(
                f"release {release.number} is still {release.state} after {timeout:.0f}s: is the Celery worker "
                "running (`celery -A config worker`) and the demo HAProxy (`manage.py demo_haproxy`)?"
            )
        time.sleep(0.3)


@dataclass(frozen=True)
class DemoState:
    target: str
    endpoint: str  # http://<listen>/v2/models/linear
    serving_version: int | None  # the version of the target's desired release
    rollback_version: int | None  # the version a rollback without a release number returns to

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "endpoint": self.endpoint,
            "serving_version": self.serving_version,
            "rollback_version": self.rollback_version,
        }


def deploy(*, timeout: float = 180.0, say=print) -> DemoState:
    """Everything above, in order; waits for each release to go live. Idempotent."""
    owner, reviewer, admin = _user("owner"), _user("reviewer"), _user("admin")
    demo_fleet = fleet()
    config = target_config(demo_fleet)
    try:
        demo_fleet.api().servers_state(demo_fleet.backend)
    except HostError as exc:
        raise DemoError(f"the demo HAProxy does not answer ({exc}): start `manage.py demo_haproxy` first") from exc
    try:
        model = ensure_model(owner)
        versions = [ensure_version(owner, model, number) for number in sorted(BIAS)]
        target = ensure_target(admin, config)
        promoted = False
        for version in versions:
            release = ensure_promoted(version, target, owner=owner, reviewer=reviewer, say=say)
            if release is not None:
                promoted = True
                wait_live(release, timeout, say)
    except DomainError as exc:
        raise DemoError(exc.message) from exc
    if not promoted:
        # A restart: HAProxy came up with empty slots. Converge now rather than at the next periodic reconcile.
        deployment_tasks.reconcile_target.delay(target.pk)
        say(f"{MODEL} was promoted before; asked the worker to converge target {target.name}")
    target.refresh_from_db()
    desired = target.desired_release
    previous = deployment.previous_good(target)
    return DemoState(
        target=target.name,
        endpoint=f"{demo_fleet.url}/v2/models/{NAME}",
        serving_version=desired.version.number if desired else None,
        rollback_version=previous.version.number if previous else None,
    )
