"""Small shared pieces of the managed-host adapters (Replicate, HF Inference Endpoints, Modal).

No Django here. Only validation helpers and the one retry rule every adapter follows:
5xx, 408, 429, timeouts and connection failures may pass (retryable); any other 4xx will not.
"""

import contextlib
import ipaddress
from urllib.parse import urlsplit, urlunsplit

from core.errors import InvalidInput
from core.numbers import finite_number
from governance.hosts.base import HostError

DEFAULT_TIMEOUT = 30.0  # seconds per HTTP request to a host's control plane
MAX_TIMEOUT = 600.0
LOOPBACK_NAMES = {"localhost"}
DEFAULT_PORTS = {"http": 80, "https": 443}


def retryable_status(status: int | None) -> bool:
    """Whether an HTTP status from a host's API is worth retrying."""
    if status is None:
        return True
    return status >= 500 or status in (408, 429)


def scrub(message: str, secret: str | None) -> str:
    """Never let a credential reach a log line or an audit reason, even if a server echoes it."""
    if secret:
        message = message.replace(secret, "***")
        for part in secret.split(":"):  # "id:secret" credentials (Modal)
            if len(part) >= 8:
                message = message.replace(part, "***")
    return message


def host_error(message: str, *, retryable: bool, secret: str | None) -> HostError:
    return HostError(scrub(message, secret), retryable=retryable)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def canonical_url(url: str) -> str:
    """One spelling per API base, to tell whether two targets use the same service: scheme and host in lower
    case, no default port, no trailing slash (`https://API.x.com:443/v1/` is `https://api.x.com/v1`)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except (AttributeError, ValueError):
        return url
    scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
    with contextlib.suppress(ValueError):  # an IP literal: one spelling of it
        host = ipaddress.ip_address(host).compressed
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def check_base_url(config: dict, key: str, *, kind: str) -> None:
    """An API base URL override: https anywhere, plain http only on loopback (local test servers).

    The target's credential is sent to this URL, so it must not point at an arbitrary cleartext host.
    """
    if key not in config:
        return
    value = config[key]
    problem = None
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            problem = "Must be an http(s) URL."
        elif parts.username or parts.password or parts.query or parts.fragment:
            problem = "No credentials, query or fragment in the URL."
        elif parts.scheme == "http" and not _is_loopback(host):
            problem = "Plain http is allowed only on loopback (127.0.0.1, ::1, localhost); use https."
        else:
            parts.port  # noqa: B018 - raises ValueError on a bad port
    except (TypeError, ValueError, AttributeError):
        problem = "Must be an http(s) URL."
    if problem:
        raise InvalidInput(f"Invalid {kind} config: config.{key}: {problem}", detail={f"config.{key}": [problem]})


def pop_timeout(config, *, kind: str) -> tuple[dict, float | None]:
    """Split off `timeout_seconds` (int or float, 0 < t <= 600) before the exact-field check."""
    if not isinstance(config, dict) or "timeout_seconds" not in config:
        return config, None
    rest = dict(config)
    value = rest.pop("timeout_seconds")
    ok = finite_number(value) and 0 < value <= MAX_TIMEOUT
    if not ok:
        problem = f"Must be a number of seconds, more than 0 and at most {int(MAX_TIMEOUT)}."
        raise InvalidInput(
            f"Invalid {kind} config: config.timeout_seconds: {problem}",
            detail={"config.timeout_seconds": [problem]},
        )
    return rest, value


def check_name(config: dict, key: str, pattern, *, kind: str, hint: str) -> None:
    if key in config and not pattern.fullmatch(config[key]):
        raise InvalidInput(f"Invalid {kind} config: config.{key}: {hint}", detail={f"config.{key}": [hint]})


def check_range(config: dict, key: str, low: int, high: int, *, kind: str) -> None:
    if key in config and not low <= config[key] <= high:
        hint = f"Must be between {low} and {high}."
        raise InvalidInput(f"Invalid {kind} config: config.{key}: {hint}", detail={f"config.{key}": [hint]})


def config_or_host_error(validate, config: dict) -> dict:
    """Adapters re-validate the config they are given; a bad one is a permanent failure, not a crash."""
    try:
        return validate(config)
    except InvalidInput as exc:
        raise HostError(exc.message, retryable=False) from exc
