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


def _children(pid: int) -> list[int]:
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def test_covercraft_worker_restarts_its_task_worker_and_stops_cleanly(prefect_server, tmp_path):
    """`covercraft worker` supervises the task worker like `serve` does: killed, it comes back."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(f"worker: {{warm: false, result_storage: {tmp_path / 'results'}}}\n"
                   f"concurrency: {{name: gen-{uuid.uuid4().hex[:6]}, limit: 1}}\n")
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_LOCAL_STORAGE_PATH", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "worker", "--deploy-config", str(cfg)], env=env,
                            cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        (first,) = _children(proc.pid)
        environ = Path(f"/proc/{first}/environ").read_bytes().split(b"\0")
        assert f"PREFECT_LOCAL_STORAGE_PATH={tmp_path / 'results'}".encode() in environ
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and [p for p in _children(proc.pid) if p != first] == []:
            time.sleep(0.5)
        assert [p for p in _children(proc.pid) if p != first], "the task worker was not restarted"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-2000:]
        assert _children(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
