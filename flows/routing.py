"""Where the model tasks run and how many at once: the route (inline or the resident task worker),
the generation slot of the global concurrency limit, and the call that sends a task its way.

The route is chosen by the environment, which ``covercraft serve`` sets for its flow runs:

- ``COVERCRAFT_GENERATE_ROUTE=task-worker``: submit to the task worker (``flows.worker``; results
  travel through Prefect's result storage, ``PREFECT_LOCAL_STORAGE_PATH``: shared by processes on
  one host; use a shared volume or remote storage when task workers run on other hosts);
- unset or ``inline``: run in the flow's own process (``covercraft run``, tests).

``COVERCRAFT_GENERATION_LIMIT`` names the Prefect global concurrency limit taken, strictly, around
each generation, wherever it runs, as a lease of ``COVERCRAFT_GENERATION_LEASE`` seconds
(``flows.recovery``); unset means no limit (``covercraft run`` on a laptop).
"""


from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ROUTE_ENV = "COVERCRAFT_GENERATE_ROUTE"
LIMIT_ENV = "COVERCRAFT_GENERATION_LIMIT"
LIMIT_TIMEOUT_ENV = "COVERCRAFT_GENERATION_LIMIT_TIMEOUT"
RESULT_TIMEOUT_ENV = "COVERCRAFT_GENERATE_TIMEOUT"
ROUTES = ("inline", "task-worker")

log = logging.getLogger(__name__)


def route() -> str:
    value = os.environ.get(ROUTE_ENV, "inline") or "inline"
    if value not in ROUTES:
        raise ValueError(f"{ROUTE_ENV}={value!r} is not a route; use one of {', '.join(ROUTES)}")
    return value


@contextmanager
def generation_slot() -> Iterator[None]:
    """Hold one slot of the configured global concurrency limit (strict: a missing limit is an error)."""
    name = os.environ.get(LIMIT_ENV)
    if not name:
        yield
        return
    from prefect.concurrency.sync import concurrency

    from flows.recovery import slot_lease_seconds

    timeout = float(os.environ.get(LIMIT_TIMEOUT_ENV, "3600"))
    # The slot is a lease the holder renews while it generates: if its process dies, the slot
    # frees when the lease runs out instead of staying taken.
    with concurrency(name, occupy=1, strict=True, timeout_seconds=timeout,
                     lease_duration=slot_lease_seconds()):
        yield


def call(task, *args: Any) -> Any:
    """Run a model task on the resident task worker, or inline, by ``route()``."""
    if route() != "task-worker":
        return task(*args)
    deadline = time.monotonic() + float(os.environ.get(RESULT_TIMEOUT_ENV, "7200"))
    future = task.delay(*args)
    while True:
        try:
            return future.result(timeout=max(deadline - time.monotonic(), 1.0))
        except RuntimeError as err:
            # Prefect 3.8 race: right after .delay() the server may show the deferred task run
            # with no state yet (its event-based recorder lags), and the future gives up at once
            # with "has no state". The run exists and is being worked on: ask again.
            if "has no state" not in str(err) or time.monotonic() > deadline:
                raise
            log.debug("task run %s has no state yet; waiting", future.task_run_id)
            time.sleep(0.5)
