"""schemathesis against the live server's own OpenAPI schema, as every persona, over every operation.

A real server (pytest-django's live_server, a threaded WSGI server on PostgreSQL) answers requests
generated from /api/schema/ by schemathesis: positive cases (valid by the schema) and negative ones
(deliberately invalid). Path parameters mostly name the real objects of tests/hardening/conftest.py
(a model with versions, a target with policies, promotion requests, a webhook, tokens), so the
requests reach the code behind the 404s; the rest are generated. Each case is sent as one of the six
personas, with that persona's full-scope token.

Every response must pass: no 5xx; a status code the schema documents for the operation; a body and
Content-Type that conform to the schema for that status; negative cases rejected with a 4xx. Failures
are collected across all operations and reported together with a curl command to reproduce each.

Bounded: a fixed number of examples per operation (derandomized, so CI runs the same cases each
time; set HARDENING_FUZZ_SEED to explore others, HARDENING_FUZZ_SCALE to run more or fewer).
"""

import hashlib
import os
import time
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.hardening.conftest import build_world

OPENAPI_JSON = "application/vnd.oai.openapi+json"
PERSONAS = ["admin", "owner", "reviewer", "auditor", "ci_bot", "outsider"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
SCALE = float(os.environ.get("HARDENING_FUZZ_SCALE", "1"))
POSITIVE_EXAMPLES = max(1, int(26 * SCALE))
NEGATIVE_EXAMPLES = max(1, int(14 * SCALE))
MIN_CASES = 2000
V1_SHA256 = hashlib.sha256(b"v1").hexdigest()


def real_path_parameters(path: str, world) -> list[dict]:
    """Combinations of path parameter values that name real (or deliberately other) objects."""
    if path.startswith("/api/v1/targets/"):
        base = [{"name": "prod"}]
        if "{namespace}" in path:
            base = [{"name": "prod", "namespace": "acme", "model_name": "churn"}]
        return base
    if path.startswith("/api/v1/models/{namespace}/{name}"):
        base = {"namespace": "acme", "name": "churn"}
        if "{number}" in path:
            return [{**base, "number": 1}, {**base, "number": 2}]
        if "{alias}" in path:
            return [{**base, "alias": "champion"}, {**base, "alias": "prod-pin"}]
        if "{digest}" in path:
            return [{**base, "digest": f"sha256:{V1_SHA256}"}]
        return [base]
    if path.startswith("/api/v1/promotions/{id}"):
        return [{"id": world.promotion_id}, {"id": world.cancelled_promotion_id}]
    if path.startswith("/api/v1/webhooks/{id}/deliveries/{delivery_id}"):
        return [{"id": world.webhook_id, "delivery_id": world.failed_delivery_id}]
    if path.startswith("/api/v1/webhooks/{id}"):
        return [{"id": world.webhook_id}]
    if path.startswith("/api/v1/tokens/{token_id}"):
        return [{"token_id": token_id} for token_id in [*world.spare_token_ids.values(), world.foreign_token_id]]
    return []


def strategies_for(operation, world, mode):
    real = real_path_parameters(operation.path, world)
    if "{" not in operation.path:
        return [operation.as_strategy(generation_mode=mode)]
    strategies = [operation.as_strategy(generation_mode=mode, path_parameters=params) for params in real]
    # Generated path parameters too, except for token revocation: a generated id could revoke a
    # persona's own token and turn the rest of the run into 401s.
    if not operation.path.startswith("/api/v1/tokens/{token_id}"):
        strategies.append(operation.as_strategy(generation_mode=mode))
    return strategies


def recorder(operation, mode, tokens, base_url, session, cases, statuses, failures):
    """The body of one hypothesis test: send a drawn case as a drawn persona, check it, keep failures."""

    def record(drawn):
        persona, case = drawn
        headers = {"Authorization": f"Bearer {tokens[persona]}"}
        cases[operation.label] += 1
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=60)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # collect every failure; report them all at the end
            kinds = [getattr(e, "title", type(e).__name__) for e in getattr(exc, "exceptions", [exc])]
            key = f"{operation.label}: {', '.join(sorted(set(kinds)))}"
            if key not in failures:
                curl = case.as_curl_command(headers={"Authorization": f"Bearer <{persona} token>"})
                failures[key] = [0, f"[{mode.value}, {persona}] {str(exc).strip()[:1200]}\n{curl}"]
            failures[key][0] += 1

    return record


@pytest.fixture
def schema(live_server):
    response = requests.get(f"{live_server.url}/api/schema/", headers={"Accept": OPENAPI_JSON}, timeout=60)
    assert response.status_code == 200, response.text[:1000]
    return schemathesis.openapi.from_dict(response.json())


def test_fuzz_every_operation_as_every_persona(live_server, personas, memory_broker, schema):
    world = build_world(personas)
    tokens = {name: personas[name].token for name in PERSONAS}
    # Deletions last (a stable sort keeps the schema's order otherwise): fuzzed in schema order, the webhook's
    # DELETE came before its secret rotation, deliveries and redelivery, which then met only 404s.
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()), key=lambda op: op.method.upper() == "DELETE"
    )
    assert len(operations) >= 50, [op.label for op in operations]
    session = requests.Session()
    cases, statuses, failures = Counter(), Counter(), {}
    seed = os.environ.get("HARDENING_FUZZ_SEED")
    started = time.monotonic()

    for operation in operations:
        for mode, examples in (
            (schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES),
            (schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES),
        ):
            strategy = st.tuples(st.sampled_from(PERSONAS), st.one_of(strategies_for(operation, world, mode)))
            record = recorder(operation, mode, tokens, live_server.url, session, cases, statuses, failures)
            run = given(strategy)(record)
            if seed is not None:
                run = hypothesis_seed(int(seed))(run)
            settings(
                max_examples=examples,
                deadline=None,
                derandomize=seed is None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )(run)()

    session.close()
    elapsed = time.monotonic() - started
    total = sum(cases.values())
    summary = f"{total} cases over {len(cases)} operations in {elapsed:.0f}s; statuses {dict(sorted(statuses.items()))}"
    print(summary)
    report = "\n\n".join(f"{key} (x{count})\n{example}" for key, (count, example) in failures.items())
    assert not failures, f"{len(failures)} kinds of failure ({summary}):\n" + "\n".join(failures) + "\n\n" + report
    assert total >= (MIN_CASES if SCALE >= 1 else 0), summary
    assert len(cases) == len(operations), set(op.label for op in operations) - set(cases)
    # The run reached real objects, not only 404s: successes and refusals both occurred.
    assert statuses[200] + statuses[201] > total // 10, summary
    assert statuses[403] and statuses[404], summary
