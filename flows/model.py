"""One resident Generator per process, built from ``ModelSettings``.

Loading and compiling is the expensive part of generation, so the flows, the HTTP service and the
CLI all go through ``get_generator``: the first call loads, later calls with the same settings reuse it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from flows.settings import ModelSettings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_cache: dict[ModelSettings, object] = {}


def embedded_model_dir() -> Path:
    import dalle_core

    return Path(dalle_core.__file__).parent / "embedded"


def _has_embedded() -> bool:
    root = embedded_model_dir()
    return all((root / part / "config.json").is_file() for part in ("dalle", "vqgan"))


def concepts_file(settings: ModelSettings) -> Path | None:
    """The concept list a model folder ships (``concepts.json``: what a fixed-vocabulary model such
    as the pictogram model can draw), or None: published models and the shapes model draw from
    free text."""
    if settings.dalle or settings.vqgan or settings.source == "random-tiny":
        return None
    folder = embedded_model_dir() if settings.source == "embedded" else Path(settings.source).expanduser()
    path = folder / "concepts.json"
    return path if path.is_file() else None


def load_generator(settings: ModelSettings):
    """Build a Generator from settings (no caching; see ``get_generator``)."""
    gen = _build_generator(settings)
    gen.set_clip_view_shift(settings.clip_view_shift)
    gen.set_clip_drop_words(settings.clip_drop_words)
    return gen


def _build_generator(settings: ModelSettings):
    from dalle_core import Generator

    if settings.dalle or settings.vqgan:
        if not (settings.dalle and settings.vqgan):
            raise ValueError("model.dalle and model.vqgan must be set together (clip is optional)")
        return Generator.from_pretrained(
            settings.dalle, settings.vqgan, settings.clip, dtype=settings.dtype
        )
    if settings.source == "random-tiny":
        return Generator.random("tiny")
    if settings.source == "embedded":
        if _has_embedded():
            return Generator.from_folder(embedded_model_dir(), dtype=settings.dtype, name="embedded-tiny")
        log.warning(
            "the embedded model is not in this install (%s); using a random-init tiny model, "
            "the manifest records random_init=true",
            embedded_model_dir(),
        )
        return Generator.random("tiny")
    return Generator.from_folder(Path(settings.source).expanduser(), dtype=settings.dtype)


def get_generator(settings: ModelSettings):
    """The process-wide Generator for these settings, loaded on first use."""
    with _lock:
        gen = _cache.get(settings)
        if gen is None:
            gen = load_generator(settings)
            _cache[settings] = gen
        return gen


_upscalers: dict[str | None, object] = {}


def get_upscaler(source: str | None):
    """The process-wide SwinIR upscaler for ``source`` (None: the Lanczos fallback, no model)."""
    if source is None:
        return None
    with _lock:
        if source not in _upscalers:
            from dalle_core.upscale import SwinIRUpscaler

            _upscalers[source] = SwinIRUpscaler.from_pretrained(source)
        return _upscalers[source]
