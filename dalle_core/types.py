"""Plain data that crosses the core's public boundary (flows, service and CLI use these)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingSettings:
    """How image tokens are sampled.

    condition_scale: super-conditioning factor; ``uncond + scale * (cond - uncond)``. 1.0 means
        plain conditional sampling (the unconditional branch is then skipped).
    top_k: keep the k most likely tokens (0 or None: no limit).
    top_p: nucleus sampling mass (None or 1.0: no limit).
    temperature: logits are divided by it before sampling.
    """

    condition_scale: float = 10.0
    top_k: int | None = 64
    top_p: float | None = None
    temperature: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """What the manifest says about the model that made an image."""

    name: str  # e.g. "embedded-tiny", "dalle-mini/dalle-mini"
    variant: str  # "tiny" | "mini" | "mega" | "custom"
    checkpoint: str  # folder path, hub id, or "random-init"
    random_init: bool  # True when the weights are untrained random numbers
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    """One generated image.

    image: uint8 array [H, W, 3] (the VQGAN's native resolution).
    tokens: int32 array [grid, grid] of VQGAN codes.
    score: CLIP similarity to the prompt (higher is better); None before ranking.
    prompt_index / sample_index: which prompt of the batch, which of its n samples.
    """

    image: np.ndarray
    tokens: np.ndarray
    score: float | None = None
    prompt_index: int = 0
    sample_index: int = 0
