"""The ``blog-to-images`` flow: one Prefect task per stage of the data flow (shared/DESIGN.md).

fetch → chunk → topics → combine → prompt → generate (sample + decode) → rank → finish

Tasks carry the orchestration (retries, back-off, timeouts) as decorator arguments; the flow only
composes them and times each stage for the manifest.
"""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.tasks import exponential_backoff
from pydantic import Field

from flows import artifacts, output, routing
from flows.model import concepts_file, get_generator, get_upscaler
from flows.progress import progress_for
from flows.settings import (
    FetchConfig,
    LLMConfig,
    ModelSettings,
    OutputSettings,
    PromptConfig,
    SamplingConfig,
    Settings,
    TextSettings,
    deep_merge,
    load_settings,
)
from nlp import chunk as nlp_chunk
from nlp import combine as nlp_combine
from nlp import fetch as nlp_fetch
from nlp import prompt as nlp_prompt
from nlp import topics as nlp_topics
from nlp.errors import FetchError


def _retry_transient(task, task_run, state) -> bool:
    """Retry network trouble, not bad input (a 404, a PDF, an empty page stay failed)."""
    try:
        state.result()
    except FetchError as err:
        return bool(getattr(err, "transient", False))
    except Exception:
        return False
    return False


def llm_settings(cfg: LLMConfig) -> nlp_topics.LLMSettings | None:
    """An endpoint is configured when ``llm.base_url`` is set; otherwise topics are extracted offline."""
    if not cfg.base_url:
        return None
    return nlp_topics.LLMSettings(
        base_url=cfg.base_url,
        model=cfg.model,
        api_key=cfg.api_key or "not-needed",
        timeout=cfg.timeout,
        max_retries=cfg.max_retries,
        concurrency=cfg.concurrency,
    )


def _fetch_cache_key(context, parameters) -> str | None:
    # Keyed by content: a local file by its bytes. A URL is never cached (its content is what we
    # fetch, and the feed watcher starts a run precisely because it changed); the topics and
    # prompt caches below are keyed by the fetched text, so a re-run still skips the LLM.
    source, cfg = parameters["source"], parameters["cfg"]
    path = Path(source).expanduser()
    if "://" in source or not path.is_file():
        return None
    content = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(f"fetch-v1|{path.resolve()}|{content}|{cfg.model_dump_json()}".encode()).hexdigest()


@task(name="fetch", retries=2, retry_delay_seconds=[2, 8], retry_jitter_factor=0.5,
      retry_condition_fn=_retry_transient, timeout_seconds=120,
      cache_key_fn=_fetch_cache_key, cache_expiration=timedelta(days=7))
def fetch_post(source: str, cfg: FetchConfig):
    settings = nlp_fetch.FetchSettings(**cfg.model_dump())
    article = nlp_fetch.fetch_article(source, settings)
    get_run_logger().info("fetched %r: %d characters", article.title, len(article.text))
    return article


@task(name="chunk")
def chunk_post(article, cfg: TextSettings):
    chunks = nlp_chunk.chunk_article(article, max_tokens=cfg.chunk_tokens, overlap=cfg.chunk_overlap)
    get_run_logger().info("%d chunks of ≤%d tokens", len(chunks), cfg.chunk_tokens)
    return chunks


# The LLM stages: retried with back-off on top of the client's own retries, bounded in time, and
# cached by their inputs (the chunk texts / topics), so a re-run never pays the LLM twice.
_LLM_TASK = dict(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5),
                 retry_jitter_factor=0.5, timeout_seconds=600, cache_policy=INPUTS + TASK_SOURCE)


@task(name="topics", **_LLM_TASK)
def extract_topics(chunks, cfg: LLMConfig):
    result = nlp_topics.extract_topics(chunks, llm_settings(cfg))
    get_run_logger().info("topics by %s: %s", result.extractor, ", ".join(t.phrase for t in result.topics[:10]))
    return result


@task(name="combine")
def combine_topics(result, cfg: TextSettings):
    topics = nlp_combine.combine_topics(result, top_n=cfg.top_topics)
    get_run_logger().info("merged topics: %s", ", ".join(t.phrase for t in topics))
    return topics


def prompt_for(topics, title: str, cfg: PromptConfig, llm: LLMConfig, platform: str | None = None,
               model: ModelSettings | None = None):
    """Build the image prompt and moderate it (blocklist, then the endpoint's moderation if any).

    A model that ships a concept list (``flows.model.concepts_file``) and no LLM endpoint: the
    topics are grounded to its concepts (``nlp.grounding``) and the prompt names them; the
    manifest's prompt details record topic → concept and why.
    """
    settings = nlp_prompt.PromptSettings(
        style=cfg.style, negative_words=list(cfg.negative_words), platform=platform
    )
    llm_cfg = llm_settings(llm)
    prompt = nlp_prompt.build_prompt(topics, title, settings, llm_cfg)
    concepts = concepts_file(model) if model is not None and llm_cfg is None else None
    if concepts is not None:
        from nlp.grounding import ConceptIndex, ground

        grounding = ground(topics, ConceptIndex.from_file(concepts))
        update = {"grounding": grounding.record()}
        if grounding.matches:
            update |= {"text": grounding.prompt(), "source": "grounded",
                       "topics": [m.topic for m in grounding.matches]}
        prompt = prompt.model_copy(update=update)
    nlp_prompt.moderate(prompt, list(cfg.blocklist), llm_cfg)
    return prompt


@task(name="prompt", **_LLM_TASK)
def build_prompt(topics, title: str, cfg: PromptConfig, llm: LLMConfig, model: ModelSettings | None = None):
    prompt = prompt_for(topics, title, cfg, llm, model=model)
    get_run_logger().info("prompt: %r (negative: %r)", prompt.text, prompt.negative)
    return prompt


def sampling_settings(cfg: SamplingConfig):
    from dalle_core import SamplingSettings

    return SamplingSettings(
        condition_scale=cfg.condition_scale,
        top_k=cfg.top_k or None,
        top_p=cfg.top_p,
        temperature=cfg.temperature,
    )


@task(name="generate")
def generate_images(prompt_text: str, negative: str, model: ModelSettings, cfg: SamplingConfig,
                    progress_artifact: str | None = None):
    """Sample image tokens and decode them: tokens int32 [n, g, g], images uint8 [n, H, W, 3].

    Runs inline or on the resident task worker (flows/worker.py); one generation per slot of the
    configured global concurrency limit.
    """
    logger = get_run_logger()
    gen = get_generator(model)
    progress = artifacts.progress_updater(progress_artifact, progress_for("sampling image tokens", logger))
    with routing.generation_slot():
        tokens = gen.sample_tokens(
            [prompt_text],
            n=cfg.candidates,
            seed=cfg.seed,
            settings=sampling_settings(cfg),
            negative_prompt=negative or None,
            progress=progress,
        )[0]
        images = gen.decode(tokens)
    logger.info("decoded %d images of %dx%d", len(images), images.shape[2], images.shape[1])
    return tokens, images


@task(name="rank")
def rank_images(prompt_text: str, images: np.ndarray, model: ModelSettings) -> list[float] | None:
    """CLIP scores of each image against the prompt (None when the model has no CLIP)."""
    scores = get_generator(model).score([prompt_text], images[None])
    return None if scores is None else [float(s) for s in scores[0]]


@task(name="render")
def render_outputs(tokens, image, prompt_text: str, negative: str, title: str, model: ModelSettings,
                   sampling: SamplingConfig, cfg: OutputSettings) -> dict[str, Any]:
    """The cover-ready images from the best candidate.

    tokens: int32 [g, g]; image: uint8 [H, W, 3]. Returns {"cover": (uint8 image, method) or None,
    "platforms": {name: (uint8 image, info dict)}} — arrays, so it crosses the task-worker boundary.
    """
    out: dict[str, Any] = {"cover": None, "platforms": {}}
    if cfg.upscale or cfg.platforms:
        upscaler = get_upscaler(cfg.upscaler)
        with routing.generation_slot():  # outpainting samples tokens, upscaling runs on the GPU too
            _render_into(out, tokens, image, prompt_text, negative, title, model, sampling, cfg, upscaler)
    get_run_logger().info(
        "cover: %s; platforms: %s", out["cover"][1] if out["cover"] else "display resize",
        ", ".join(out["platforms"]) or "none",
    )
    return out


def _render_into(out, tokens, image, prompt_text, negative, title, model, sampling, cfg, upscaler) -> None:
    if cfg.upscale:
        from dalle_core.upscale import upscale

        up = upscale(image, upscaler)
        out["cover"] = (up.image, up.method)
    if cfg.platforms:
        from dalle_core import cover

        platforms = cover.load_platforms()
        presets = cover.select_presets(cfg.platforms, platforms)
        images = cover.render_platforms(
            get_generator(model), tokens, presets, prompt=prompt_text, seed=sampling.seed,
            settings=sampling_settings(sampling), negative_prompt=negative or None, upscaler=upscaler,
            title=title if cfg.title_overlay else None, outpaint=platforms.outpaint,
        )
        out["platforms"] = {name: (np.asarray(img), dict(img.info)) for name, img in images.items()}


@task(name="model-info")
def describe_model(model: ModelSettings) -> dict[str, Any]:
    """The manifest's model section, from the process that holds the model."""
    return get_generator(model).info.to_dict()


@task(name="finish")
def finish(manifest: dict[str, Any], tokens, images, scores, out_dir: Path, rendered: dict[str, Any]) -> Path:
    folder = output.write_result(out_dir, manifest, tokens, images, scores,
                                 cover=rendered["cover"], platforms=rendered["platforms"])
    get_run_logger().info("wrote %s", folder)
    return folder


def settings_for_run(
    *,
    style: str | None = None,
    candidates: int | None = None,
    seed: int | None = None,
    negative_words: list[str] | None = None,
    upscale: bool | None = None,
    platforms: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Config files and environment, then the run's own parameters on top."""
    mine: dict[str, Any] = {}
    labels: dict[tuple[str, ...], str] = {}
    for name, section, key, value in (
        ("style", "prompt", "style", style),
        ("candidates", "sampling", "candidates", candidates),
        ("seed", "sampling", "seed", seed),
        ("negative_words", "prompt", "negative_words", negative_words),
        ("upscale", "output", "upscale", upscale),
        ("platforms", "output", "platforms", platforms),
    ):
        if value is not None:
            mine.setdefault(section, {})[key] = value
            labels[(section, key)] = f"the run's parameter '{name}'"
    return load_settings(config_file, deep_merge(overrides or {}, mine),
                         overrides_label="the run's parameter 'overrides'", labels=labels)


def _platform_names() -> tuple[str, ...]:
    """Platform names for the form: the presets of configs/platforms.yaml and their aliases."""
    from dalle_core.cover import load_platforms

    return tuple(load_platforms().names())


# Literal choices become enums in the deployment's parameter schema: the UI form shows drop-downs.
StyleName = Literal[tuple(nlp_prompt.STYLE_PRESETS)]  # type: ignore[valid-type]
PlatformName = Literal[_platform_names()]  # type: ignore[valid-type]


@flow(name="blog-to-images", log_prints=False)
def blog_to_images(
    source: Annotated[str, Field(min_length=1)],
    style: StyleName | None = None,
    candidates: Annotated[int | None, Field(ge=1, le=64)] = None,
    seed: Annotated[int | None, Field(ge=0, le=2**31 - 1)] = None,
    negative_words: Annotated[list[str] | None, Field(max_length=32)] = None,
    upscale: bool | None = None,
    platforms: list[PlatformName] | None = None,
    overrides: dict[str, Any] | None = None,
    config_file: str | None = None,
) -> dict[str, Any]:
    """A blog post (URL or file) in; ranked images, cover.png and manifest.json out.

    Parameters left empty come from the settings (configs/default.yaml, ``config_file``,
    ``COVERCRAFT_*`` env). Returns the manifest (with ``output_dir`` set to the finished folder).
    The Args below are the descriptions the Prefect UI shows in the run form.

    Args:
        source: The blog post: an http(s) URL, or the path of an HTML/Markdown file the worker can read.
        style: Style preset of the image (empty: prompt.style from the settings).
        candidates: Images to generate, 1-64; the best CLIP score becomes the cover.
        seed: Random seed; the same seed and post give the same images.
        negative_words: Words to steer the image away from (they become the negative prompt).
        upscale: Upscale the cover x4.
        platforms: Platforms to make sized images for.
        overrides: Advanced: any other settings as nested keys, e.g. {"sampling": {"top_k": 32}}.
        config_file: Advanced: a settings YAML file on the worker (see configs/default.yaml).
    """
    settings = settings_for_run(
        style=style, candidates=candidates, seed=seed, negative_words=negative_words,
        upscale=upscale, platforms=platforms, overrides=overrides, config_file=config_file,
    )
    return run_stages(source, settings)


def run_stages(source: str, settings: Settings) -> dict[str, Any]:
    """The stages in order, each a task, timed for the manifest (call inside a flow)."""
    output.check_writable(settings.output.dir)
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        value = fn(*args)
        timings[name] = round(time.perf_counter() - start, 3)
        return value

    article = timed("fetch", fetch_post, source, settings.fetch)
    chunks = timed("chunk", chunk_post, article, settings.text)
    result = timed("topics", extract_topics, chunks, settings.llm)
    topics = timed("combine", combine_topics, result, settings.text)
    prompt = timed("prompt", build_prompt, topics, article.title, settings.prompt, settings.llm, settings.model)
    # The model tasks run where the model is resident (flows/worker.py), not in this process.
    progress_id = artifacts.start_progress(f"sampling image tokens: {prompt.text}")
    tokens, images = timed(
        "generate", routing.call, generate_images, prompt.text, prompt.negative, settings.model,
        settings.sampling, progress_id,
    )
    scores = timed("rank", routing.call, rank_images, prompt.text, images, settings.model)

    best = int(np.argmax(scores)) if scores is not None else 0
    rendered = timed(
        "render", routing.call, render_outputs, tokens[best], images[best], prompt.text, prompt.negative,
        article.title, settings.model, settings.sampling, settings.output,
    )
    manifest = output.build_manifest(
        source=source,
        article=article,
        chunks=chunks,
        result=result,
        topics=topics,
        prompt=prompt,
        model_info=routing.call(describe_model, settings.model),
        sampling=settings.sampling.model_dump(),
        timings=timings,
    )
    folder = finish(manifest, tokens, images, scores, settings.output.dir, rendered)
    manifest = output.read_manifest(folder)
    manifest["output_dir"] = str(folder)
    artifacts.publish_run(manifest, folder)
    return manifest


def text_stages(article, settings: Settings):
    """chunk → topics → combine → prompt as plain calls, for callers outside a Prefect run.

    The flow runs these stages as separate tasks (retries, timings, the UI); the HTTP service's
    publishing hook calls this in its synchronous mode. Same nlp calls, same settings adapters.
    Returns (chunks, topic result, merged topics, ImagePrompt); raises ModerationError.
    """
    chunks = nlp_chunk.chunk_article(
        article, max_tokens=settings.text.chunk_tokens, overlap=settings.text.chunk_overlap
    )
    result = nlp_topics.extract_topics(chunks, llm_settings(settings.llm))
    topics = nlp_combine.combine_topics(result, top_n=settings.text.top_topics)
    prompt = prompt_for(topics, article.title, settings.prompt, settings.llm, model=settings.model)
    return chunks, result, topics, prompt
