"""The one small interface every host adapter implements. No Django here: plain data in and out.

The reconciler (governance.deployment) turns a Release row into a `ReleaseSpec`, calls the
adapter, and records what the host reports. Adapters must be idempotent: deploying a spec the
host already serves is a no-op that returns the existing host release, never a duplicate.
"""

from dataclasses import dataclass, field
from typing import Protocol


class HostError(Exception):
    """The host refused or failed. `retryable` says whether trying again may help (5xx, timeout)."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable
        self.release_id: int | None = None  # set by the reconciler: the release it was converging


@dataclass(frozen=True)
class ReleaseSpec:
    """What should serve on a target."""

    target: str  # target name
    config: dict  # the target's validated host configuration
    credentials: str | None = field(repr=False)  # resolved from credentials_ref; never log it
    release_number: int = 0
    model: str = ""  # "namespace/name"
    version_number: int = 0
    digest: str = ""  # "sha256:…"
    artifact_uri: str = ""
    files: tuple[dict, ...] = ()  # the manifest's files
    artifact_dir: str | None = None  # a local directory holding the files (self-hosted), if materialized
    host_revision: str = ""  # host-specific pointer to the artifact (HF repo commit, Replicate version id, …)
    # The traffic split to apply once the release is ready, as (release number, percent) pairs: a canary
    # step beside the serving release. Empty: this release takes all the traffic.
    traffic: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Serving:
    """One release the host is serving, with its share of traffic."""

    release_number: int
    host_release_id: str
    traffic_percent: int


def unique_host_release_id(number: str, unique: str) -> str:
    """A host release id unique over time where the host numbers releases afresh (a Replicate deployment or a Modal
    app deleted and created again starts at 1 again): the host's number, "@", what changes on re-creation. Ids
    stored before this were the number alone; the reconciler matches those on the part before "@"."""
    return f"{number}@{unique}"


@dataclass(frozen=True)
class HostStatus:
    state: str  # "ready" | "deploying" | "failed" | "absent"
    serving: tuple[Serving, ...] = ()
    endpoint_url: str = ""
    detail: str = ""
    busy_with: str = ""  # "deploying": the host release id it is starting, where the host says (HF: the revision)


@dataclass(frozen=True)
class Health:
    """One release's cumulative request and error counters as the host counts them, and its latency."""

    requests: int
    errors: int  # 5xx answers and failed responses
    latency_ms: float | None = None  # the host's recent average response time
    up: bool = True  # the host's own health check passes


@dataclass(frozen=True)
class DeployResult:
    host_release_id: str
    endpoint_url: str = ""
    ready: bool = True  # False: the host accepted it and is still converging; poll status()


class Host(Protocol):
    capabilities: frozenset[str]  # subset of {"deploy", "rollback", "traffic_split", "health"}

    def deploy(self, spec: ReleaseSpec) -> DeployResult:
        """Make the host serve `spec` (100% of traffic unless the host splits). Idempotent."""

    def status(self, config: dict, credentials: str | None) -> HostStatus:
        """What the host serves right now."""

    def set_traffic(self, config: dict, credentials: str | None, split: dict[int, int]) -> None:
        """Shift traffic between releases by release number ({3: 90, 4: 10}); only with "traffic_split"."""

    def health(self, config: dict, credentials: str | None, release_number: int) -> Health:
        """Counters for one release (canary gates); only with "health"."""
