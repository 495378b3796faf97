"""Hugging Face Inference Endpoints through the official `huggingface_hub` client.

One endpoint per target (`namespace`/`endpoint`), serving `repository` at a pinned commit. The artifact
pointer is `ReleaseSpec.host_revision`: the 40-hex repo commit (the reconciler takes it from an
`hf://org/repo@<commit>` artifact_uri). Deploy = `create_inference_endpoint(..., revision=commit)` the
first time, then `update_inference_endpoint(..., revision=commit)` (`PUT {"model": {"revision": …}}`);
rollback is the same update back to the earlier commit. Nothing is sent when the endpoint already
serves that repository at that commit. `host_release_id` is the commit (HF does not number releases).
A create answered 409 (created meanwhile: a concurrent create, or ours whose answer was lost) reads the
endpoint again and converges it like an existing one. An endpoint in the `failed` state cannot be
updated (HF: create a new one): when another commit is wanted it is deleted and created again.

Readiness follows `InferenceEndpoint.wait()`: failed/updateFailed are failures; ready only when the
state is running, `status.url` is set and `GET {status.url}{healthRoute}` answers 200. `deploy()`
waits at most `wait_seconds` (config, default 0) and otherwise returns `ready=False`; the reconciler
polls `status()`.

The client reads the API base from the module global `huggingface_hub.constants.INFERENCE_ENDPOINTS_ENDPOINT`
at call time and its shared HTTP session has no timeout. Each call here therefore runs under one
process-wide lock that sets the base URL (config `base_url`, default the public API) and installs a
request hook that applies `timeout_seconds` to the requests made inside the lock only.
"""

import contextlib
import contextvars
import logging
import re
import threading
from contextlib import contextmanager

import httpx2
from huggingface_hub import constants
from huggingface_hub import create_inference_endpoint as hf_create
from huggingface_hub import delete_inference_endpoint as hf_delete
from huggingface_hub import get_inference_endpoint as hf_get
from huggingface_hub import update_inference_endpoint as hf_update
from huggingface_hub.errors import HfHubHTTPError, InferenceEndpointError, InferenceEndpointTimeoutError
from huggingface_hub.utils import get_session

from governance.hosts.base import DeployResult, HostError, HostStatus, ReleaseSpec, Serving
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
    scrub,
)

log = logging.getLogger(__name__)

KIND = "hf_endpoint"
CAPABILITIES = frozenset({"deploy", "rollback"})

DEFAULT_BASE_URL = "https://api.endpoints.huggingface.cloud/v2"
DEFAULTS = {
    "framework": "pytorch",
    "accelerator": "cpu",
    "instance_size": "x2",
    "instance_type": "intel-icl",
    "region": "us-east-1",
    "vendor": "aws",
    "type": "authenticated",
    "min_replica": 1,
    "max_replica": 1,
}
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
ENDPOINT = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
REPOSITORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # framework, task, accelerator, sizes, region, vendor
COMMIT = re.compile(r"[0-9a-f]{40}")
HF_URI = re.compile(r"hf://(?P<repo>[^@\s]+)@(?P<commit>[0-9a-f]{40})")
TYPES = ("public", "authenticated", "private")
MDN_HINT = re.compile(r"For more information check: \S+")  # httpx's generic hint, noise in an audit reason

_LOCK = threading.RLock()
_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar("hf_endpoint_timeout", default=None)


def validate_config(config: dict) -> dict:
    rest, timeout = pop_timeout(config, kind=KIND)
    checked = check_fields(
        rest,
        kind=KIND,
        required={"namespace": str, "endpoint": str, "repository": str},
        optional={
            "framework": str,
            "task": str,
            "accelerator": str,
            "instance_size": str,
            "instance_type": str,
            "region": str,
            "vendor": str,
            "type": str,
            "min_replica": int,
            "max_replica": int,
            "wait_seconds": int,
            "base_url": str,
        },
    )
    check_name(checked, "namespace", NAMESPACE, kind=KIND, hint="A Hugging Face user or organization name.")
    check_name(
        checked, "endpoint", ENDPOINT, kind=KIND, hint="Lowercase letters, digits and '-', at most 32 characters."
    )
    check_name(checked, "repository", REPOSITORY, kind=KIND, hint="Must be 'org/name' (a model repository).")
    for key in ("framework", "task", "accelerator", "instance_size", "instance_type", "region", "vendor"):
        check_name(checked, key, TOKEN, kind=KIND, hint="Letters, digits, '.', '_' and '-' only.")
    check_name(checked, "type", re.compile("|".join(TYPES)), kind=KIND, hint=f"One of {', '.join(TYPES)}.")
    check_range(checked, "min_replica", 0, 100, kind=KIND)
    check_range(checked, "max_replica", 1, 100, kind=KIND)
    check_range(checked, "wait_seconds", 0, 600, kind=KIND)
    if "max_replica" in checked:
        check_range(checked, "min_replica", 0, checked["max_replica"], kind=KIND)
    check_base_url(checked, "base_url", kind=KIND)
    if timeout is not None:
        checked["timeout_seconds"] = timeout
    return checked


def resources(config: dict, credentials_ref: str) -> frozenset[str]:
    """What on the platform a target with this config controls: two targets must not share it."""
    base = canonical_url(config.get("base_url", DEFAULT_BASE_URL))  # one service, one key however spelled
    return frozenset({f"Inference Endpoint {config['namespace']}/{config['endpoint']} at {base}"})


def _timeout_hook(request) -> None:
    """Give requests made inside `_session` the target's timeout (the shared session has none)."""
    seconds = _TIMEOUT.get()
    if seconds is not None:
        request.extensions = {
            **request.extensions,
            "timeout": httpx2.Timeout(seconds, connect=min(seconds, 10.0)).as_dict(),
        }


@contextmanager
def _session(cfg: dict):
    with _LOCK:
        previous = constants.INFERENCE_ENDPOINTS_ENDPOINT
        constants.INFERENCE_ENDPOINTS_ENDPOINT = cfg.get("base_url", DEFAULT_BASE_URL).rstrip("/")
        hooks = get_session().event_hooks["request"]
        if _timeout_hook not in hooks:
            hooks.insert(0, _timeout_hook)
        token = _TIMEOUT.set(cfg.get("timeout_seconds", DEFAULT_TIMEOUT))
        try:
            yield
        finally:
            _TIMEOUT.reset(token)
            constants.INFERENCE_ENDPOINTS_ENDPOINT = previous


class HFEndpointHost:
    """Host adapter for one Hugging Face Inference Endpoint per target (see the module docstring)."""

    capabilities = CAPABILITIES

    def deploy(self, spec: ReleaseSpec) -> DeployResult:
        cfg = config_or_host_error(validate_config, spec.config)
        token = self._token(spec.credentials)
        commit = self._commit(spec, cfg)
        with _session(cfg):
            endpoint = self._get(cfg, token)
            if endpoint is None:
                endpoint = self._create(cfg, token, commit)
            else:
                endpoint = self._converge(endpoint, cfg, token, commit)
            ready, detail = self._ready(endpoint, token, cfg.get("wait_seconds", 0))
        return DeployResult(host_release_id=commit, endpoint_url=endpoint.url or "", ready=ready)

    def status(self, config: dict, credentials: str | None) -> HostStatus:
        cfg = config_or_host_error(validate_config, config)
        token = self._token(credentials)
        with _session(cfg):
            endpoint = self._get(cfg, token)
            if endpoint is None:
                return HostStatus(state="absent", detail=f"no Inference Endpoint {cfg['namespace']}/{cfg['endpoint']}")
            state = endpoint.status
            if state in ("failed", "updateFailed", "paused"):
                return HostStatus(state="failed", endpoint_url=endpoint.url or "", detail=self._describe(endpoint))
            if state == "scaledToZero":  # serving; the next request wakes it up
                ready, detail = True, self._describe(endpoint)
            else:
                ready, detail = self._ready(endpoint, token, 0)
        if not ready:
            return HostStatus(
                state="deploying", endpoint_url=endpoint.url or "", detail=detail, busy_with=endpoint.revision or ""
            )
        return HostStatus(
            state="ready",
            serving=(Serving(release_number=0, host_release_id=endpoint.revision, traffic_percent=100),),
            endpoint_url=endpoint.url or "",
            detail=detail,
        )

    def set_traffic(self, config: dict, credentials: str | None, split: dict[int, int]) -> None:
        raise HostError("an Inference Endpoint serves one revision at a time; no traffic split", retryable=False)

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _token(credentials: str | None) -> str:
        if not credentials:
            # Never fall back to a locally saved HF token: the target names its credential.
            raise HostError("no Hugging Face token: set the target's credentials_ref", retryable=False)
        return credentials

    @staticmethod
    def _commit(spec: ReleaseSpec, cfg: dict) -> str:
        uri = HF_URI.fullmatch(spec.artifact_uri or "")
        commit = spec.host_revision or (uri["commit"] if uri else "")
        if not COMMIT.fullmatch(commit):
            raise HostError(
                "release has no Hugging Face commit: register the version with artifact_uri "
                "'hf://org/repo@<40-hex commit>' (or set host_revision to the commit)",
                retryable=False,
            )
        if uri and uri["repo"] != cfg["repository"]:
            raise HostError(
                f"the version lives in {uri['repo']}, but the target serves {cfg['repository']}", retryable=False
            )
        return commit

    def _converge(self, endpoint, cfg: dict, token: str, commit: str, *, may_recreate: bool = True):
        """Bring an existing endpoint to the commit: nothing when it serves it, else an update (a failed endpoint
        is replaced instead: it takes no update)."""
        ns, name, repo = cfg["namespace"], cfg["endpoint"], cfg["repository"]
        if endpoint.status == "paused":  # whatever it serves: nobody can reach it
            raise HostError(
                f"Inference Endpoint {ns}/{name} is paused; resume it before deploying to it", retryable=False
            )
        if endpoint.repository == repo and endpoint.revision == commit:
            return endpoint  # a failed one at this commit is reported by _ready, with its message
        if endpoint.status == "failed":
            if not may_recreate:  # just created by someone else, or still being deleted: decide on the next attempt
                raise HostError(
                    f"Inference Endpoint {ns}/{name} was created (or is being deleted) meanwhile and is failed",
                    retryable=True,
                )
            return self._recreate(endpoint, cfg, token, commit)
        changes = {"revision": commit}
        if endpoint.repository != repo:
            changes["repository"] = repo
        return self._guard(token, lambda: hf_update(name, namespace=ns, token=token, **changes), what="update")

    def _create(self, cfg: dict, token: str, commit: str):
        ns, name = cfg["namespace"], cfg["endpoint"]
        try:
            return self._guard(token, lambda: self._post(cfg, token, commit), expect=409, what="create")
        except _Expected:  # created meanwhile: a concurrent create, or ours whose answer was lost and was retried
            endpoint = self._get(cfg, token)
            if endpoint is None:  # deleted again since (or its deletion not finished): the next attempt creates it
                raise HostError(
                    f"Inference Endpoints API 409: Inference Endpoint {ns}/{name} exists, yet reading it finds none",
                    retryable=True,
                ) from None
            return self._converge(endpoint, cfg, token, commit, may_recreate=False)

    def _post(self, cfg: dict, token: str, commit: str):
        params = {key: cfg.get(key, default) for key, default in DEFAULTS.items()}
        if "max_replica" not in cfg:
            params["max_replica"] = max(params["max_replica"], params["min_replica"])
        return hf_create(
            cfg["endpoint"],
            repository=cfg["repository"],
            revision=commit,
            task=cfg.get("task"),
            namespace=cfg["namespace"],
            token=token,
            **params,
        )

    def _recreate(self, endpoint, cfg: dict, token: str, commit: str):
        """HF takes no update of a failed endpoint ("create a new Endpoint"). It serves nothing and only this
        target controls it (`resources`), so it is deleted and created again at the commit with the target's
        config. What deletion loses (its build logs) is logged first; one still reporting ready replicas is kept."""
        ns, name = cfg["namespace"], cfg["endpoint"]
        replicas = (endpoint.raw.get("status") or {}).get("readyReplica") or 0
        if replicas:
            raise HostError(
                f"Inference Endpoint {ns}/{name} is failed yet reports {replicas} ready replica(s); not deleting it: "
                f"delete {ns}/{name} yourself (or repair it), then retry",
                retryable=False,
            )
        said = scrub(self._describe(endpoint), token)  # the server's words, which may echo the token
        log.warning("Inference Endpoint %s takes no update; deleting it to create it at %s", said, commit)
        with contextlib.suppress(_Expected):  # a 404: already gone
            self._guard(token, lambda: hf_delete(name, namespace=ns, token=token), expect=404, what="delete")
        return self._create(cfg, token, commit)

    def _get(self, cfg: dict, token: str):
        try:
            return self._guard(
                token, lambda: hf_get(cfg["endpoint"], namespace=cfg["namespace"], token=token), expect=404
            )
        except _Expected:
            return None

    def _ready(self, endpoint, token: str, wait_seconds: int) -> tuple[bool, str]:
        """`InferenceEndpoint.wait()` semantics, bounded: (ready, detail); raises on failed/updateFailed."""
        try:
            self._guard(
                token,
                lambda: endpoint.wait(timeout=wait_seconds, refresh_every=1 if wait_seconds else 0.05),
                what="wait",
                health=True,
            )
        except InferenceEndpointTimeoutError:
            if endpoint.status == "running":
                return False, f"running but {endpoint.health_route} does not answer 200 yet"
            return False, self._describe(endpoint)
        except InferenceEndpointError as exc:  # the status message is the server's: scrub it like the rest
            raise host_error(f"{exc} {self._describe(endpoint)}", retryable=False, secret=token) from exc
        except _Unreachable as exc:
            return False, f"health route unreachable: {exc}"
        return True, self._describe(endpoint)

    @staticmethod
    def _describe(endpoint) -> str:
        message = (endpoint.raw.get("status") or {}).get("message") or ""
        text = f"{endpoint.namespace}/{endpoint.name} {endpoint.status} at {endpoint.repository}@{endpoint.revision}"
        return f"{text}: {message}" if message else text

    @staticmethod
    def _guard(token: str, call, *, expect: int | None = None, what: str = "call", health: bool = False):
        try:
            return call()
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if expect is not None and status == expect:
                raise _Expected() from exc
            text = " ".join(MDN_HINT.sub("", str(exc)).split())
            raise host_error(
                f"Inference Endpoints API {status}: {text}", retryable=retryable_status(status), secret=token
            ) from exc
        except httpx2.TimeoutException as exc:
            if health:
                raise _Unreachable(scrub(f"timed out ({exc!r})", token)) from exc
            raise host_error(f"Inference Endpoints API timed out ({what})", retryable=True, secret=token) from exc
        except httpx2.RequestError as exc:  # the network, and answers it cannot read (encoding, redirects)
            if health:
                raise _Unreachable(scrub(repr(exc), token)) from exc
            raise host_error(f"Inference Endpoints API unreachable: {exc!r}", retryable=True, secret=token) from exc
        except (KeyError, ValueError, TypeError) as exc:  # a body the client could not read
            raise host_error(
                f"Inference Endpoints API answered something unexpected: {exc!r}", retryable=True, secret=token
            ) from exc


class _Expected(Exception):
    pass


class _Unreachable(Exception):
    pass
