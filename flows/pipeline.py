"""The ``blog-to-images`` flow: one Prefect task per stage of the data flow (shared/DESIGN.md).

fetch → chunk → topics → combine → prompt → generate (sample + decode) → rank → finish

Tasks carry the orchestration (retries, back-off, timeouts) as decorator arguments; the flow only
composes them and times each stage for the manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task

from flows import output
from flows.model import get_generator
from flows.progress import progress_for
from flows.settings import (
    FetchConfig,
    LLMConfig,
    ModelSettings,
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


@task(name="fetch", retries=2, retry_delay_seconds=[2, 8], retry_condition_fn=_retry_transient)
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


@task(name="topics")
def extract_topics(chunks, cfg: LLMConfig):
    result = nlp_topics.extract_topics(chunks, llm_settings(cfg))
    get_run_logger().info("topics by %s: %s", result.extractor, ", ".join(t.phrase for t in result.topics[:10]))
    return result


@task(name="combine")
def combine_topics(result, cfg: TextSettings):
    topics = nlp_combine.combine_topics(result, top_n=cfg.top_topics)
    get_run_logger().info("merged topics: %s", ", ".join(t.phrase for t in topics))
    return topics


@task(name="prompt")
def build_prompt(topics, title: str, cfg: PromptConfig, llm: LLMConfig):
    settings = nlp_prompt.PromptSettings(style=cfg.style, negative_words=list(cfg.negative_words))
    prompt = nlp_prompt.build_prompt(topics, title, settings, llm_settings(llm))
    nlp_prompt.moderate(prompt, list(cfg.blocklist))
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
def generate_images(prompt_text: str, negative: str, model: ModelSettings, cfg: SamplingConfig):
    """Sample image tokens and decode them: tokens int32 [n, g, g], images uint8 [n, H, W, 3]."""
    logger = get_run_logger()
    gen = get_generator(model)
    tokens = gen.sample_tokens(
        [prompt_text],
        n=cfg.candidates,
        seed=cfg.seed,
        settings=sampling_settings(cfg),
        negative_prompt=negative or None,
        progress=progress_for("sampling image tokens", logger),
    )[0]
    images = gen.decode(tokens)
    logger.info("decoded %d images of %dx%d", len(images), images.shape[2], images.shape[1])
    return tokens, images


@task(name="rank")
def rank_images(prompt_text: str, images: np.ndarray, model: ModelSettings) -> list[float] | None:
    """CLIP scores of each image against the prompt (None when the model has no CLIP)."""
    scores = get_generator(model).score([prompt_text], images[None])
    return None if scores is None else [float(s) for s in scores[0]]


@task(name="finish")
def finish(manifest: dict[str, Any], tokens, images, scores, out_dir: Path, upscale: bool) -> Path:
    folder = output.write_result(out_dir, manifest, tokens, images, scores, upscale=upscale)
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
    for section, key, value in (
        ("prompt", "style", style),
        ("sampling", "candidates", candidates),
        ("sampling", "seed", seed),
        ("prompt", "negative_words", negative_words),
        ("output", "upscale", upscale),
        ("output", "platforms", platforms),
    ):
        if value is not None:
            mine.setdefault(section, {})[key] = value
    return load_settings(config_file, deep_merge(overrides or {}, mine))


@flow(name="blog-to-images", log_prints=False)
def blog_to_images(
    source: str,
    style: str | None = None,
    candidates: int | None = None,
    seed: int | None = None,
    negative_words: list[str] | None = None,
    upscale: bool | None = None,
    platforms: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    config_file: str | None = None,
) -> dict[str, Any]:
    """A blog post (URL or file) in; ranked images, cover.png and manifest.json out.

    Parameters left as None come from the settings (configs/default.yaml, ``config_file``,
    ``COVERCRAFT_*`` env); ``overrides`` is a nested dict of any other settings.
    Returns the manifest (with ``output_dir`` set to the finished folder).
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
    prompt = timed("prompt", build_prompt, topics, article.title, settings.prompt, settings.llm)
    tokens, images = timed(
        "generate", generate_images, prompt.text, prompt.negative, settings.model, settings.sampling
    )
    scores = timed("rank", rank_images, prompt.text, images, settings.model)

    gen = get_generator(settings.model)
    manifest = output.build_manifest(
        source=source,
        article=article,
        chunks=chunks,
        result=result,
        topics=topics,
        prompt=prompt,
        model_info=gen.info.to_dict(),
        sampling=settings.sampling.model_dump(),
        timings=timings,
    )
    folder = finish(manifest, tokens, images, scores, settings.output.dir, settings.output.upscale)
    manifest = output.read_manifest(folder)
    manifest["output_dir"] = str(folder)
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
    cfg = settings.prompt
    prompt_settings = nlp_prompt.PromptSettings(style=cfg.style, negative_words=list(cfg.negative_words))
    prompt = nlp_prompt.build_prompt(topics, article.title, prompt_settings, llm_settings(settings.llm))
    nlp_prompt.moderate(prompt, list(cfg.blocklist))
    return chunks, result, topics, prompt
