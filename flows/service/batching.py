"""A bounded queue in front of the generator that runs compatible requests as one batch.

One worker thread owns the generator (JAX work is serialised anyway, and one thread keeps
compiled shapes and memory predictable). Requests are ``Job``s; jobs whose ``key`` is equal may
share a batch (same sampling settings, same kind of work), up to ``max_batch`` rows. When the
queue holds ``max_pending`` jobs (waiting or running) the next ``submit`` raises ``QueueFull``
with an estimate of when to retry. ``close`` stops intake and finishes what was accepted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue is at its bound; ``retry_after`` is a whole number of seconds to wait."""

    def __init__(self, pending: int, retry_after: int):
        super().__init__(f"{pending} requests are already queued")
        self.pending = pending
        self.retry_after = retry_after


class QueueClosed(Exception):
    """The service is shutting down and accepts no new work."""


@dataclass(eq=False)
class Job:
    """One request's work. ``key`` None means the job always runs alone."""

    key: Hashable | None
    rows: int
    payload: Any
    deadline: float  # time.monotonic() after which the result is no longer wanted
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


RunBatch = Callable[[Sequence[Job]], Sequence[Any]]


class BatchQueue:
    """``submit`` from any thread; ``run_batch(jobs) -> results`` runs on the worker thread.

    ``run_batch`` gets jobs with one shared key (or a single job) and returns one result per job,
    in order; an exception fails every job of the batch.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_pending: int,
        max_batch: int,
        batch_wait: float,
        name: str = "covercraft-batcher",
    ):
        self._run_batch = run_batch
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.batch_wait = batch_wait
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._pending = 0  # queued + running
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        # Recent seconds per batch and jobs per batch, for Retry-After estimates.
        self._batch_seconds = 1.0
        self._jobs_per_batch = 1.0
        self.batches_run = 0
        self.jobs_run = 0
        self.largest_batch = 0

    # -- intake ---------------------------------------------------------------------------
    def start(self) -> BatchQueue:
        self._thread.start()
        return self

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    @property
    def closed(self) -> bool:
        return self._closed

    def retry_after(self) -> int:
        """Seconds until about half of the queue has drained (1 to 60), from recent batch times."""
        with self._cond:
            batches = self._pending / max(self._jobs_per_batch, 1.0)
            return max(1, min(60, math.ceil(0.5 * batches * self._batch_seconds)))

    def submit(self, key: Hashable | None, rows: int, payload: Any, timeout: float) -> Job:
        job = Job(key=key, rows=rows, payload=payload, deadline=time.monotonic() + timeout)
        with self._cond:
            if self._closed:
                raise QueueClosed("the service is shutting down")
            if self._pending >= self.max_pending:
                pending = self._pending
            else:
                pending = -1
                self._pending += 1
                self._queue.append(job)
                self._cond.notify_all()
        if pending >= 0:
            raise QueueFull(pending, self.retry_after())
        return job

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, finish the accepted ones, stop the worker; True when it stopped in time."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- worker ---------------------------------------------------------------------------
    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            was_idle = len(self._queue) == 1
            first = self._queue.popleft()
            batch = [first]
            if first.key is None:
                return batch
            # When the worker was idle, wait a moment: clients that fire together arrive a few
            # milliseconds apart. When work has been piling up, go with what is there.
            if was_idle and self.batch_wait > 0 and first.rows < self.max_batch and not self._closed:
                until = time.monotonic() + self.batch_wait
                while (left := until - time.monotonic()) > 0 and not self._closed:
                    if self._compatible_rows(first.key) + first.rows >= self.max_batch:
                        break
                    self._cond.wait(left)
            rows = first.rows
            kept: deque[Job] = deque()
            while self._queue:
                job = self._queue.popleft()
                if job.key == first.key and rows + job.rows <= self.max_batch:
                    batch.append(job)
                    rows += job.rows
                else:
                    kept.append(job)
            self._queue = kept
            return batch

    def _compatible_rows(self, key: Hashable) -> int:
        return sum(j.rows for j in self._queue if j.key == key)

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = []
            now = time.monotonic()
            for job in batch:
                # A cancelled future means the client gave up (timeout or disconnect).
                if not job.future.set_running_or_notify_cancel():
                    continue
                if job.deadline <= now:
                    job.future.set_exception(TimeoutError("the request waited past its timeout"))
                    continue
                live.append(job)
            start = time.perf_counter()
            try:
                if live:
                    results = self._run_batch(live)
                    if len(results) != len(live):
                        raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} jobs")
                    for job, result in zip(live, results, strict=True):
                        job.future.set_result(result)
            except BaseException as err:  # noqa: BLE001 - every failure goes back to the callers
                log.exception("batch of %d jobs failed", len(live))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(err)
            finally:
                took = time.perf_counter() - start
                with self._cond:
                    self._pending -= len(batch)
                    if live:
                        self._batch_seconds = 0.7 * self._batch_seconds + 0.3 * took
                        self._jobs_per_batch = 0.7 * self._jobs_per_batch + 0.3 * len(live)
                        self.batches_run += 1
                        self.jobs_run += len(live)
                        self.largest_batch = max(self.largest_batch, len(live))
                    self._cond.notify_all()
