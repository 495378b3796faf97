"""The canary step's verdict (governance.rollout.judge), from the host's cumulative counters."""

from governance.hosts.base import Health
from governance.rollout import judge, plan

ROLLOUT = plan({"steps": [10, 50, 100], "step_seconds": 30, "max_error_rate": 0.05})


def test_errors_since_the_baseline_fail_the_step():
    verdict, why = judge(ROLLOUT, 10, Health(requests=1000, errors=5), Health(requests=1100, errors=15), 10)
    assert verdict == "fail" and "error rate 10.0% (10 of 100 requests)" in why


def test_a_healthy_step_waits_out_its_time_then_advances():
    baseline, now = Health(requests=1000, errors=5), Health(requests=1100, errors=6)
    assert judge(ROLLOUT, 10, baseline, now, 10)[0] == "wait"
    assert judge(ROLLOUT, 10, baseline, now, 31) == ("advance", "canary step 10%: 100 requests, 1 errors in 31s")


def test_counters_reset_below_the_baseline_count_from_zero():
    """HAProxy restarted with its server state kept: the counters start again under the baseline. The
    errors since then must count (a negative difference read as 0 requests, 0 errors: an advance)."""
    verdict, why = judge(ROLLOUT, 10, Health(requests=1000, errors=0), Health(requests=50, errors=40), 31)
    assert verdict == "fail" and "40 of 50 requests" in why
