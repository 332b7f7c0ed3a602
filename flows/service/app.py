"""The app factory: ``create_app(service, settings, generator=None) -> FastAPI``.

The generator is loaded once, in the lifespan (or passed in by tests), and owned by the batching
queue's worker thread. Shutdown (uvicorn waits for in-flight requests first) drains the queue.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flows.service import errors
from flows.service.api import router as images_router
from flows.service.api import sampling_for
from flows.service.auth import KeyChecker
from flows.service.batching import BatchQueue
from flows.service.engine import ImageEngine
from flows.service.hook import PublishHook, prefect_api_url
from flows.service.hook import router as hook_router
from flows.service.limits import BodyLimit
from flows.service.settings import ServiceSettings
from flows.service.state import ServiceState
from flows.service.store import ImageStore
from flows.settings import ConfigError, Settings, load_settings

log = logging.getLogger(__name__)


def create_app(
    service: ServiceSettings | None = None,
    settings: Settings | None = None,
    *,
    generator: Any = None,
    environ: Mapping[str, str] | None = None,
    warm_up: bool = True,
) -> FastAPI:
    """Build the service. ``generator`` None loads ``settings.model`` at startup (``get_generator``).

    Raises ConfigError when authentication is required but no API key is configured.
    """
    service = service or ServiceSettings()
    settings = settings or load_settings()
    environ = os.environ if environ is None else environ
    keys = service.api_keys(environ)
    if service.require_auth and not keys:
        raise ConfigError(
            f"no API keys configured: set {service.api_keys_env}=key1[,key2...] "
            "(or service.require_auth: false for local experiments)"
        )
    if service.hook.default_mode == "async" and not prefect_api_url():
        raise ConfigError(
            "service.hook.default_mode is async but PREFECT_API_URL is not set: point it at the "
            "Prefect server that serves the blog-to-images deployment, or use default_mode: sync"
        )

    state = ServiceState(
        service=service,
        settings=settings,
        store=ImageStore(service.images.url_ttl, service.images.store_max_bytes),
    )
    state.hook = PublishHook(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gen = generator
        if gen is None:
            from flows.model import get_generator

            log.info("loading the model (%s)", settings.model.source)
            gen = await anyio.to_thread.run_sync(get_generator, settings.model)
        engine = ImageEngine(gen, service.queue.max_batch, fixed=service.queue.fixed_batch)
        if warm_up:
            log.info("compiling the sampling and decoding shapes")
            await anyio.to_thread.run_sync(engine.warm_up, sampling_for(state))
        q = service.queue
        state.engine = engine
        state.queue = BatchQueue(engine.run_batch, max_pending=q.max_pending, max_batch=q.max_batch,
                                 batch_wait=q.batch_wait_ms / 1000.0).start()
        log.info("serving %s (%s); queue bound %d, batches of up to %d rows",
                 service.model_id, gen.info.name, q.max_pending, q.max_batch)
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for in-flight requests; anything still
            # queued (e.g. hook renders) is finished before the worker stops.
            log.info("shutting down: finishing %d queued requests", state.queue.pending)
            stopped = await anyio.to_thread.run_sync(state.queue.close, service.shutdown_timeout)
            if not stopped:
                log.warning("the generator worker did not stop within %ss", service.shutdown_timeout)

    app = FastAPI(
        title="Covercraft images API",
        version="0.1.0",
        description="OpenAI-compatible image generation, variations and edits on an in-process "
        "DALL·E Mini, and a publishing hook that turns a post into per-platform images.",
        lifespan=lifespan,
    )
    app.state.covercraft = state
    app.state.keys = KeyChecker(keys, service.require_auth)
    errors.install(app)
    app.include_router(images_router)
    app.include_router(hook_router)

    @app.get("/health", tags=["health"])
    async def health(request: Request):
        """Liveness and readiness: 200 once the model is loaded, 503 while loading or stopping."""
        q = state.queue
        ready = q is not None and not q.closed
        body = {
            "status": "ok" if ready else ("stopping" if q is not None else "loading"),
            "model": state.engine.generator.info.to_dict() if state.engine else None,
            "queue": None if q is None else {
                "pending": q.pending, "max_pending": q.max_pending, "max_batch": q.max_batch,
                "batches_run": q.batches_run, "jobs_run": q.jobs_run, "largest_batch": q.largest_batch,
            },
            "images_stored": len(state.store),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    # Bodies are capped at an image and a mask at their limit, plus multipart framing and fields.
    app.add_middleware(BodyLimit, limit=2 * service.uploads.max_bytes + 256 * 1024)
    return app
