"""Recovery from dead processes on a real Prefect server (prefect_test_harness): heartbeats and the
crashed-runs automation. A killed slot holder's lease is measured by benchmarks/fault_injection.py
on a full `prefect server start` (the test harness runs no lease repossessor)."""

from __future__ import annotations

import time
import uuid

import pytest

from flows import recovery

pytestmark = pytest.mark.slow


def test_a_run_whose_heartbeats_stop_is_marked_crashed(prefect_server):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.states import Running

    tag = f"covercraft-test-{uuid.uuid4().hex[:6]}"
    cfg = recovery.RecoveryConfig(crash_after_seconds=60, tag=tag)
    assert recovery.ensure_crashed_runs_automation(cfg) is True
    assert recovery.ensure_crashed_runs_automation(cfg) is False  # already there, unchanged
    with get_client(sync_client=True) as client:
        alive, dead = (client.create_flow_run(flow(lambda: None, name="zombie"), tags=[tag]) for _ in range(2))
        for run in (alive, dead):
            client.set_flow_run_state(run.id, Running(), force=True)

    def beat(run):
        emit_event(event="prefect.flow-run.heartbeat", resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"},
                   related=[{"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}])

    def states():
        with get_client(sync_client=True) as client:
            return {r.id: client.read_flow_run(r.id).state for r in (alive, dead)}

    with pytest.raises(ValueError, match="at least twice"):
        recovery.RecoveryConfig(heartbeat_seconds=60, crash_after_seconds=90)
    beat(alive), beat(dead)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 150 and states()[dead.id].type.value == "RUNNING":
            beat(alive)  # still alive: keeps beating
            time.sleep(5)
        final = states()
        assert final[dead.id].type.value == "CRASHED" and "heartbeat" in final[dead.id].message
        assert final[alive.id].type.value == "RUNNING"
        assert time.monotonic() - t0 < 100
    finally:
        with get_client(sync_client=True) as client:
            for automation in client.read_automations_by_name(recovery.AUTOMATION_NAME):
                client.delete_automation(automation.id)
