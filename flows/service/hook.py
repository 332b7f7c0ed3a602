"""The publishing hook: a post in, one image per social platform out.

``POST /v1/hooks/publish`` takes the post (``text`` or ``url``), an optional ``title``, the
``platforms`` and a ``style``.

* sync: the text stages of the pipeline run here (``flows.pipeline.text_stages``), the image
  tokens are sampled through the service's batching queue, the best candidate (CLIP) is rendered
  at each platform's size. Results are cached by a hash of the post and its options, and equal
  posts arriving together share one generation.
* async: the ``blog-to-images`` Prefect deployment is started with an idempotency key made from
  the same hash, so the same post sent twice maps to one flow run; ``GET /v1/hooks/publish/{id}``
  reports its state (and the manifest once it is complete and its result is stored).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from flows.service import images as imgs
from flows.service.auth import require_key
from flows.service.engine import ExclusiveWork, SampleWork
from flows.service.errors import APIError

log = logging.getLogger(__name__)
router = APIRouter()


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="The post as Markdown or plain text.")
    url: str | None = Field(None, max_length=2048, description="Where the post is published (http/https).")
    title: str | None = Field(None, max_length=300)
    platforms: list[str] = Field(default_factory=lambda: ["og"], min_length=1, max_length=12)
    style: str | None = Field(None, max_length=64, description="Style preset (see `covercraft styles`).")
    mode: Literal["sync", "async"] | None = Field(None, description="Default: service.hook.default_mode.")
    seed: int | None = Field(None, ge=0, lt=2**31)
    response_format: Literal["url", "b64_json"] = "url"
    overlay_title: bool = Field(True, description="Draw the title on presets that ask for it (platforms.yaml).")


# -- platforms -----------------------------------------------------------------------------------
def platform_presets() -> dict[str, Any]:
    """Every name the hook accepts → dalle_core.cover.PlatformPreset: the presets of
    configs/platforms.yaml and their aliases there."""
    from dalle_core import cover

    platforms = cover.load_platforms()
    return {name: platforms.preset(name) for name in platforms.names()}


def platform_sizes() -> dict[str, tuple[int, int]]:
    """name → (width, height) for every preset and alias."""
    return {name: (p.width, p.height) for name, p in platform_presets().items()}


# -- the hook ------------------------------------------------------------------------------------
def post_key(body: PublishRequest, model_id: str) -> str:
    """Content hash of what decides the images: the post, its options and the model."""
    what = {
        "text": " ".join(body.text.split()) if body.text else None,
        "url": body.url.strip() if body.url else None,
        "title": body.title,
        "platforms": sorted(set(body.platforms)),
        "overlay_title": body.overlay_title,
        "style": body.style,
        "seed": body.seed,
        "model": model_id,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


class PublishHook:
    """Sync results by content hash (LRU) and in-flight deduplication; async deployment runs."""

    def __init__(self, state: Any):
        self.state = state
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}
        self._bytes = 0  # PNG bytes held by the cache
        self.generations = 0  # sync generations actually run (the cache saves the rest)

    # ---- validation
    def validate(self, body: PublishRequest) -> dict[str, Any]:
        hook = self.state.service.hook
        if bool(body.text) == bool(body.url):
            raise APIError(400, "Send exactly one of 'text' (the post itself) or 'url' (where it is published).",
                           param="text" if not body.text else "url", code="invalid_value")
        if body.text and len(body.text) > hook.max_text_chars:
            raise APIError(400, f"'text' has {len(body.text)} characters; the limit is {hook.max_text_chars} "
                           "(service.hook.max_text_chars).", param="text", code="invalid_value")
        if body.url and not re.match(r"^https?://", body.url.strip(), re.I):
            raise APIError(400, f"'url' must be an http(s) URL, got {body.url!r}.", param="url", code="invalid_value")
        from dalle_core import cover

        platforms = cover.load_platforms()
        try:
            platforms.resolve(body.platforms)
        except ValueError as err:
            raise APIError(400, f"Invalid value for 'platforms': {err}.", param="platforms",
                           code="invalid_value") from None
        if body.style:
            from nlp.prompt import normalise_style

            try:
                normalise_style(body.style)
            except ValueError as err:
                raise APIError(400, f"Invalid value for 'style': {err}.", param="style", code="invalid_value") from None
        return {p: platforms.preset(p) for p in dict.fromkeys(body.platforms)}

    def settings_for(self, body: PublishRequest):
        """The pipeline settings with the request's style and seed on top."""
        settings = self.state.settings
        update: dict[str, Any] = {}
        if body.style:
            update["prompt"] = settings.prompt.model_copy(update={"style": body.style})
        if body.seed is not None:
            update["sampling"] = settings.sampling.model_copy(update={"seed": body.seed})
        return settings.model_copy(update=update)

    # ---- sync
    async def publish_sync(self, body: PublishRequest, key: str, platforms: dict[str, Any],
                           base_url: str) -> dict[str, Any]:
        cached = self._results.get(key)
        if cached is None:
            running = self._inflight.get(key)
            if running is None:
                running = asyncio.get_running_loop().create_future()
                self._inflight[key] = running
                try:
                    cached = await self._generate(body, key, platforms)
                    self._remember(key, cached)
                    running.set_result(cached)
                except BaseException as err:
                    running.set_exception(err)
                    running.exception()  # retrieved: no "never retrieved" warning when nobody else waits
                    raise
                finally:
                    self._inflight.pop(key, None)
                fresh = True
            else:
                cached = await asyncio.shield(running)
                fresh = False
        else:
            self._results.move_to_end(key)
            fresh = False
        return await anyio.to_thread.run_sync(self._response, cached, body.response_format, base_url, not fresh)

    def _remember(self, key: str, result: dict[str, Any]) -> None:
        cfg = self.state.service.hook
        if cfg.cache_size <= 0:
            return
        self._results[key] = result
        self._bytes += sum(len(png) for png in result["pngs"].values())
        while self._results and (len(self._results) > cfg.cache_size or self._bytes > cfg.cache_max_bytes):
            _, old = self._results.popitem(last=False)
            self._bytes -= sum(len(png) for png in old["pngs"].values())

    async def _generate(self, body: PublishRequest, key: str, platforms: dict[str, Any]) -> dict:
        from flows.pipeline import sampling_settings, text_stages
        from nlp.errors import FetchError, ModerationError, NlpError

        settings = self.settings_for(body)
        try:
            article = await anyio.to_thread.run_sync(self._article, body, settings)
            _, result, topics, prompt = await anyio.to_thread.run_sync(text_stages, article, settings)
        except ModerationError as err:
            raise APIError(400, str(err), param="text" if body.text else "url", code="content_policy_violation") from None
        except FetchError as err:
            raise APIError(400, f"Could not read the post: {err}", param="url" if body.url else "text",
                           code="invalid_post") from None
        except NlpError as err:
            raise APIError(400, f"Could not use the post: {err}", param="text" if body.text else "url",
                           code="invalid_post") from None
        n = settings.sampling.candidates
        work = SampleWork(prompts=(prompt.text,) * n, seed=settings.sampling.seed,
                          settings=sampling_settings(settings.sampling), negative_prompt=prompt.negative or None)
        sample = await self.state.run(work, rows=n)
        self.generations += 1

        sampling = work.settings
        title = article.title if body.overlay_title else None

        def finish(generator):
            from dalle_core import cover

            scores = generator.score([prompt.text], sample.images[None])
            best = 0 if scores is None else int(np.argmax(np.asarray(scores)[0]))
            # Outpaint → decode → upscale → exact size per preset; aliases share one render.
            presets = {p.name: p for p in platforms.values()}
            rendered = cover.render_platforms(
                generator, sample.tokens[best], presets, prompt=prompt.text, seed=sample.seed,
                settings=sampling, negative_prompt=prompt.negative or None, title=title,
                outpaint=cover.load_platforms().outpaint,
            )
            score = None if scores is None else float(np.asarray(scores)[0, best])
            return best, score, {name: rendered[p.name] for name, p in platforms.items()}

        best, score, rendered = await self.state.run(ExclusiveWork(finish))
        pngs = await anyio.to_thread.run_sync(
            lambda: {name: imgs.png_bytes(img.convert("RGB")) for name, img in rendered.items()}
        )
        return {
            "id": f"hook_{key[:24]}",
            "key": key,
            "created": int(time.time()),
            "title": article.title,
            "prompt": prompt.text,
            "negative_prompt": prompt.negative,
            "style": prompt.style,
            "topics": [t.phrase for t in topics],
            "topic_extractor": result.extractor,
            "seed": settings.sampling.seed,
            "candidates": n,
            "chosen_candidate": best,
            "score": score,
            "pngs": pngs,
            "sizes": {name: rendered[name].size for name in rendered},
        }

    @staticmethod
    def _article(body: PublishRequest, settings):
        from nlp import extract, fetch

        if body.url:
            # Callers of a public hook never get to read the server's files (SSRF checks stay on).
            fetch_settings = fetch.FetchSettings(**settings.fetch.model_dump(), allow_files=False)
            article = fetch.fetch_article(body.url.strip(), fetch_settings)
        else:
            article = extract.extract_markdown(body.text, source="hook")
        if body.title:
            article = article.model_copy(update={"title": body.title.strip()})
        return article

    def _response(self, result: dict[str, Any], response_format: str, base_url: str, cached: bool) -> dict:
        images = []
        for name, png in result["pngs"].items():
            w, h = result["sizes"][name]
            item: dict[str, Any] = {"platform": name, "width": w, "height": h}
            if response_format == "b64_json":
                item["b64_json"] = base64.b64encode(png).decode("ascii")
            else:
                image_id, expires = self.state.store.put(png)
                item["url"] = f"{base_url}/v1/images/files/{image_id}.png"
                item["expires_at"] = int(expires)
            images.append(item)
        public = {k: v for k, v in result.items() if k not in ("pngs", "sizes", "key")}
        return {**public, "object": "hook.publish", "mode": "sync", "status": "completed", "cached": cached,
                "images": images}

    def cached_result(self, hook_id: str) -> dict[str, Any] | None:
        for result in self._results.values():
            if result["id"] == hook_id:
                return result
        return None

    # ---- async
    def spool_text(self, body: PublishRequest, key: str) -> str:
        """Write a text post where the flow can read it; returns the absolute path."""
        folder = Path(self.state.service.hook.spool_dir).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{key[:32]}.md"
        if not path.exists():
            head = f"---\ntitle: {json.dumps(body.title)}\n---\n\n" if body.title else ""
            tmp = path.with_suffix(".partial")
            tmp.write_text(head + body.text, encoding="utf-8")
            tmp.replace(path)
        return str(path)

    async def publish_async(self, body: PublishRequest, key: str, platforms: dict[str, Any]) -> dict[str, Any]:
        from prefect.deployments import arun_deployment

        require_prefect_api()
        source = body.url.strip() if body.url else await anyio.to_thread.run_sync(self.spool_text, body, key)
        # The flow takes preset names (aliases such as "instagram" resolved).
        presets = list(dict.fromkeys(p.name for p in platforms.values()))
        parameters: dict[str, Any] = {"source": source, "platforms": presets}
        if body.style:
            parameters["style"] = body.style
        if body.seed is not None:
            parameters["seed"] = body.seed
        deployment = self.state.service.hook.deployment
        try:
            run = await arun_deployment(
                name=deployment, parameters=parameters, timeout=0, as_subflow=False,
                idempotency_key=f"covercraft-hook-{key}", tags=["covercraft-hook"],
            )
        except Exception as err:
            if type(err).__name__ == "ObjectNotFound":
                raise APIError(503, f"The Prefect deployment {deployment!r} does not exist; deploy the "
                               "blog-to-images flow or set service.hook.deployment.", type="server_error",
                               code="deployment_not_found") from None
            log.exception("could not start deployment %s", deployment)
            raise APIError(502, f"Could not start the Prefect deployment {deployment!r}: {err}",
                           type="server_error", code="orchestrator_unavailable") from None
        return {
            "id": str(run.id), "object": "hook.publish", "mode": "async", "flow_run_id": str(run.id),
            "flow_run_name": run.name, "deployment": deployment, "status": run.state_type.value if run.state_type else None,
            "state_name": run.state_name, "key": key, "status_url": f"/v1/hooks/publish/{run.id}",
        }

    async def status(self, run_id: str, base_url: str) -> dict[str, Any]:
        cached = self.cached_result(run_id)
        if cached is not None:
            return await anyio.to_thread.run_sync(self._response, cached, "url", base_url, True)
        try:
            flow_run_id = uuid.UUID(run_id)
        except ValueError:
            raise APIError(404, f"No publish request {run_id!r}: use the id a POST /v1/hooks/publish returned.",
                           param="id", code="not_found") from None
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        require_prefect_api()
        async with get_client() as client:
            try:
                run = await client.read_flow_run(flow_run_id)
            except ObjectNotFound:
                raise APIError(404, f"No flow run {run_id}.", param="id", code="not_found") from None
        state = run.state
        out: dict[str, Any] = {
            "id": str(run.id), "object": "hook.publish", "mode": "async", "flow_run_id": str(run.id),
            "flow_run_name": run.name, "status": state.type.value if state else None,
            "state_name": state.name if state else None, "message": state.message if state else None,
        }
        if state is not None and state.is_completed():
            try:
                out["result"] = await state.aresult(raise_on_failure=False)
            except Exception as err:  # results are only readable when the flow persisted them
                out["result"] = None
                out["result_error"] = f"{type(err).__name__}: {err}"
        return out


def prefect_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def require_prefect_api() -> None:
    """Async publishing runs on a Prefect server. Without ``PREFECT_API_URL`` the Prefect client
    would start a temporary server of its own, which no worker serves and which outlives the
    service; refuse instead."""
    if not prefect_api_url():
        raise APIError(503, "Async publishing needs a Prefect server: set PREFECT_API_URL for the "
                       "service (runs of service.hook.deployment start there), or send mode: sync.",
                       type="server_error", code="orchestrator_not_configured")


def _hook(request: Request) -> PublishHook:
    return request.app.state.covercraft.hook


@router.post("/v1/hooks/publish", dependencies=[Depends(require_key)], tags=["hooks"])
async def publish(body: PublishRequest, request: Request):
    """Images for a post, one per platform (sync), or a flow run that makes them (async)."""
    hook = _hook(request)
    state = request.app.state.covercraft
    platforms = hook.validate(body)
    key = post_key(body, state.service.model_id)
    mode = body.mode or state.service.hook.default_mode
    if mode == "async":
        return JSONResponse(await hook.publish_async(body, key, platforms), status_code=202)
    return await hook.publish_sync(body, key, platforms, state.base_url(request))


@router.get("/v1/hooks/publish/{run_id}", dependencies=[Depends(require_key)], tags=["hooks"])
async def publish_status(run_id: str, request: Request):
    """State of an async publish (the Prefect flow run), or a finished sync result by id."""
    return await _hook(request).status(run_id, request.app.state.covercraft.base_url(request))
