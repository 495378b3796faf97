"""Replicate deployments through the official `replicate` client.

Wire contract (replicate-python 1.0.x): `GET /v1/deployments/{owner}/{name}`, `POST /v1/deployments`
`{name, model, version, hardware, min_instances, max_instances}`, `PATCH /v1/deployments/{owner}/{name}`
with only the fields that change. Every create/update makes a new deployment release
(`current_release.number`); there is no release history or rollback endpoint, so a rollback is an
update back to the earlier version (a new, higher release number) and the registry keeps the history.

The artifact pointer is `ReleaseSpec.host_revision`: the Replicate version id, as `owner/model:<64 hex>`
or the bare 64-hex hash. `host_release_id` is the deployment's release number and the release's `created_at`
(`"3@2024-02-15T16:32:57.018467Z"`): the number alone starts at 1 again when the deployment is deleted and
created anew, and two different releases must never share an id.
"""

import re

import httpx
import replicate
from replicate.client import RetryTransport
from replicate.exceptions import ReplicateError

from core.errors import InvalidInput
from governance.hosts.base import DeployResult, HostError, HostStatus, ReleaseSpec, Serving, unique_host_release_id
from governance.hosts.config import check_fields
from governance.hosts.http import (
    DEFAULT_TIMEOUT,
    canonical_url,
    check_base_url,
    check_name,
    check_range,
    config_or_host_error,
    host_error,
    pop_timeout,
    retryable_status,
)

KIND = "replicate"
CAPABILITIES = frozenset({"deploy", "rollback"})

DEFAULT_BASE_URL = "https://api.replicate.com"
DEFAULTS = {"hardware": "cpu", "min_instances": 0, "max_instances": 1}
NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,98}[a-z0-9])?")
MODEL = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,98}[a-z0-9])?/[a-z0-9](?:[a-z0-9._-]{0,98}[a-z0-9])?")
HARDWARE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
VERSION = re.compile(r"(?:(?P<model>[^:\s]+):)?(?P<hash>[0-9a-f]{64})")
NAME_HINT = "Lowercase letters, digits, '.', '_' and '-' (Replicate account/deployment names)."


def validate_config(config: dict) -> dict:
    rest, timeout = pop_timeout(config, kind=KIND)
    checked = check_fields(
        rest,
        kind=KIND,
        required={"owner": str, "deployment": str, "model": str},
        optional={"hardware": str, "min_instances": int, "max_instances": int, "base_url": str},
    )
    check_name(checked, "owner", NAME, kind=KIND, hint=NAME_HINT)
    check_name(checked, "deployment", NAME, kind=KIND, hint=NAME_HINT)
    check_name(checked, "model", MODEL, kind=KIND, hint="Must be 'owner/name' (the Replicate model).")
    check_name(checked, "hardware", HARDWARE, kind=KIND, hint="A Replicate hardware SKU, e.g. 'cpu' or 'gpu-t4'.")
    check_range(checked, "min_instances", 0, 1000, kind=KIND)
    check_range(checked, "max_instances", 1, 1000, kind=KIND)
    if "max_instances" in checked and checked.get("min_instances", 0) > checked["max_instances"]:
        hint = "Must not exceed max_instances."
        raise InvalidInput(
            f"Invalid {KIND} config: config.min_instances: {hint}", detail={"config.min_instances": [hint]}
        )
    check_base_url(checked, "base_url", kind=KIND)
    if timeout is not None:
        checked["timeout_seconds"] = timeout
    return checked


def resources(config: dict, credentials_ref: str) -> frozenset[str]:
    """What on the platform a target with this config controls: two targets must not share it."""
    base = canonical_url(config.get("base_url", DEFAULT_BASE_URL))  # one service, one key however spelled
    return frozenset({f"Replicate deployment {config['owner']}/{config['deployment']} at {base}"})


def scaling(cfg: dict) -> dict:
    """Hardware and instance bounds the deployment should run with (defaults fill what config omits)."""
    wanted = {key: cfg.get(key, default) for key, default in DEFAULTS.items()}
    if "max_instances" not in cfg:
        wanted["max_instances"] = max(wanted["max_instances"], wanted["min_instances"])
    return wanted


def release_id(release) -> str:
    """The host release id of a deployment release: its number qualified by when it was made."""
    return unique_host_release_id(str(release.number), release.created_at)


class ReplicateHost:
    """Host adapter for one Replicate deployment per target (see the module docstring)."""

    capabilities = CAPABILITIES

    def __init__(self, *, attempts: int = 2, max_backoff: float = 2.0):
        # The client's own transport retries 429/503/504 on GET/PUT/DELETE up to 10 times with up to 60 s
        # waits. The reconciler owns the retry policy (bounded, with backoff and jitter), so the client gets
        # a short leash: `attempts` tries in all, waits capped at `max_backoff` seconds.
        self.attempts = attempts
        self.max_backoff = max_backoff

    # -- interface ---------------------------------------------------------------------------------

    def deploy(self, spec: ReleaseSpec) -> DeployResult:
        cfg = config_or_host_error(validate_config, spec.config)
        token = spec.credentials
        model, version = self._version(spec, cfg)
        wanted = scaling(cfg)
        with self._call(cfg, token) as client:
            deployment = self._get(client, cfg, token)
            if deployment is None:
                deployment = self._create(client, cfg, token, model, version, wanted)
            else:
                release = deployment.current_release
                if release is not None and release.model != model:
                    raise HostError(
                        f"Replicate deployment {cfg['owner']}/{cfg['deployment']} serves model {release.model}, "
                        f"not {model}; a deployment cannot change model: use another deployment name",
                        retryable=False,
                    )
                changes = self._changes(release, version, wanted)
                if changes:
                    deployment = self._guard(
                        token,
                        lambda: client.deployments.update(cfg["owner"], cfg["deployment"], **changes),
                    )
        release = deployment.current_release
        if release is None or release.version != version:
            raise HostError(
                f"Replicate answered but deployment {cfg['owner']}/{cfg['deployment']} does not serve "
                f"version {version[:12]}…",
                retryable=True,
            )
        return DeployResult(host_release_id=release_id(release), endpoint_url=self._endpoint(cfg), ready=True)

    def status(self, config: dict, credentials: str | None) -> HostStatus:
        cfg = config_or_host_error(validate_config, config)
        with self._call(cfg, credentials) as client:
            deployment = self._get(client, cfg, credentials)
        if deployment is None:
            return HostStatus(state="absent", detail=f"no Replicate deployment {cfg['owner']}/{cfg['deployment']}")
        release = deployment.current_release
        if release is None:
            return HostStatus(state="deploying", detail="the deployment has no current release yet")
        return HostStatus(
            state="ready",
            serving=(Serving(release_number=0, host_release_id=release_id(release), traffic_percent=100),),
            endpoint_url=self._endpoint(cfg),
            detail=(
                f"release {release.number}: {release.model}:{release.version} on {release.configuration.hardware} "
                f"({release.configuration.min_instances}-{release.configuration.max_instances} instances)"
            ),
        )

    def set_traffic(self, config: dict, credentials: str | None, split: dict[int, int]) -> None:
        raise HostError("Replicate deployments serve one release at a time; no traffic split", retryable=False)

    # -- helpers -----------------------------------------------------------------------------------

    def _version(self, spec: ReleaseSpec, cfg: dict) -> tuple[str, str]:
        match = VERSION.fullmatch(spec.host_revision or "")
        if not match:
            raise HostError(
                "release has no Replicate version id: set host_revision to 'owner/model:<64 hex>' or the hash",
                retryable=False,
            )
        model = match.group("model") or cfg["model"]
        if model != cfg["model"]:
            raise HostError(
                f"version {spec.host_revision} belongs to model {model}, but the target deploys {cfg['model']}",
                retryable=False,
            )
        return model, match.group("hash")

    @staticmethod
    def _changes(release, version: str, wanted: dict) -> dict:
        if release is None:
            return {"version": version, **wanted}
        changes = {} if release.version == version else {"version": version}
        current = release.configuration
        for key, value in wanted.items():
            if getattr(current, key) != value:
                changes[key] = value
        return changes

    def _endpoint(self, cfg: dict) -> str:
        base = cfg.get("base_url", DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/v1/deployments/{cfg['owner']}/{cfg['deployment']}/predictions"

    def _call(self, cfg: dict, token: str | None) -> "_Client":
        if not token:
            raise HostError("no Replicate API token: set the target's credentials_ref", retryable=False)
        seconds = cfg.get("timeout_seconds", DEFAULT_TIMEOUT)
        client = replicate.Client(
            api_token=token,
            base_url=cfg.get("base_url", DEFAULT_BASE_URL),
            timeout=httpx.Timeout(seconds, connect=min(seconds, 10.0)),
        )
        transport = getattr(client._client, "_transport", None)  # replicate 1.0.x wraps ours in RetryTransport
        if isinstance(transport, RetryTransport):
            transport.max_attempts = max(1, self.attempts)
            transport.max_backoff_wait = self.max_backoff
            # max_backoff_wait caps only a date in Retry-After: a number ("Retry-After: 20") is slept in full,
            # which holds the worker past timeout_seconds. Cap every wait.
            computed = transport._calculate_sleep
            transport._calculate_sleep = lambda attempts, headers: min(computed(attempts, headers), self.max_backoff)
        return _Client(client)

    def _get(self, client, cfg: dict, token: str | None):
        try:
            return self._guard(token, lambda: client.deployments.get(f"{cfg['owner']}/{cfg['deployment']}"), expect=404)
        except _Expected:
            return None

    def _create(self, client, cfg: dict, token: str | None, model: str, version: str, wanted: dict):
        # POST /v1/deployments creates under the token's account, whatever `owner` says: ask first, or a
        # personal token for an organization's target leaves a running (billed) deployment on the wrong account.
        account = self._guard(token, lambda: client.accounts.current())
        if account.username != cfg["owner"]:
            raise HostError(
                f"the Replicate token belongs to {account.username!r}, not {cfg['owner']!r}, and a deployment is "
                "created under the token's account: fix the target's owner or credentials",
                retryable=False,
            )
        try:
            return self._guard(
                token,
                lambda: client.deployments.create(name=cfg["deployment"], model=model, version=version, **wanted),
                expect=409,
            )
        except _Expected:  # created concurrently: converge it like an existing one
            deployment = self._guard(token, lambda: client.deployments.get(f"{cfg['owner']}/{cfg['deployment']}"))
            changes = self._changes(deployment.current_release, version, wanted)
            if changes:
                deployment = self._guard(
                    token, lambda: client.deployments.update(cfg["owner"], cfg["deployment"], **changes)
                )
            return deployment

    @staticmethod
    def _guard(token: str | None, call, *, expect: int | None = None):
        """Run one client call; turn what Replicate or the network says into HostError.

        `expect`: a status the caller handles itself (raised as _Expected).
        """
        try:
            return call()
        except ReplicateError as exc:
            if expect is not None and exc.status == expect:
                raise _Expected() from exc
            text = exc.detail or exc.title or "no detail"
            raise host_error(
                f"Replicate API {exc.status}: {text}", retryable=retryable_status(exc.status), secret=token
            ) from exc
        except httpx.TimeoutException as exc:
            raise host_error(f"Replicate API timed out: {exc!r}", retryable=True, secret=token) from exc
        except httpx.RequestError as exc:  # the network, and answers it cannot read (encoding, redirects)
            raise host_error(f"Replicate API unreachable: {exc!r}", retryable=True, secret=token) from exc
        except (ValueError, TypeError, KeyError) as exc:  # a body the client could not parse
            raise host_error(
                f"Replicate API answered something unexpected: {exc}", retryable=True, secret=token
            ) from exc


class _Expected(Exception):
    pass


class _Client:
    """A replicate.Client whose HTTP connections are closed when the call is done."""

    def __init__(self, client: replicate.Client):
        self.client = client

    def __enter__(self) -> replicate.Client:
        return self.client

    def __exit__(self, *exc) -> None:
        self.client._client.close()
