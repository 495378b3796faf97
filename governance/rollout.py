"""Canary rollouts: the plan a target declares, and the pure judgement of one step's health.

A target whose host can split traffic may declare `rollout`:

    {"steps": [10, 50, 100], "step_seconds": 60, "max_error_rate": 0.01,
     "max_latency_ms": 500, "min_requests": 0}

A new release then takes `steps[0]` percent of the traffic beside the release that serves, and moves
to the next step when it has held the current one for `step_seconds` with an error rate (5xx and
failed responses over requests, as the host counts them) at most `max_error_rate` and, when set, a
latency at most `max_latency_ms`. A step that fails its gate ends the rollout: traffic returns to the
serving release and the new one fails with the reason. No Django here.
"""

from dataclasses import dataclass

from core.errors import InvalidInput
from governance.hosts.base import Health

FIELDS = {"steps", "step_seconds", "max_error_rate", "max_latency_ms", "min_requests"}


@dataclass(frozen=True)
class Rollout:
    steps: tuple[int, ...]
    step_seconds: int = 60
    max_error_rate: float = 0.01
    max_latency_ms: float | None = None
    min_requests: int = 0

    def next_step(self, percent: int) -> int:
        """The step after `percent` (100 when it is the last one)."""
        return next((step for step in self.steps if step > percent), 100)


def _fail(field: str, problem: str):
    raise InvalidInput(f"Invalid rollout: rollout.{field}: {problem}", detail={f"rollout.{field}": [problem]})


def _number(value, field: str, low: float, high: float, *, integer: bool) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        _fail(field, f"Must be {'an integer' if integer else 'a number'} from {low} to {high}.")
    return value


def parse_rollout(raw: dict | None, *, capabilities: frozenset[str], kind: str) -> dict:
    """Validate a target's rollout declaration; returns it normalized ({} when there is none)."""
    if not raw:
        return {}
    if not isinstance(raw, dict):
        _fail("steps", "The rollout must be an object.")
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        _fail(unknown[0], f"Unknown field; use {', '.join(sorted(FIELDS))}.")
    if not {"traffic_split", "health"} <= capabilities:
        _fail("steps", f"A {kind} target cannot split traffic or report health per release: no canary steps.")
    steps = raw.get("steps")
    if not isinstance(steps, list) or not steps:
        _fail("steps", "A list of increasing traffic percentages ending with 100, e.g. [10, 50, 100].")
    for step in steps:
        _number(step, "steps", 1, 100, integer=True)
    if steps[-1] != 100 or any(a >= b for a, b in zip(steps, steps[1:], strict=False)):
        _fail("steps", "The percentages must increase and end with 100, e.g. [10, 50, 100].")
    result = {"steps": steps}
    result["step_seconds"] = _number(raw.get("step_seconds", 60), "step_seconds", 1, 86400, integer=True)
    result["max_error_rate"] = _number(raw.get("max_error_rate", 0.01), "max_error_rate", 0, 1, integer=False)
    if raw.get("max_latency_ms") is not None:
        result["max_latency_ms"] = _number(raw["max_latency_ms"], "max_latency_ms", 1, 600000, integer=False)
    result["min_requests"] = _number(raw.get("min_requests", 0), "min_requests", 0, 10**9, integer=True)
    return result


def plan(rollout: dict) -> Rollout | None:
    """The Rollout of a validated declaration, or None when the target has no canary steps."""
    if not rollout or rollout.get("steps") in (None, [100]):
        return None
    return Rollout(
        steps=tuple(rollout["steps"]),
        step_seconds=rollout.get("step_seconds", 60),
        max_error_rate=rollout.get("max_error_rate", 0.01),
        max_latency_ms=rollout.get("max_latency_ms"),
        min_requests=rollout.get("min_requests", 0),
    )


def judge(rollout: Rollout, percent: int, baseline: Health, now: Health, held_seconds: float) -> tuple[str, str]:
    """("fail" | "wait" | "advance", why) for a release holding `percent` since `baseline` was taken."""
    label = f"canary step {percent}%"
    if not now.up:
        return "fail", f"{label}: the host's health check reports the release down"
    # Counters below the baseline were reset (HAProxy restarted, its server state kept): count from zero,
    # or the errors since the reset would vanish into a negative difference.
    reset = now.requests < baseline.requests or now.errors < baseline.errors
    requests = now.requests if reset else now.requests - baseline.requests
    errors = now.errors if reset else now.errors - baseline.errors
    if requests and errors / requests > rollout.max_error_rate:
        return "fail", (
            f"{label}: error rate {errors / requests:.1%} ({errors} of {requests} requests) "
            f"is above the allowed {rollout.max_error_rate:.1%}"
        )
    slow = rollout.max_latency_ms is not None and requests and now.latency_ms is not None
    if slow and now.latency_ms > rollout.max_latency_ms:
        return "fail", f"{label}: latency {now.latency_ms:.0f} ms is above the allowed {rollout.max_latency_ms:.0f} ms"
    if held_seconds < rollout.step_seconds:
        return "wait", f"{label}: held {held_seconds:.0f}s of {rollout.step_seconds}s"
    if requests < rollout.min_requests:
        return "wait", f"{label}: {requests} requests seen, {rollout.min_requests} needed to judge it"
    return "advance", f"{label}: {requests} requests, {errors} errors in {held_seconds:.0f}s"
