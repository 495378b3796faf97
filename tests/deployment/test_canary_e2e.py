"""Canary steps on a self-hosted target through the real worker: a healthy release climbs 20% → 100%,
a release whose model fails at inference is stopped at 20% by HAProxy's own error counters, traffic goes
back to the serving release and the failure says why."""

import json
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from audit.models import AuditEvent
from tests import processes
from tests.deployment.test_self_hosted_e2e import (
    TARGET,
    create_target,
    promote,
    register_with_cli,
    releases,
    wait_live,
)
from tests.hosts.test_self_hosted import Traffic, versions

ROLLOUT = {"steps": [20, 100], "step_seconds": 3, "max_error_rate": 0.05}


def broken_model(directory):
    """Loads and reports ready, but every inference fails inside onnxruntime (a bad Reshape)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "S"], ["output"])],
        "broken",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([7, 1], dtype=np.int64), "S")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(model.SerializeToString())
    return directory


def test_canary_advances_a_healthy_release_and_stops_a_failing_one(stack, selfhost_fleet, tmp_path):
    stack, config = stack
    create_target(stack, config, rollout=ROLLOUT)
    for n in (1, 2):
        register_with_cli(stack, tmp_path, n)
    register_with_cli(stack, tmp_path, 3, model_dir=broken_model(tmp_path / "broken"))

    promote(stack, 1)  # nothing serves yet: no canary, all traffic at once
    wait_live(stack, 1)
    with Traffic(selfhost_fleet, threads=4) as traffic:
        traffic.wait_for(30)
        promote(stack, 2)
        processes.wait(lambda: {"1", "2"} <= set(traffic.versions_between(time.monotonic() - 1)), 60, "a 20/80 split")
        wait_live(stack, 2)
        assert traffic.errors == []

        promote(stack, 3)

        def failed():
            found = {r["number"]: r for r in releases(stack)}.get(3)
            return found if found and found["state"] == "failed" else None

        release3 = processes.wait(failed, 90, "the broken release's canary to fail", interval=0.3)
        time.sleep(0.5)  # requests sent before the switch may still be answered by release 3
        calm = time.monotonic()
        traffic.wait_for(50)
    assert "canary step 20%: error rate" in release3["reason"], release3["reason"]
    errors_after = [e for e in traffic.errors if float(e.split()[0]) > calm]
    assert errors_after == [], errors_after[:3]
    assert 0 < len(traffic.errors) < len(traffic.results)  # clients felt the 20% step, not more
    assert set(traffic.versions_between(calm)) == {"2"}
    assert versions(selfhost_fleet, 10) == {"2": 10}
    states = {r["number"]: r["state"] for r in releases(stack)}
    assert states == {1: "superseded", 2: "live", 3: "failed"}

    # A rollback is not a canary: release 1 served before, so it takes all traffic at once, not a 20% step
    # beside release 2 (which a failing step would have handed all traffic back to).
    with stack.api("admin") as admin:
        rolled = admin.post(f"/targets/{TARGET}/rollback", json={"reason": "back to 1", "release": 1})
        assert rolled.status_code == 202, rolled.text
    wait_live(stack, 1)
    assert versions(selfhost_fleet, 10) == {"1": 10}
    steps = [
        json.loads(e.after) if isinstance(e.after, str) else e.after
        for e in AuditEvent.objects.filter(action="release.canary_step")
    ]
    assert [(s["number"], s["traffic_percent"]) for s in steps] == [(2, 20), (3, 20)]
