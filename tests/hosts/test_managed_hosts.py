"""Managed hosts, each driven through its platform's official client against a local wire-compatible fake.

- Replicate: `replicate` 1.0.x (httpx) against tests/fakes/replicate_server.py.
- Hugging Face Inference Endpoints: `huggingface_hub` against tests/fakes/hf_endpoints_server.py.
- Modal: the installed `modal` CLI with its gRPC client swapped out (tests/fakes/modal_cli.py); Modal's
  control plane itself is not exercised (see docs/hosts-managed.md).

No database: the adapters are plain Python. Fault injection (5xx, timeouts) is seeded.
"""

import logging
import os
import threading
import time

import httpx
import pytest
from huggingface_hub import constants as hf_constants

from core.errors import InvalidInput
from governance.hosts import HOSTS
from governance.hosts import hf_endpoint as hf_module
from governance.hosts import modal as modal_module
from governance.hosts import replicate as replicate_module
from governance.hosts.base import HostError, ReleaseSpec
from governance.hosts.hf_endpoint import HFEndpointHost
from governance.hosts.http import scrub
from governance.hosts.modal import ModalHost
from governance.hosts.replicate import ReplicateHost
from tests.fakes import modal_cli
from tests.fakes.hf_endpoints_server import HFEndpointsServer
from tests.fakes.httpfake import Reply
from tests.fakes.replicate_server import ReplicateServer
from tests.hosts.test_self_hosted import plant_worker_secrets

R_TOKEN = "r8_Zq3vTestTokenNeverLogged0123456789"
HF_TOKEN = "hf_TestTokenNeverLoggedAbCdEf0123456789"
MODAL_ID, MODAL_SECRET = "ak-TestTokenId0123456789", "as-TestSecretNeverLogged0123456789"
MODAL_CRED = f"{MODAL_ID}:{MODAL_SECRET}"

V1, V2, V_UNKNOWN = "1a" * 32, "2b" * 32, "3c" * 32  # Replicate version ids (64 hex)
C1, C2, C_BAD = "1" * 40, "2" * 40, "b" * 40  # HF commits (40 hex)
D1, D2 = "sha256:" + "a1" * 32, "sha256:" + "b2" * 32  # registry digests (Modal tags)


def spec(config: dict, credentials: str, number: int, **fields) -> ReleaseSpec:
    return ReleaseSpec(
        target="clf-prod",
        config=config,
        credentials=credentials,
        release_number=number,
        model="acme/clf",
        version_number=number,
        **fields,
    )


def number(host_release_id: str) -> str:
    """The host's own release number in a host release id ("3" of "3@<created_at>", "v3" of "v3@<app id>")."""
    return host_release_id.partition("@")[0]


def retry(call, attempts: int = 10):
    """What the reconciler does with HostError (without its backoff): retry retryable ones, boundedly."""
    for attempt in range(attempts):
        try:
            return call()
        except HostError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def poll(call, until, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while True:
        result = call()
        if until(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


@pytest.fixture
def no_secrets_logged(caplog):
    """Every log record at any level, checked for the tokens after the test."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    for secret in (R_TOKEN, HF_TOKEN, MODAL_SECRET, MODAL_ID):
        assert secret not in caplog.text


# ---------------------------------------------------------------------------------------------------
# Replicate
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def replicate_server():
    with ReplicateServer(token=R_TOKEN, username="acme", seed=11) as server:
        server.add_version("acme/clf", V1)
        server.add_version("acme/clf", V2)
        yield server


@pytest.fixture
def replicate_config(replicate_server):
    return {
        "owner": "acme",
        "deployment": "clf-prod",
        "model": "acme/clf",
        "hardware": "gpu-t4",
        "min_instances": 1,
        "max_instances": 2,
        "base_url": replicate_server.url,
        "timeout_seconds": 0.5,
    }


def writes(server) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in server.requests if r["method"] != "GET"]


def test_replicate_deploy_is_idempotent_and_rollback_is_an_update(
    replicate_server, replicate_config, no_secrets_logged
):
    host = HOSTS["replicate"].adapter()
    assert isinstance(host, ReplicateHost)
    assert host.status(replicate_config, R_TOKEN).state == "absent"

    first = host.deploy(spec(replicate_config, R_TOKEN, 1, host_revision=f"acme/clf:{V1}"))
    assert first.endpoint_url == f"{replicate_server.url}/v1/deployments/acme/clf-prod/predictions"
    created = replicate_server.deployment("acme", "clf-prod")["current_release"]
    assert (first.host_release_id, first.ready) == (f"1@{created['created_at']}", True)
    assert (created["version"], created["configuration"]) == (
        V1,
        {"hardware": "gpu-t4", "min_instances": 1, "max_instances": 2},
    )
    status = host.status(replicate_config, R_TOKEN)
    assert status.state == "ready"
    serving = [(s.release_number, s.host_release_id, s.traffic_percent) for s in status.serving]
    assert serving == [(0, first.host_release_id, 100)]

    # the same spec again (bare hash this time): nothing is written, no new Replicate release
    again = host.deploy(spec(replicate_config, R_TOKEN, 1, host_revision=V1))
    assert again.host_release_id == first.host_release_id
    assert replicate_server.releases_created == 1
    assert writes(replicate_server) == [("POST", "/v1/deployments")]

    second = host.deploy(spec(replicate_config, R_TOKEN, 2, host_revision=V2))
    assert number(second.host_release_id) == "2"
    assert replicate_server.requests[-1]["body"] == {"version": V2}  # PATCH with only what changes

    rollback = host.deploy(spec(replicate_config, R_TOKEN, 1, host_revision=V1))  # rollback = the earlier spec
    assert number(rollback.host_release_id) == "3"  # Replicate numbers it as a new release
    assert replicate_server.deployment("acme", "clf-prod")["current_release"]["version"] == V1
    assert replicate_server.releases_created == 3
    assert host.status(replicate_config, R_TOKEN).serving[0].host_release_id == rollback.host_release_id
    assert all(r["authorized"] for r in replicate_server.requests)


def test_replicate_config_change_is_a_new_release(replicate_server, replicate_config):
    host = ReplicateHost()
    host.deploy(spec(replicate_config, R_TOKEN, 1, host_revision=V1))
    result = host.deploy(spec({**replicate_config, "max_instances": 5}, R_TOKEN, 1, host_revision=V1))
    assert number(result.host_release_id) == "2"
    assert replicate_server.requests[-1]["body"] == {"max_instances": 5}


def test_replicate_client_errors_are_permanent_with_the_platform_message(
    replicate_server, replicate_config, no_secrets_logged
):
    host = ReplicateHost()
    with pytest.raises(HostError) as unknown:
        host.deploy(spec(replicate_config, R_TOKEN, 1, host_revision=V_UNKNOWN))
    assert unknown.value.retryable is False
    assert "404" in str(unknown.value) and "does not exist" in str(unknown.value)

    with pytest.raises(HostError) as unauthorized:
        host.status(replicate_config, "r8_wrong-token-0000000000")
    assert unauthorized.value.retryable is False
    assert "401" in str(unauthorized.value) and "authentication token" in str(unauthorized.value)

    with pytest.raises(HostError) as wrong_model:
        host.deploy(spec(replicate_config, R_TOKEN, 1, host_revision=f"other/model:{V1}"))
    assert wrong_model.value.retryable is False

    with pytest.raises(HostError) as no_token:
        host.deploy(spec(replicate_config, None, 1, host_revision=V1))
    assert no_token.value.retryable is False
    assert replicate_server.releases_created == 0


def test_replicate_token_of_another_account_creates_nothing(replicate_server, replicate_config):
    """Replicate creates a deployment under the token's account whatever `owner` says: a personal token for the
    organization's target is refused before the create (it used to leave a billed deployment on the wrong
    account, and the next attempt met a 409, then a 404)."""
    replicate_server.add_account("r8_personal-token-000000000", "jane")
    replicate_server.add_version("jane/clf", V1)
    for _ in range(2):
        with pytest.raises(HostError) as wrong:
            ReplicateHost().deploy(spec(replicate_config, "r8_personal-token-000000000", 1, host_revision=V1))
        assert wrong.value.retryable is False
        assert "token belongs to 'jane', not 'acme'" in str(wrong.value)
    assert (replicate_server.releases_created, replicate_server.deployments) == (0, {})
    assert ("POST", "/v1/deployments") not in writes(replicate_server)


def test_replicate_server_errors_and_timeouts_are_retryable_and_fast(replicate_server, replicate_config):
    host = ReplicateHost()
    host.deploy(spec(replicate_config, R_TOKEN, 1, host_revision=V1))
    replicate_server.requests.clear()

    replicate_server.faults(fail_rate=1.0, fail_status=503)
    started = time.monotonic()
    with pytest.raises(HostError) as unavailable:
        host.status(replicate_config, R_TOKEN)
    assert unavailable.value.retryable is True and "503" in str(unavailable.value)
    assert len(replicate_server.requests) == host.attempts  # the client's own GET retries, capped
    assert time.monotonic() - started < 3

    replicate_server.faults(fail_status=500)
    with pytest.raises(HostError) as broken:
        host.deploy(spec(replicate_config, R_TOKEN, 2, host_revision=V2))
    assert broken.value.retryable is True and "500" in str(broken.value)

    replicate_server.faults(fail_rate=0.0, timeout_rate=1.0, fault_sleep=1.0)
    started = time.monotonic()
    with pytest.raises(HostError) as slow:
        host.status(replicate_config, R_TOKEN)
    assert slow.value.retryable is True and "timed out" in str(slow.value)
    assert time.monotonic() - started < 0.9
    assert replicate_server.releases_created == 1


@pytest.mark.parametrize("status", [429, 503])
def test_replicate_retry_after_in_seconds_is_capped_like_every_wait(replicate_server, replicate_config, status):
    """A throttled answer with `Retry-After: 30`: the client slept all of a number there (it caps only the date
    form), so one such GET held the worker 30 s, past timeout_seconds. Waits are capped at max_backoff (2 s)."""
    host = ReplicateHost()
    host.deploy(spec(replicate_config, R_TOKEN, 1, host_revision=V1))
    replicate_server.requests.clear()
    replicate_server.faults(fail_rate=1.0, fail_status=status, retry_after=30)
    assert httpx.get(f"{replicate_server.url}/v1/account").headers["Retry-After"] == "30"  # what the client sees

    replicate_server.requests.clear()
    started = time.monotonic()
    with pytest.raises(HostError) as throttled:
        host.status(replicate_config, R_TOKEN)
    assert time.monotonic() - started < 10
    assert throttled.value.retryable is True and str(status) in str(throttled.value)
    assert len(replicate_server.requests) == host.attempts  # it did wait and retry, briefly


def undecodable(method, path, body):
    """An answer claiming gzip that is not: the HTTP client cannot decode it (httpx.DecodingError)."""
    raise Reply(200, {"detail": "not gzip"}, {"Content-Encoding": "gzip"})


def test_answers_the_client_cannot_decode_are_retryable_host_errors(
    replicate_server, replicate_config, hf_server, hf_config
):
    """They escaped the adapters (httpx.DecodingError is no TransportError): the task crashed and the release
    stayed pending with no reason."""
    for server, call in (
        (replicate_server, lambda: ReplicateHost().status(replicate_config, R_TOKEN)),
        (hf_server, lambda: HFEndpointHost().status(hf_config, HF_TOKEN)),
    ):
        server.intercept = undecodable
        with pytest.raises(HostError) as garbled:
            call()
        assert garbled.value.retryable is True and "DecodingError" in str(garbled.value)


def test_replicate_converges_without_duplicate_releases_under_30_percent_faults(replicate_server, replicate_config):
    """30% of requests fail (5xx) or time out after the server acted; retried deploys never double up."""
    replicate_server.faults(
        fail_rate=0.15, timeout_rate=0.15, fail_status=502, fault_sleep=0.3, timeout_applies=True, seed=3
    )
    config = {**replicate_config, "timeout_seconds": 0.1}
    host = ReplicateHost()
    plan = [V1, V2, V2, V1, V1, V2]
    for number, version in enumerate(plan, start=1):
        result = retry(lambda v=version, n=number: host.deploy(spec(config, R_TOKEN, n, host_revision=v)))
        assert replicate_server.deployment("acme", "clf-prod")["current_release"]["version"] == version
        current = replicate_server.deployment("acme", "clf-prod")["current_release"]
        assert result.host_release_id == f"{current['number']}@{current['created_at']}"
    assert sum(replicate_server.faults_injected.values()) > 0
    assert replicate_server.releases_created == 4  # V1, V2, V1, V2: one per change, none for retries


# ---------------------------------------------------------------------------------------------------
# Hugging Face Inference Endpoints
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def hf_server():
    with HFEndpointsServer(token=HF_TOKEN, namespaces=("acme",), seed=5) as server:
        server.pending_delay, server.init_delay, server.update_delay = 0.1, 0.3, 0.3
        server.add_revision("acme/clf", C1)
        server.add_revision("acme/clf", C2)
        server.add_revision("acme/clf", C_BAD)
        server.bad_revisions.add(C_BAD)
        yield server


@pytest.fixture
def hf_config(hf_server):
    return {
        "namespace": "acme",
        "endpoint": "clf-prod",
        "repository": "acme/clf",
        "framework": "pytorch",
        "task": "text-classification",
        "base_url": hf_server.api_url,
        "timeout_seconds": 0.5,
    }


def hf_spec(config, number, commit, token=HF_TOKEN):
    return spec(config, token, number, artifact_uri=f"hf://acme/clf@{commit}", digest=D1)


def ready(status):
    return status.state == "ready"


def test_hf_deploy_waits_like_the_client_and_rollback_is_a_revision_update(hf_server, hf_config, no_secrets_logged):
    host = HOSTS["hf_endpoint"].adapter()
    assert isinstance(host, HFEndpointHost)
    assert host.status(hf_config, HF_TOKEN).state == "absent"

    first = host.deploy(hf_spec(hf_config, 1, C1))
    assert (first.host_release_id, first.ready) == (C1, False)  # accepted, still pending/initializing
    posts = [r for r in hf_server.requests if r["method"] == "POST"]
    assert posts[0]["body"]["model"] == {
        "framework": "pytorch",
        "repository": "acme/clf",
        "revision": C1,
        "image": {"huggingface": {}},
        "task": "text-classification",
    }
    assert host.status(hf_config, HF_TOKEN).state == "deploying"

    status = poll(lambda: host.status(hf_config, HF_TOKEN), ready)
    assert status.state == "ready"
    assert status.endpoint_url == f"{hf_server.url}/_ep/acme/clf-prod"
    assert [(s.release_number, s.host_release_id, s.traffic_percent) for s in status.serving] == [(0, C1, 100)]
    assert hf_server.health_checks >= 1  # ready only once the health route answered 200

    again = host.deploy(hf_spec(hf_config, 1, C1))
    assert (again.host_release_id, again.ready) == (C1, True)
    assert hf_server.releases_created == 1
    assert [r["method"] for r in hf_server.requests if r["method"] != "GET"] == ["POST"]

    second = host.deploy(hf_spec(hf_config, 2, C2))
    assert (second.host_release_id, second.ready) == (C2, False)  # updating
    assert hf_server.requests[-1]["method"] == "PUT"
    assert hf_server.requests[-1]["body"] == {"model": {"revision": C2}}
    assert host.status(hf_config, HF_TOKEN).state == "deploying"
    assert poll(lambda: host.status(hf_config, HF_TOKEN), ready).serving[0].host_release_id == C2

    rollback = host.deploy(hf_spec(hf_config, 1, C1))
    assert rollback.host_release_id == C1
    assert hf_server.requests[-1]["body"] == {"model": {"revision": C1}}
    assert poll(lambda: host.status(hf_config, HF_TOKEN), ready).serving[0].host_release_id == C1
    assert hf_server.releases_created == 3
    assert hf_constants.INFERENCE_ENDPOINTS_ENDPOINT == "https://api.endpoints.huggingface.cloud/v2"  # restored


def test_hf_deploy_can_wait_and_health_route_gates_ready(hf_server, hf_config):
    host = HFEndpointHost()
    result = host.deploy(hf_spec({**hf_config, "wait_seconds": 5}, 1, C1))
    assert result.ready is True and result.endpoint_url.endswith("/_ep/acme/clf-prod")

    hf_server.healthy = False  # running, but the health route answers 503
    status = host.status(hf_config, HF_TOKEN)
    assert status.state == "deploying" and "/health" in status.detail
    hf_server.healthy = True
    assert host.status(hf_config, HF_TOKEN).state == "ready"


def test_hf_failed_update_is_reported_and_permanent(hf_server, hf_config):
    host = HFEndpointHost()
    host.deploy(hf_spec({**hf_config, "wait_seconds": 5}, 1, C1))
    result = host.deploy(hf_spec(hf_config, 2, C_BAD))
    assert result.ready is False
    status = poll(lambda: host.status(hf_config, HF_TOKEN), lambda s: s.state == "failed")
    assert status.state == "failed" and "updateFailed" in status.detail and "crashed" in status.detail
    with pytest.raises(HostError) as failed:
        host.deploy(hf_spec(hf_config, 2, C_BAD))
    assert failed.value.retryable is False and "failed to update" in str(failed.value)
    # the fallback (previous revision) converges again
    host.deploy(hf_spec(hf_config, 1, C1))
    assert poll(lambda: host.status(hf_config, HF_TOKEN), ready).serving[0].host_release_id == C1


def test_hf_paused_endpoint_is_a_permanent_error_even_at_the_wanted_revision(hf_server, hf_config):
    """A paused endpoint is not resumed (docs/hosts-managed.md): deploying to it fails with the reason, also when
    it is paused at the revision wanted (it used to wait forever, `ready=False`, with no reason)."""
    host = HFEndpointHost()
    host.deploy(hf_spec({**hf_config, "wait_seconds": 5}, 1, C1))
    paused = httpx.post(
        f"{hf_server.api_url}/endpoint/acme/clf-prod/pause", headers={"Authorization": f"Bearer {HF_TOKEN}"}
    )
    assert paused.status_code == 200, paused.text
    for commit in (C1, C2):
        with pytest.raises(HostError) as failed:
            host.deploy(hf_spec(hf_config, 1, commit))
        assert failed.value.retryable is False and "is paused" in str(failed.value)
    assert host.status(hf_config, HF_TOKEN).state == "failed"


@pytest.mark.parametrize("meanwhile", [C1, C2], ids=["same-commit", "other-commit"])
def test_hf_endpoint_created_between_status_and_create_is_converged(hf_server, hf_config, meanwhile):
    """Another worker (or our own create, whose answer was lost) creates the endpoint after the adapter found none:
    the create's 409 was a permanent failure. The adapter reads the endpoint and converges it instead."""
    hf_server.pending_delay = hf_server.init_delay = hf_server.update_delay = 0.0
    host = HFEndpointHost()

    def created_meanwhile(method, path, body):
        if method == "POST" and path == "/v2/endpoint/acme":
            hf_server.intercept = None
            with hf_server.lock:
                hf_server.create("acme", {**body, "model": {**body["model"], "revision": meanwhile}})

    hf_server.intercept = created_meanwhile
    result = host.deploy(hf_spec(hf_config, 1, C1))
    assert result.host_release_id == C1
    sent = writes(hf_server)
    assert sent == [("POST", "/v2/endpoint/acme")] + ([("PUT", "/v2/endpoint/acme/clf-prod")] * (meanwhile != C1))
    assert poll(lambda: host.status(hf_config, HF_TOKEN), ready).serving[0].host_release_id == C1
    assert hf_server.releases_created == (1 if meanwhile == C1 else 2)  # the other create, and our update if any


def test_hf_failed_endpoint_is_deleted_and_created_again_for_another_commit(hf_server, hf_config, no_secrets_logged):
    """HF takes no update of a failed endpoint (its docs: create a new one; the fake refuses the PUT). The adapter
    PUT the new commit to it anyway; now it deletes the endpoint and creates it at that commit. Deploying the commit
    that failed again reports the failure and deletes nothing."""
    hf_server.pending_delay = hf_server.init_delay = 0.0
    host = HFEndpointHost()
    for _ in range(2):  # created, then found failed at that commit
        with pytest.raises(HostError) as same_commit:
            host.deploy(hf_spec(hf_config, 1, C_BAD))
        assert same_commit.value.retryable is False and "failed to deploy" in str(same_commit.value)
    failed = host.status(hf_config, HF_TOKEN)
    assert failed.state == "failed" and "Container failed to start" in failed.detail
    assert [m for m, _ in writes(hf_server)] == ["POST"]

    refused = httpx.put(
        f"{hf_server.api_url}/endpoint/acme/clf-prod",
        json={"model": {"revision": C1}},
        headers={"Authorization": f"Bearer {HF_TOKEN}"},
    )
    assert refused.status_code == 400 and "create a new one" in refused.json()["error"]

    hf_server.requests.clear()
    result = host.deploy(hf_spec(hf_config, 2, C1))
    assert result.host_release_id == C1
    assert writes(hf_server) == [("DELETE", "/v2/endpoint/acme/clf-prod"), ("POST", "/v2/endpoint/acme")]
    assert poll(lambda: host.status(hf_config, HF_TOKEN), ready).serving[0].host_release_id == C1
    assert hf_server.endpoint("acme", "clf-prod")["compute"]["instanceType"] == "intel-icl"  # the target's config
    assert "takes no update; deleting it to create it at " + C1 in no_secrets_logged.text


def test_hf_failed_endpoint_still_serving_is_not_deleted(hf_server, hf_config):
    """Only an endpoint that serves nothing is replaced: one reported failed with ready replicas is left alone,
    with a reason naming it."""
    hf_server.pending_delay = hf_server.init_delay = 0.0
    host = HFEndpointHost()
    with pytest.raises(HostError):
        host.deploy(hf_spec(hf_config, 1, C_BAD))

    def replicas_ready(method, path, body):
        if method == "GET" and path == "/v2/endpoint/acme/clf-prod":
            shown = hf_server.endpoint("acme", "clf-prod")
            raise Reply(200, {**shown, "status": {**shown["status"], "readyReplica": 1}})

    hf_server.intercept = replicas_ready
    with pytest.raises(HostError) as kept:
        host.deploy(hf_spec(hf_config, 2, C1))
    assert kept.value.retryable is False and "delete acme/clf-prod yourself" in str(kept.value)
    assert [m for m, _ in writes(hf_server)] == ["POST"]


def test_hf_client_errors_are_permanent_with_the_platform_message(hf_server, hf_config, no_secrets_logged):
    host = HFEndpointHost()
    with pytest.raises(HostError) as unknown:
        host.deploy(hf_spec(hf_config, 1, "9" * 40))
    assert unknown.value.retryable is False
    assert "400" in str(unknown.value)
    assert f"Revision {'9' * 40} not found in acme/clf" in str(unknown.value)

    with pytest.raises(HostError) as unauthorized:
        host.status(hf_config, "hf_wrong-token-000000000000")
    assert unauthorized.value.retryable is False
    assert "401" in str(unauthorized.value) and "Invalid credentials" in str(unauthorized.value)

    with pytest.raises(HostError) as other_repo:
        host.deploy(spec(hf_config, HF_TOKEN, 1, artifact_uri=f"hf://other/repo@{C1}"))
    assert other_repo.value.retryable is False

    with pytest.raises(HostError) as not_pinned:
        host.deploy(spec(hf_config, HF_TOKEN, 1, artifact_uri="s3://bucket/model"))
    assert not_pinned.value.retryable is False and "commit" in str(not_pinned.value)
    assert hf_server.releases_created == 0


def test_hf_server_errors_and_timeouts_are_retryable(hf_server, hf_config):
    host = HFEndpointHost()
    hf_server.faults(fail_rate=1.0, fail_status=503)
    with pytest.raises(HostError) as unavailable:
        host.deploy(hf_spec(hf_config, 1, C1))
    assert unavailable.value.retryable is True and "503" in str(unavailable.value)

    hf_server.faults(fail_rate=0.0, timeout_rate=1.0, fault_sleep=1.0)
    started = time.monotonic()
    with pytest.raises(HostError) as slow:
        host.status(hf_config, HF_TOKEN)
    assert slow.value.retryable is True and "timed out" in str(slow.value)
    assert time.monotonic() - started < 0.9
    assert hf_server.releases_created == 0


def test_hf_converges_without_duplicate_releases_under_30_percent_faults(hf_server, hf_config):
    hf_server.pending_delay = hf_server.init_delay = hf_server.update_delay = 0.0
    hf_server.faults(fail_rate=0.15, timeout_rate=0.15, fail_status=500, fault_sleep=0.3, timeout_applies=True, seed=9)
    config = {**hf_config, "timeout_seconds": 0.1}
    host = HFEndpointHost()
    for number, commit in enumerate([C1, C2, C2, C1], start=1):
        retry(lambda c=commit, n=number: host.deploy(hf_spec(config, n, c)))
        status = retry(lambda: host.status(config, HF_TOKEN))
        assert status.state == "ready" and status.serving[0].host_release_id == commit
    assert sum(hf_server.faults_injected.values()) > 0
    assert hf_server.releases_created == 3


def test_hf_base_url_is_per_call_under_concurrency(hf_config):
    """The client's endpoint is a module global: concurrent calls to two servers must not cross."""
    with HFEndpointsServer(token=HF_TOKEN) as one, HFEndpointsServer(token=HF_TOKEN) as two:
        servers = (one, two)
        for server in servers:
            server.add_revision("acme/clf", C1)
        errors = []

        def work(server):
            try:
                for _ in range(5):
                    HFEndpointHost().deploy(hf_spec({**hf_config, "base_url": server.api_url}, 1, C1))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(server,)) for server in servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [s.releases_created for s in servers] == [1, 1]
        for server in servers:  # 5 GETs + 1 POST each: none went to the other server
            api = [r["method"] for r in server.requests if r["path"].startswith("/v2/")]
            assert (api.count("GET"), api.count("POST")) == (5, 1)


# ---------------------------------------------------------------------------------------------------
# Modal (the real `modal` CLI, its gRPC client replaced; see tests/fakes/modal_cli.py)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def modal_state(tmp_path, monkeypatch):
    bin_dir, state_path = tmp_path / "bin", tmp_path / "modal-state.json"
    modal_cli.install(bin_dir, state_path, token_id=MODAL_ID, token_secret=MODAL_SECRET, workspace="acme")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv(modal_cli.STATE_ENV, str(state_path))
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-worker-own-token")  # must not leak into a target's calls
    return modal_cli.State(state_path)


MODAL_CONFIG = {"app_name": "clf-prod", "requirements": ["scikit-learn==1.5.2"], "timeout_seconds": 30}
MODAL_APP = modal_cli._app_id("main", "clf-prod")  # the stand-in's id of the app first deployed as clf-prod


def tags(state: modal_cli.State) -> list[tuple[int, str]]:
    return [(row["version"], row["tag"]) for row in state.history("clf-prod")]


def test_modal_deploy_history_and_rollback_through_the_cli(modal_state, no_secrets_logged):
    host = HOSTS["modal"].adapter()
    assert isinstance(host, ModalHost)
    assert host.status(MODAL_CONFIG, MODAL_CRED).state == "absent"

    first = host.deploy(spec(MODAL_CONFIG, MODAL_CRED, 1, digest=D1))
    assert (first.host_release_id, first.ready) == (f"v1@{MODAL_APP}", True)
    assert first.endpoint_url == "https://acme--clf-prod-predict.modal.run"
    state = modal_state.read()
    assert tags(modal_state) == [(1, "v1-" + "a1" * 6)]
    assert state["apps"]["main/clf-prod"]["history"][0]["functions"] == ["predict", "release"]  # the real SDK
    deploy_call = next(c["argv"] for c in state["calls"] if c["argv"][0] == "deploy")
    assert deploy_call[2:] == ["--name", "clf-prod", "--tag", "v1-" + "a1" * 6]
    assert all(MODAL_SECRET not in " ".join(c["argv"]) for c in state["calls"])

    status = host.status(MODAL_CONFIG, MODAL_CRED)
    assert status.state == "ready"
    serving = [(s.release_number, s.host_release_id, s.traffic_percent) for s in status.serving]
    assert serving == [(0, f"v1@{MODAL_APP}", 100)]

    calls = len(modal_state.read()["calls"])
    again = host.deploy(spec(MODAL_CONFIG, MODAL_CRED, 1, digest=D1))
    assert again.host_release_id == f"v1@{MODAL_APP}"
    state = modal_state.read()
    assert state["deploys"] == 1
    assert [c["argv"][:2] for c in state["calls"][calls:]] == [["app", "history"], ["app", "info"]]

    assert host.deploy(spec(MODAL_CONFIG, MODAL_CRED, 2, digest=D2)).host_release_id == f"v2@{MODAL_APP}"
    rollback = host.deploy(spec(MODAL_CONFIG, MODAL_CRED, 1, digest=D1))  # rollback = the earlier spec
    assert rollback.host_release_id == f"v3@{MODAL_APP}"
    state = modal_state.read()
    assert (state["deploys"], state["rollbacks"]) == (2, 1)
    assert ["app", "rollback", "clf-prod", "v1"] in [c["argv"] for c in state["calls"]]
    assert tags(modal_state)[-1] == (3, "v1-" + "a1" * 6)
    assert host.status(MODAL_CONFIG, MODAL_CRED).serving[0].host_release_id == f"v3@{MODAL_APP}"


def test_modal_cli_gets_its_token_and_none_of_the_workers_secrets(modal_state, monkeypatch, tmp_path):
    """The CLI gets an allow-listed environment: the target's token and where Modal is, never the worker's secrets
    (SECRET_KEY, DATABASE_URL, AWS_*, another target's `env:` token) nor its own Modal profile."""
    planted = plant_worker_secrets(monkeypatch, MODAL_ENVIRONMENT="the-workers-own")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-such.modal.toml"))

    host = ModalHost()
    host.deploy(spec(MODAL_CONFIG, MODAL_CRED, 1, digest=D1))
    assert host.status(MODAL_CONFIG, MODAL_CRED).state == "ready"

    calls = modal_state.read()["calls"]
    assert [c["argv"][:2] for c in calls] == [
        ["app", "history"],
        ["deploy", calls[1]["argv"][1]],
        ["app", "history"],
        ["app", "info"],  # the app's id, for the host release id
        ["app", "info"],
    ]
    for call in calls:
        env = set(call["env"])
        assert {"PATH", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH"} <= env, call["argv"]
        assert not set(planted) & env, call["argv"]


def test_modal_cli_reads_no_profile_from_the_workers_home(modal_state, monkeypatch, tmp_path):
    """The CLI read the worker's ~/.modal.toml (HOME is passed on): its profile's `environment = "scratch"` sent a
    target that names no environment into scratch. Unless the worker sets MODAL_CONFIG_PATH, the CLI reads none."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".modal.toml").write_text(
        '[worker]\ntoken_id = "ak-worker-own"\ntoken_secret = "as-worker-own"\nenvironment = "scratch"\nactive = true\n'
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MODAL_CONFIG_PATH", raising=False)

    host = ModalHost()
    result = host.deploy(spec(MODAL_CONFIG, MODAL_CRED, 1, digest=D1))
    assert list(modal_state.read()["apps"]) == ["main/clf-prod"]  # the default environment, not the profile's
    assert result.host_release_id == f"v1@{MODAL_APP}"
    assert host.status(MODAL_CONFIG, MODAL_CRED).serving[0].host_release_id == result.host_release_id


def test_modal_rollback_without_a_tag_falls_back_to_a_tagged_deploy(modal_state):
    """If a rollback's history row does not repeat the tag, the adapter deploys so the history says what serves."""
    with modal_state.edit() as data:
        data["rollback_copies_tag"] = False
    host = ModalHost()
    config = {**MODAL_CONFIG, "environment": "prod"}
    modal_state.seed("clf-prod", ["v1-" + "a1" * 6, "v2-" + "b2" * 6], env="prod")
    result = host.deploy(spec(config, MODAL_CRED, 1, digest=D1))
    history = [(row["version"], row["tag"]) for row in modal_state.history("clf-prod", env="prod")]
    assert history == [(1, "v1-" + "a1" * 6), (2, "v2-" + "b2" * 6), (3, ""), (4, "v1-" + "a1" * 6)]
    assert result.host_release_id == f"v4@{modal_cli._app_id('prod', 'clf-prod')}"
    assert all(call["argv"][-2:] == ["-e", "prod"] for call in modal_state.read()["calls"])


def test_modal_stopped_app_is_absent_and_redeployed(modal_state):
    """Deployed again, a stopped app is a new app whose versions start at v1 again: the host release id names the
    app, so it is not the stopped app's v1 (two releases stored one id, and a rollback to the older was taken for
    served: marked live with no deploy)."""
    host = ModalHost()
    modal_state.seed("clf-prod", ["v1-" + "a1" * 6])
    with modal_state.edit() as data:
        data["apps"]["main/clf-prod"]["state"] = "stopped"  # someone ran `modal app stop`
    assert host.status(MODAL_CONFIG, MODAL_CRED).state == "absent"
    redeployed = host.deploy(spec(MODAL_CONFIG, MODAL_CRED, 1, digest=D1)).host_release_id
    app_id = modal_state.read()["apps"]["main/clf-prod"]["app_id"]
    assert app_id != MODAL_APP and redeployed == f"v1@{app_id}" != f"v1@{MODAL_APP}"
    assert modal_state.read()["deploys"] == 2
    assert host.status(MODAL_CONFIG, MODAL_CRED).serving[0].host_release_id == redeployed


def test_modal_errors_are_classified_from_the_cli(modal_state, no_secrets_logged):
    host = ModalHost()
    with pytest.raises(HostError) as unauthorized:
        host.status(MODAL_CONFIG, f"{MODAL_ID}:as-wrong-secret-000000")
    assert unauthorized.value.retryable is False and "AuthError" in str(unauthorized.value)

    with pytest.raises(HostError) as malformed:
        host.status(MODAL_CONFIG, "no-colon-token")
    assert malformed.value.retryable is False

    modal_state.faults(fail_rate=1.0)
    with pytest.raises(HostError) as unavailable:
        host.deploy(spec(MODAL_CONFIG, MODAL_CRED, 1, digest=D1))
    assert unavailable.value.retryable is True and "ServiceError" in str(unavailable.value)

    modal_state.faults(fail_rate=0.0, timeout_rate=1.0, fault_sleep=10)
    started = time.monotonic()
    with pytest.raises(HostError) as slow:
        host.status({**MODAL_CONFIG, "timeout_seconds": 2.5}, MODAL_CRED)
    assert slow.value.retryable is True and "timed out" in str(slow.value)
    assert time.monotonic() - started < 5
    assert modal_state.read()["deploys"] == 0


def test_modal_cli_error_parsing():
    box = "╭─ Traceback ─╮\n│ frames │\n╰─────────────╯\n"
    assert modal_module._exception(box + "NotFoundError: No App with name 'x' found in the 'main' environment.\n") == (
        "NotFoundError",
        "No App with name 'x' found in the 'main' environment.",
    )
    assert modal_module._exception("╭─ Error ─╮\n│ Could not connect to the Modal server. │\n╰───╯\n") == (
        "",
        "Could not connect to the Modal server.",
    )


def test_modal_generated_app_is_valid_python_with_data_not_code():
    config = modal_module.validate_config({"app_name": "clf-prod", "gpu": "T4", "handler": "serve.sk:predict"})
    source = modal_module.app_source(
        spec(config, MODAL_CRED, 7, digest=D1, artifact_uri="s3://bucket/x'); import os #"),
        config,
        "v7-" + "a1" * 6,
    )
    compile(source, "generated.py", "exec")
    assert "import os #" not in source.replace("\\", "").split("RELEASE = json.loads")[0]
    assert "gpu='T4'" in source and "modal.App('clf-prod', image=image)" in source


# ---------------------------------------------------------------------------------------------------
# Configuration validation (strict, shared by the API and the adapters)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "config", "field"),
    [
        (replicate_module, {"owner": "acme", "deployment": "d", "model": "acme/m", "api_token": "x"}, "api_token"),
        (replicate_module, {"owner": "acme", "deployment": "d", "model": "nope"}, "model"),
        (replicate_module, {"owner": "acme", "deployment": "D!", "model": "acme/m"}, "deployment"),
        (
            replicate_module,
            {"owner": "acme", "deployment": "d", "model": "acme/m", "base_url": "http://evil.example"},
            "base_url",
        ),
        (
            replicate_module,
            {"owner": "acme", "deployment": "d", "model": "acme/m", "min_instances": 3, "max_instances": 2},
            "min_instances",
        ),
        (replicate_module, {"owner": "acme", "deployment": "d", "model": "acme/m", "timeout_seconds": 0}, "timeout"),
        (hf_module, {"namespace": "acme", "endpoint": "Bad_Name", "repository": "acme/m"}, "endpoint"),
        (hf_module, {"namespace": "acme", "endpoint": "e", "repository": "acme/m", "type": "open"}, "type"),
        (hf_module, {"namespace": "acme", "endpoint": "e", "repository": "acme/m", "hf_token": "x"}, "hf_token"),
        (modal_module, {"app_name": "a", "requirements": ["ok==1", "x; rm -rf /"]}, "requirements"),
        (modal_module, {"app_name": "a", "handler": "os.system('x')"}, "handler"),
        (modal_module, {"app_name": "a b"}, "app_name"),
    ],
)
def test_config_validation_is_strict(module, config, field):
    with pytest.raises(InvalidInput) as refused:
        module.validate_config(config)
    assert field in str(refused.value)


def test_valid_configs_pass_unchanged():
    replicate_config = {"owner": "acme", "deployment": "d", "model": "acme/m", "base_url": "https://proxy.example"}
    assert replicate_module.validate_config(replicate_config) == replicate_config
    hf_config = {"namespace": "acme", "endpoint": "e-1", "repository": "acme/m", "timeout_seconds": 2.5}
    assert hf_module.validate_config(hf_config) == hf_config
    assert modal_module.validate_config({"app_name": "a", "environment": "prod"}) == {
        "app_name": "a",
        "environment": "prod",
    }


def test_scrub_removes_credentials_from_messages():
    assert scrub(f"bad token {R_TOKEN}", R_TOKEN) == "bad token ***"
    assert MODAL_SECRET not in scrub(f"secret {MODAL_SECRET} id {MODAL_ID}", MODAL_CRED)


@pytest.mark.parametrize(
    ("module", "config", "default"),
    [
        (replicate_module, {"owner": "acme", "deployment": "d", "model": "acme/m"}, "https://api.replicate.com"),
        (
            hf_module,
            {"namespace": "acme", "endpoint": "e", "repository": "acme/m"},
            "https://api.endpoints.huggingface.cloud/v2",
        ),
    ],
    ids=["replicate", "hf"],
)
def test_one_api_base_under_any_spelling_is_one_resource(module, config, default):
    """Two targets must not share a deployment or endpoint: the key holds the service's URL, not its spelling."""

    def key(base_url: str | None) -> frozenset[str]:
        return module.resources({**config, "base_url": base_url} if base_url else config, "")

    scheme, _, rest = default.partition("://")
    host, _, path = rest.partition("/")
    path = f"/{path}" if path else ""
    for spelling in (
        default,
        f"{default}/",
        f"{scheme.upper()}://{host.upper()}{path}",
        f"{scheme}://{host}:443{path}/",
    ):
        assert key(spelling) == key(None), spelling
    assert key(f"{scheme}://{host}:8443{path}") != key(None)
    assert key("http://127.0.0.1:80/v2/") == key("HTTP://127.0.0.1/v2") != key("http://127.0.0.1:8701/v2")
