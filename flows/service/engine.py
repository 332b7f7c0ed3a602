"""The service's side of the generator: batched sampling jobs, uploads to tokens, pixels out.

``ImageEngine.run_batch`` is the queue's worker function. Every request becomes rows of one
sampling call (a request for n images is n rows with n=1, so requests with different n still
share a batch); variations and edits add forced tokens: the uploaded image is encoded to VQGAN
tokens and the rows keep some of them (a random subset for variations, everything outside the
mask for edits) while the rest is sampled.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flows.service.batching import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleWork:
    """One request's rows.

    prompts: one text per row (variations use the empty prompt).
    seed: the request's seed, or None for "any" (such requests share a batch and its seed).
    source: uint8 [R, R, 3] image to encode (variations, edits), R = the VQGAN's resolution.
    keep: bool [rows, g, g]; True keeps the source token at that cell, False samples it.
    """

    prompts: tuple[str, ...]
    seed: int | None
    settings: Any  # dalle_core.SamplingSettings
    negative_prompt: str | None = None
    source: np.ndarray | None = None
    keep: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.prompts)

    def batch_key(self) -> Hashable:
        """Requests with equal keys may be sampled in one call."""
        forced = self.source is not None
        # An explicit seed must reproduce the same images however the batch around it looks,
        # so a seeded request runs alone; unseeded requests share whatever seed their batch gets.
        seed: Hashable = ("seed", self.seed, object()) if self.seed is not None else "any"
        return ("sample", self.settings, self.negative_prompt, forced, seed)


@dataclass(frozen=True)
class SampleResult:
    """tokens: int32 [rows, g, g]; images: uint8 [rows, H, W, 3] at the model's resolution."""

    tokens: np.ndarray
    images: np.ndarray
    seed: int
    batch_rows: int  # rows in the sampling call this request shared (for logs and tests)


@dataclass(frozen=True)
class ExclusiveWork:
    """Anything else that needs the generator (platform renders): ``fn(generator)`` runs alone."""

    fn: Callable[[Any], Any]


def _bucket(rows: int) -> int:
    """Next power of two: batches are padded so only a handful of shapes ever compile."""
    size = 1
    while size < rows:
        size *= 2
    return size


class ImageEngine:
    """Holds the generator; runs batches on the queue's worker thread."""

    def __init__(self, generator: Any, max_batch: int = 8, fixed: bool = False):
        """max_batch: rows per sampling call (larger requests take several calls).

        fixed: pad every call to ``max_batch`` rows (one compiled shape); otherwise pad to the
        next power of two (less work at low load, one compiled shape per power of two).
        """
        self.generator = generator
        self.max_batch = max_batch
        self.pad_to = max_batch if fixed else None
        self.grid = int(generator.variant.bart.grid_size)
        self.resolution = int(generator.variant.vqgan.resolution)
        self.padded_rows = 0  # rows sampled including padding (diagnostics)

    def shapes(self) -> list[int]:
        """Row counts a sampling call can have."""
        if self.pad_to:
            return [self.pad_to]
        return [1 << k for k in range(_bucket(self.max_batch).bit_length())]

    def warm_up(self, settings) -> None:
        """Compile every sampling, forced sampling and decoding shape, and encoding, before serving.

        ``settings`` are the sampling settings a request without extras gets (the service's
        configured defaults): guidance on or off is a different program, so warming up with other
        settings would leave the first real request to compile again.
        """
        codes = np.asarray(self.generator.encode(np.zeros((1, self.resolution, self.resolution, 3), np.uint8)))
        for rows in self.shapes():
            tokens = np.asarray(self.generator.sample_tokens([""] * rows, n=1, seed=0, settings=settings))[:, 0]
            self.generator.decode(tokens)
            # The forced-token path (variations, edits) is its own compiled program.
            keep = np.zeros((rows, self.grid, self.grid), dtype=bool)
            self.generator.sample_tokens([""] * rows, n=1, seed=0, settings=settings,
                                         forced_tokens=np.repeat(codes, rows, axis=0), forced_mask=keep)

    def run_batch(self, jobs: Sequence[Job]) -> list[Any]:
        first = jobs[0].payload
        if isinstance(first, ExclusiveWork):
            return [job.payload.fn(self.generator) for job in jobs]
        return self._sample(jobs)

    def _sample(self, jobs: Sequence[Job]) -> list[SampleResult]:
        works: list[SampleWork] = [job.payload for job in jobs]
        head = works[0]
        prompts = [p for w in works for p in w.prompts]
        rows = len(prompts)
        seed = head.seed if head.seed is not None else random.SystemRandom().randrange(2**31)
        forced = self._forced(works) if head.source is not None else None
        # Requests larger than max_batch rows run as several calls; each call gets its own seed
        # (seed + call index) so repeated prompts do not repeat their noise.
        step = self.max_batch
        parts = []
        for k, lo in enumerate(range(0, rows, step)):
            hi = min(lo + step, rows)
            part_forced = None if forced is None else (forced[0][lo:hi], forced[1][lo:hi])
            parts.append(self._sample_rows(prompts[lo:hi], seed + k, head, part_forced))
        tokens = np.concatenate(parts)  # [rows, g, g]
        images = np.asarray(self.generator.decode(self._pad(tokens)))[:rows]
        log.info("sampled %d rows for %d requests (seed %d)", rows, len(works), seed)
        out, start = [], 0
        for w in works:
            stop = start + w.rows
            out.append(SampleResult(tokens[start:stop], images[start:stop], seed, rows))
            start = stop
        return out

    def _sample_rows(self, prompts: list[str], seed: int, head: SampleWork,
                     forced: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """One sampling call, padded to the engine's shape; → int32 [len(prompts), g, g]."""
        rows = len(prompts)
        padded = self.pad_to or _bucket(rows)
        extra = padded - rows
        # Padding rows repeat the last row and are dropped after sampling.
        prompts = prompts + [prompts[-1]] * extra
        forced_tokens = forced_mask = None
        if forced is not None:
            forced_tokens, forced_mask = (np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) for a in forced)
        tokens = self.generator.sample_tokens(
            prompts,
            n=1,
            seed=seed,
            settings=head.settings,
            negative_prompt=head.negative_prompt,
            forced_tokens=forced_tokens,
            forced_mask=forced_mask,
        )
        self.padded_rows += padded
        return np.asarray(tokens)[:rows, 0]

    def _pad(self, tokens: np.ndarray) -> np.ndarray:
        """Pad decode input like sampling input, so decoding compiles as few shapes."""
        rows = len(tokens)
        size = -(-rows // self.pad_to) * self.pad_to if self.pad_to else _bucket(rows)
        return np.concatenate([tokens, np.repeat(tokens[-1:], size - rows, axis=0)]) if size > rows else tokens

    def _forced(self, works: Sequence[SampleWork]) -> tuple[np.ndarray, np.ndarray]:
        """Source tokens per row int32 [rows, g, g] and the keep mask bool [rows, g, g]."""
        # One encode for all uploads of the batch (padded to a power of two: few compiled shapes).
        sources = np.stack([w.source for w in works])
        n_src = len(sources)
        enc_pad = _bucket(n_src)
        if enc_pad > n_src:
            sources = np.concatenate([sources, np.repeat(sources[-1:], enc_pad - n_src, axis=0)])
        codes = np.asarray(self.generator.encode(sources))[:n_src].astype(np.int32)
        tokens = np.concatenate([np.repeat(c[None], w.rows, axis=0) for w, c in zip(works, codes, strict=True)])
        keep = np.concatenate([np.asarray(w.keep, dtype=bool) for w in works])
        return tokens, keep


def variation_keep_masks(rows: int, grid: int, keep: float, seed: int | None) -> np.ndarray:
    """bool [rows, grid, grid]: a different random ``keep`` share of cells per row."""
    rng = np.random.default_rng(seed)
    cells = grid * grid
    n_keep = int(round(keep * cells))
    masks = np.zeros((rows, cells), dtype=bool)
    for r in range(rows):
        masks[r, rng.choice(cells, size=n_keep, replace=False)] = True
    return masks.reshape(rows, grid, grid)
