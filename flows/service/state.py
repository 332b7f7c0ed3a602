"""What the routes share: settings, the generator's engine, the batching queue, the URL store."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from flows.service.batching import BatchQueue, QueueClosed, QueueFull
from flows.service.engine import ExclusiveWork, ImageEngine, SampleWork
from flows.service.errors import APIError
from flows.service.settings import ServiceSettings
from flows.service.store import ImageStore
from flows.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    service: ServiceSettings
    settings: Settings
    store: ImageStore
    engine: ImageEngine | None = None
    queue: BatchQueue | None = None
    started: float = field(default_factory=time.time)
    hook: Any = None  # flows.service.hook.PublishHook

    def model_ids(self) -> set[str]:
        return {self.service.model_id, *self.service.model_aliases}

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in self.model_ids():
            raise APIError(
                400,
                f"Invalid value for 'model': {model!r}; this service serves {self.service.model_id!r} "
                f"(aliases: {', '.join(self.service.model_aliases) or 'none'}). See GET /v1/models.",
                param="model",
                code="model_not_found",
            )

    def base_url(self, request: Request) -> str:
        if self.service.public_url:
            return self.service.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")

    async def run(self, work: SampleWork | ExclusiveWork, rows: int = 1) -> Any:
        """Queue ``work`` and wait for its result within the request timeout."""
        if self.queue is None:
            raise APIError(503, "The model is still loading; retry shortly.", type="server_error",
                           code="model_loading", headers={"Retry-After": "5"})
        timeout = self.service.queue.request_timeout
        key = work.batch_key() if isinstance(work, SampleWork) else None
        try:
            job = self.queue.submit(key, rows, work, timeout)
        except QueueFull as err:
            raise APIError(
                429,
                f"The image queue is full ({err.pending} requests waiting); retry after "
                f"{err.retry_after} s.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(err.retry_after)},
            ) from None
        except QueueClosed:
            raise APIError(503, "The service is shutting down; retry on another instance.",
                           type="server_error", code="shutting_down", headers={"Retry-After": "5"}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout)
        except TimeoutError:
            raise APIError(
                504,
                f"The request did not finish within {timeout:g} s (service.queue.request_timeout); "
                "retry later or ask for fewer images.",
                type="timeout",
                code="timeout",
            ) from None
