"""Modal apps through Modal's official CLI (`modal deploy`, `modal app history|info|rollback`).

Modal's control plane is gRPC; the supported, documented interface is the `modal` client, and this
adapter drives its command line in a subprocess (the package's entry point `modal`, found on PATH):

- deploy: write a generated app file for the release (`modal.App(app_name)` with two web functions:
  `release` answers which release it serves, `predict` calls the configured handler) and run
  `modal deploy <file> --name <app_name> --tag <tag> [-e env]`. The tag is the host revision:
  `ReleaseSpec.host_revision` if the reconciler set one, else `v{release_number}-{digest hex[:12]}`.
- idempotence: `modal app history <app> --json [-e env]`; when the latest version already carries
  the tag, nothing is deployed. When an earlier version carries it, `modal app rollback <app> vN`
  (a rollback is a new version in the history). If that new version does not show the tag (Modal
  does not document whether a rollback repeats it), the adapter deploys the generated file with the
  tag instead, so the history always says what serves.
- status: `modal app info <app> --json`: state `deployed` is ready, serving `v{version}@{app_id}`.

`host_release_id` is Modal's app version and the app's id (`v7@ap-…`): an app stopped and deployed again
is a new app whose versions start at v1 again, and two different releases must never share an id.
Credentials are `"<token id>:<token secret>"`, passed to the CLI as `MODAL_TOKEN_ID`/`MODAL_TOKEN_SECRET`
(never on the command line), in an allow-listed environment (`CLI_ENV`: none of the worker's secrets nor its
own Modal token; `MODAL_CONFIG_PATH` is os.devnull unless the worker sets it, so the worker's `~/.modal.toml`
profile does not apply). Errors: the CLI runs with `MODAL_TRACEBACK=1`, so its last stderr line names the
`modal.exception` class; NotFound/Auth/PermissionDenied/Invalid/Conflict/AlreadyExists/Execution errors and
usage errors (exit 2) are permanent, the rest (ServiceError, InternalError, ConnectionError, timeouts) retryable.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InvalidInput
from governance.hosts.base import DeployResult, HostError, HostStatus, ReleaseSpec, Serving, unique_host_release_id
from governance.hosts.config import check_fields
from governance.hosts.environment import child_env
from governance.hosts.http import check_name, config_or_host_error, host_error, pop_timeout, scrub

KIND = "modal"
CAPABILITIES = frozenset({"deploy", "rollback"})

APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # modal's check_object_name, kept conservative
ENVIRONMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TAG = re.compile(r"[A-Za-z0-9._-]{1,50}")  # modal's is_valid_tag(max_length=50)
GPU = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,31}")
HANDLER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
REQUIREMENT = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[A-Za-z0-9._,-]+\])?(?:(?:==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!_-]+)*"
)
VERSION = re.compile(r"v(\d+)")
WEB_URL = re.compile(r"https://[A-Za-z0-9.-]+--[A-Za-z0-9.-]*?-predict\.modal\.run")
EXCEPTION_LINE = re.compile(r"^(?:modal\.exception\.)?([A-Za-z_][A-Za-z0-9_]*)(?::\s?(.*))?$")

PERMANENT = {
    "NotFoundError",
    "AuthError",
    "PermissionDeniedError",
    "InvalidError",
    "ConflictError",
    "AlreadyExistsError",
    "UnimplementedError",
    "ExecutionError",
    "VersionError",
    "DeserializationError",
    "SerializationError",
    "RequestSizeError",
    "_CliUserExecutionError",
    "UsageError",
}
DEFAULT_PACKAGES = ("fastapi[standard]",)
# The CLI's environment: the common allow-list (governance.hosts.environment) plus how to reach Modal: its
# server and config file (where Modal is, not who calls), proxies and CA certificates. Not the worker's own
# Modal profile, token or environment, and none of its other secrets (other targets' tokens among them).
CLI_ENV = (
    "MODAL_SERVER_URL",
    "MODAL_CONFIG_PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    *(name for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY") for name in (proxy, proxy.lower())),
)


def validate_config(config: dict) -> dict:
    rest, timeout = pop_timeout(config, kind=KIND)
    checked = check_fields(
        rest,
        kind=KIND,
        required={"app_name": str},
        optional={"environment": str, "gpu": str, "handler": str, "requirements": list},
    )
    check_name(checked, "app_name", APP_NAME, kind=KIND, hint="Letters, digits, '.', '_' and '-', at most 64.")
    check_name(checked, "environment", ENVIRONMENT, kind=KIND, hint="A Modal environment name.")
    check_name(checked, "gpu", GPU, kind=KIND, hint="A Modal GPU type, e.g. 'T4', 'A10G' or 'H100:2'.")
    check_name(checked, "handler", HANDLER, kind=KIND, hint="'package.module:function' importable in the image.")
    requirements = checked.get("requirements", [])
    if len(requirements) > 50 or not all(isinstance(r, str) and REQUIREMENT.fullmatch(r) for r in requirements):
        hint = "A list of at most 50 pip requirement specifiers, e.g. 'scikit-learn==1.5.2'."
        raise InvalidInput(
            f"Invalid {KIND} config: config.requirements: {hint}", detail={"config.requirements": [hint]}
        )
    if timeout is not None:
        checked["timeout_seconds"] = timeout
    return checked


def resources(config: dict, credentials_ref: str) -> frozenset[str]:
    """What on the platform a target with this config controls: two targets must not share it. The Modal
    workspace is the credential's, so the same app name under another credential is another app."""
    environment = config.get("environment") or "(default environment)"
    return frozenset({f"Modal app {config['app_name']} in {environment} with {credentials_ref or 'no credential'}"})


def release_tag(spec: ReleaseSpec) -> str:
    """The Modal deployment tag that identifies a release's artifact on the host."""
    if spec.host_revision:
        if not TAG.fullmatch(spec.host_revision):
            raise HostError(
                f"host_revision {spec.host_revision!r} is not a valid Modal tag "
                "(letters, digits, '.', '_' and '-', at most 50)",
                retryable=False,
            )
        return spec.host_revision
    digest = spec.digest.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{12,}", digest) or spec.release_number < 1:
        raise HostError("release has no digest and number to tag the Modal deployment with", retryable=False)
    return f"v{spec.release_number}-{digest[:12]}"


def app_source(spec: ReleaseSpec, cfg: dict, tag: str) -> str:
    """The generated Modal app for one release. Values go in as JSON inside Python literals, never as code."""
    release = {
        "target": spec.target,
        "release_number": spec.release_number,
        "model": spec.model,
        "version_number": spec.version_number,
        "digest": spec.digest,
        "artifact_uri": spec.artifact_uri,
        "files": list(spec.files),
        "tag": tag,
        "handler": cfg.get("handler", ""),
    }
    packages = [*DEFAULT_PACKAGES, *cfg.get("requirements", [])]
    function_args = f"gpu={cfg['gpu']!r}" if cfg.get("gpu") else ""
    return f'''\
# Generated by the model governance registry for target {spec.target!r}, release {spec.release_number}
# (Modal tag {tag}). Do not edit: the registry generates and deploys this file for every release.
import importlib
import json

import modal

RELEASE = json.loads({json.dumps(release, sort_keys=True)!r})
PACKAGES = json.loads({json.dumps(packages)!r})

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*PACKAGES)
    .env({{"REGISTRY_RELEASE_TAG": RELEASE["tag"], "REGISTRY_MODEL_DIGEST": RELEASE["digest"]}})
)
app = modal.App({cfg["app_name"]!r}, image=image)


@app.function({function_args})
@modal.fastapi_endpoint(method="GET")
def release() -> dict:
    """Which registry release this deployment serves: model, version, digest, artifact and files."""
    return RELEASE


@app.function({function_args})
@modal.fastapi_endpoint(method="POST")
def predict(payload: dict) -> dict:
    """Calls the target's handler(payload, RELEASE); the handler loads RELEASE["artifact_uri"]."""
    if not RELEASE["handler"]:
        raise RuntimeError("no handler configured for this target (config.handler = 'package.module:function')")
    module, _, name = RELEASE["handler"].partition(":")
    return getattr(importlib.import_module(module), name)(payload, RELEASE)
'''


class ModalHost:
    """Host adapter for one Modal app per target (see the module docstring)."""

    capabilities = CAPABILITIES

    def __init__(self, *, executable: str = "modal", deploy_timeout: float = 900.0, call_timeout: float = 120.0):
        self.executable = executable
        self.deploy_timeout = deploy_timeout
        self.call_timeout = call_timeout

    # -- interface ---------------------------------------------------------------------------------

    def deploy(self, spec: ReleaseSpec) -> DeployResult:
        cfg = config_or_host_error(validate_config, spec.config)
        cli = self._env(spec.credentials)
        tag = release_tag(spec)
        history = self._history(cfg, cli)
        earlier = next((row for row in history if row.get("tag") == tag), None)
        if earlier is not None and earlier is history[0]:
            try:
                info = self._info(cfg, cli)
            except _Missing:
                info = None
            if info is not None and _status(cfg, info).state == "ready":
                return DeployResult(host_release_id=_release_id(history[0]["version"], info), ready=True)
            earlier = None  # the app was stopped: deploy it afresh (a rollback needs a deployed app)
        if earlier is not None:
            try:
                self._run(["app", "rollback", cfg["app_name"], earlier["version"]], cfg, cli, self.call_timeout)
            except HostError as exc:
                if exc.retryable:
                    raise
                # e.g. that version may no longer be rolled back to: a fresh deploy reaches the same state
            else:
                history = self._history(cfg, cli)
                if history and history[0].get("tag") == tag:
                    return DeployResult(host_release_id=self._deployed_id(cfg, cli, history[0]["version"]), ready=True)
        with tempfile.TemporaryDirectory(prefix="registry-modal-") as tmp:
            path = Path(tmp) / f"{cfg['app_name'].replace('-', '_').replace('.', '_')}_app.py"
            path.write_text(app_source(spec, cfg, tag))
            out = self._run(
                ["deploy", str(path), "--name", cfg["app_name"], "--tag", tag], cfg, cli, self.deploy_timeout, cwd=tmp
            )
        history = self._history(cfg, cli)
        if not history or history[0].get("tag") != tag:
            latest = history[0] if history else {}
            raise HostError(
                f"modal deploy finished but the latest version of {cfg['app_name']} is "
                f"{latest.get('version', 'none')} tagged {latest.get('tag') or '(none)'}, not {tag}",
                retryable=True,
            )
        url = WEB_URL.search(out)
        host_release_id = self._deployed_id(cfg, cli, history[0]["version"])
        return DeployResult(host_release_id=host_release_id, endpoint_url=url.group(0) if url else "", ready=True)

    def status(self, config: dict, credentials: str | None) -> HostStatus:
        cfg = config_or_host_error(validate_config, config)
        try:
            info = self._info(cfg, self._env(credentials))
        except _Missing as exc:
            return HostStatus(state="absent", detail=str(exc))
        return _status(cfg, info)

    def set_traffic(self, config: dict, credentials: str | None, split: dict[int, int]) -> None:
        raise HostError("a Modal app serves one version at a time; no traffic split", retryable=False)

    # -- the CLI -----------------------------------------------------------------------------------

    def _env(self, credentials: str | None) -> "_Cli":
        token_id, sep, token_secret = (credentials or "").partition(":")
        if not sep or not token_id.strip() or not token_secret.strip():
            raise HostError(
                "no Modal token: the target's credential must be '<token id>:<token secret>'", retryable=False
            )
        env = child_env(CLI_ENV)
        # Without it the CLI reads ~/.modal.toml, the worker's own profile (its environment, server, token), which
        # would apply to the target's calls: an `environment = "scratch"` there sends a target without one there.
        env["MODAL_CONFIG_PATH"] = env.get("MODAL_CONFIG_PATH") or os.devnull
        env.update(
            MODAL_TOKEN_ID=token_id.strip(),
            MODAL_TOKEN_SECRET=token_secret.strip(),
            MODAL_TRACEBACK="1",  # the last stderr line then names the exception class
            COLUMNS="400",  # no wrapped URLs or error lines
            NO_COLOR="1",
            PYTHONIOENCODING="utf-8",
        )
        return _Cli(env=env, secret=credentials)

    def _history(self, cfg: dict, cli: "_Cli") -> list[dict]:
        """Newest first: [{"version": "v3", "tag": "…", …}]; [] when the app was never deployed."""
        try:
            rows = self._json(["app", "history", cfg["app_name"], "--json"], cfg, cli)
        except _Missing:
            return []
        if not isinstance(rows, list) or not all(
            isinstance(row, dict) and VERSION.fullmatch(str(row.get("version"))) for row in rows
        ):
            raise HostError("modal app history --json printed rows without versions", retryable=True)
        return sorted(rows, key=lambda row: int(row["version"][1:]), reverse=True)

    def _info(self, cfg: dict, cli: "_Cli") -> dict:
        """`modal app info <app> --json`; _Missing when there is no such app."""
        info = self._json(["app", "info", cfg["app_name"], "--json"], cfg, cli)
        if not isinstance(info, dict):
            raise HostError("modal app info --json printed no object", retryable=True)
        return info

    def _deployed_id(self, cfg: dict, cli: "_Cli", version: str) -> str:
        """The host release id of `version` ("v3", the newest in the history) of the app just deployed."""
        try:
            return _release_id(version, self._info(cfg, cli))
        except _Missing as exc:
            raise HostError(
                f"modal app info finds no app {cfg['app_name']} after deploying it", retryable=True
            ) from exc

    def _json(self, args: list[str], cfg: dict, cli: "_Cli"):
        out = self._run(args, cfg, cli, self.call_timeout, missing_ok=True)
        try:
            return json.loads(out)
        except ValueError as exc:
            raise HostError(
                f"modal {' '.join(args[:2])} --json printed something that is not JSON", retryable=True
            ) from exc

    def _run(
        self, args: list[str], cfg: dict, cli: "_Cli", timeout: float, *, cwd: str | None = None, missing_ok=False
    ) -> str:
        what = f"modal {' '.join(args[:2])}"
        # PATH first (an operator's choice, and how tests substitute the CLI), then the interpreter's own
        # bin directory: a worker started as .venv/bin/celery finds the modal CLI installed beside it.
        exe = shutil.which(self.executable, path=cli.env.get("PATH")) or shutil.which(
            self.executable, path=str(Path(sys.executable).parent)
        )
        if exe is None:
            raise HostError(f"the modal CLI ({self.executable}) is not installed on this worker", retryable=False)
        command = [exe, *args]
        if cfg.get("environment"):
            command += ["-e", cfg["environment"]]
        timeout = cfg.get("timeout_seconds", timeout)
        try:
            done = subprocess.run(
                command, env=cli.env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise host_error(f"{what} timed out after {timeout:g}s", retryable=True, secret=cli.secret) from exc
        except OSError as exc:
            raise host_error(f"could not run the modal CLI: {exc}", retryable=True, secret=cli.secret) from exc
        if done.returncode == 0:
            return done.stdout
        if done.returncode == 2:  # click usage error: "Usage: …", "Try …", "Error: …"
            errors = [line for line in done.stderr.splitlines() if line.strip().startswith("Error:")]
            name, message = "UsageError", (errors[-1].strip() if errors else done.stderr.strip()[-500:])
        else:
            name, message = _exception(done.stderr)
        if missing_ok and name == "NotFoundError" and "No App with name" in message:
            raise _Missing(scrub(message, cli.secret))
        text = f"{what} failed ({name or f'exit {done.returncode}'}): {message or 'no message'}"
        raise host_error(text, retryable=name not in PERMANENT, secret=cli.secret)


def _release_id(version: str, info: dict) -> str:
    """`version` of the app `info` describes (`modal app info --json`), qualified by the app's id."""
    app_id = info.get("app_id")
    return unique_host_release_id(version, app_id) if app_id else version


def _status(cfg: dict, info: dict) -> HostStatus:
    """What `modal app info --json` says serves."""
    life = info.get("lifecycle") or {}
    state, version = life.get("state") or "unknown", life.get("version")
    detail = f"{cfg['app_name']} ({info.get('app_id', '?')}) {state}"
    if version:
        detail += f" at v{version}, deployed {life.get('deployed_at')} by {life.get('deployed_by')}"
    if state == "deployed" and version:
        return HostStatus(
            state="ready",
            serving=(Serving(release_number=0, host_release_id=_release_id(f"v{version}", info), traffic_percent=100),),
            detail=detail,
        )
    if state.startswith("initializing"):
        return HostStatus(state="deploying", detail=detail)
    if state.startswith(("stopped", "stopping", "disabled")):
        return HostStatus(state="absent", detail=detail)
    return HostStatus(state="failed", detail=detail)


@dataclass(frozen=True)
class _Cli:
    env: dict = field(repr=False)
    secret: str | None = field(repr=False)


BORDER = "│╭╮╰╯─ "


def _exception(stderr: str) -> tuple[str, str]:
    """The exception class and message the CLI printed last (MODAL_TRACEBACK=1), else its error text."""
    lines = [line.rstrip() for line in (stderr or "").splitlines() if line.strip()]
    box_start = max((i for i, line in enumerate(lines) if line.startswith("╭")), default=-1)
    box_end = max((i for i, line in enumerate(lines) if line.startswith("╰")), default=-1)
    tail = lines[box_end + 1 :]
    for i, line in enumerate(tail):
        match = EXCEPTION_LINE.match(line)
        if match and match.group(2) is not None:
            message = " ".join([match.group(2), *tail[i + 1 :]]).strip()
            return match.group(1), message[:1000]
    inside = lines[box_start + 1 : box_end] if 0 <= box_start < box_end else lines[-5:]  # an error panel
    text = " ".join(line.strip(BORDER) for line in inside).strip()
    return "", text.removeprefix("Error: ")[:1000]


class _Missing(Exception):
    """The app does not exist (yet)."""
