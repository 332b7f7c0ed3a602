"""Recovery from dead processes, with Prefect's own mechanisms.

A flow run whose process dies (a killed ``covercraft serve``, a lost host) cannot report its end. So:

- flow runs send **heartbeats** (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, set for the runs that
  ``covercraft serve`` starts and, in ``prefect.yaml``, for work-pool runs);
- an **automation** on the server (``covercraft-crashed-runs``) marks a Covercraft run Crashed
  when its heartbeats stop for ``crash_after_seconds`` (Prefect's "zombie flow" recipe), so nothing
  stays Running; the feed watcher then starts that post again (``flows.feed``);
- the generation slot of the global concurrency limit is a **lease** renewed while the generation
  runs: a dead holder's slot frees within ``slot_lease_seconds``.
"""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
LEASE_ENV = "COVERCRAFT_GENERATION_LEASE"
AUTOMATION_NAME = "covercraft-crashed-runs"
# Heartbeats are what a run sends while it is alive; its end states stop the watch for it.
_ALIVE_OR_DONE = ["prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                  "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"]


class RecoveryConfig(BaseModel):
    """configs/deploy.yaml ``recovery``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heartbeat_seconds: int = Field(30, ge=30, le=600)  # Prefect accepts 30 s and up
    crash_after_seconds: int = Field(90, ge=60, le=3600)
    slot_lease_seconds: float = Field(60.0, ge=60, le=3600)  # the server accepts 60 s and up
    tag: str = "covercraft"  # runs carrying this tag are watched (configs/deploy.yaml deployments.tags)

    @model_validator(mode="after")
    def _two_beats(self) -> RecoveryConfig:
        if self.crash_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(f"crash_after_seconds ({self.crash_after_seconds}) must be at least twice "
                             f"heartbeat_seconds ({self.heartbeat_seconds}): one late heartbeat is not a crash")
        return self

    def environment(self) -> dict[str, str]:
        """What flow runs and task workers need in their environment."""
        return {HEARTBEAT_ENV: str(self.heartbeat_seconds), LEASE_ENV: f"{self.slot_lease_seconds:g}"}


def slot_lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV, "60"))


def crashed_runs_automation(cfg: RecoveryConfig):
    """The automation: a tagged flow run with no heartbeat (and no end state) for
    ``crash_after_seconds`` after its last one is set to Crashed."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(f"Marks a flow run tagged {cfg.tag!r} Crashed when it sends no heartbeat for "
                     f"{cfg.crash_after_seconds} s (its process died). Created by covercraft serve."),
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.tag.{cfg.tag}"},
            after={"prefect.flow-run.heartbeat"},
            expect=set(_ALIVE_OR_DONE),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=cfg.crash_after_seconds,
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"No heartbeat for {cfg.crash_after_seconds} s: the process running this flow run died.",
        )],
    )


def ensure_crashed_runs_automation(cfg: RecoveryConfig) -> bool:
    """Create the automation, or replace it when its settings changed; True when written."""
    from prefect.client.orchestration import get_client

    wanted = crashed_runs_automation(cfg)
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(AUTOMATION_NAME)
        same = [a for a in existing if a.trigger == wanted.trigger and a.actions == wanted.actions]
        if same and len(existing) == 1:
            return False
        for automation in existing:
            client.delete_automation(automation.id)
        client.create_automation(wanted)
    log.info("automation %s: flow runs tagged %r without a heartbeat for %d s are marked Crashed",
             AUTOMATION_NAME, cfg.tag, cfg.crash_after_seconds)
    return True
