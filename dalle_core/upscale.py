"""×4 upscaling of generated images: SwinIR when weights are configured, Lanczos otherwise.

``upscale(image, upscaler)`` returns the upscaled image and the method that ran ("swinir:<name>" or
"lanczos") so the manifest can record it. ``SwinIRUpscaler`` loads and compiles once and runs tiled
inference: the low-resolution image is cut into window-aligned tiles that overlap, each tile is
upscaled, and the tiles are blended with weights that fade to zero near interior tile edges, so
memory stays bounded for any output size and the result matches untiled inference closely.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageFilter

from dalle_core.models.swinir import SwinIR, SwinIRConfig, get_swinir_variant

log = logging.getLogger(__name__)


class Upscaled(NamedTuple):
    """image: uint8 [H*scale, W*scale, 3]; method: "swinir:<name>" or "lanczos"."""

    image: np.ndarray
    method: str


def _as_uint8_array(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 image, got dtype {arr.dtype}; convert with (x * 255).round().astype('uint8')"
        )
    return arr


def lanczos_upscale(image, scale: int = 4, sharpen: bool = True) -> np.ndarray:
    """Classical fallback: Lanczos resampling, then a light unsharp mask.

    image: uint8 [H, W, 3] array or PIL image. Returns uint8 [H*scale, W*scale, 3].
    """
    arr = _as_uint8_array(image)
    h, w, _ = arr.shape
    out = Image.fromarray(arr).resize((w * scale, h * scale), Image.Resampling.LANCZOS)
    if sharpen:
        # Lanczos alone looks soft at ×4; a small-radius, low-strength mask restores edges
        # without haloing flat areas (threshold keeps noise from being amplified).
        out = out.filter(ImageFilter.UnsharpMask(radius=1.5, percent=60, threshold=2))
    return np.asarray(out)


# --------------------------------------------------------------------------------------------------
# Tiling helpers (pure numpy)


def tile_layout(length: int, max_tile: int, overlap: int, align: int = 1) -> tuple[int, list[int]]:
    """Tile size and start offsets covering ``[0, length)`` with at least ``overlap`` between
    neighbours, using as few tiles as ``max_tile`` allows, each as small as that count allows,
    spread evenly (a 256-px side with 128-px tiles and 32 overlap takes three 112-px tiles rather
    than three 128-px ones overlapping by up to 96).

    Sizes and starts are multiples of ``align`` when ``length`` and ``max_tile`` are.
    """
    if length <= max_tile:
        return length, [0]
    n = -(-(length - overlap) // (max_tile - overlap))
    while True:
        size = -(-(length + (n - 1) * overlap) // n)
        size = min(-(-size // align) * align, length)
        starts = [int(round(i * (length - size) / (n - 1) / align)) * align for i in range(n)]
        starts[-1] = length - size
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        if size - max(gaps) >= overlap:
            return size, starts
        n += 1


def blend_ramp(size: int, fade_start: bool, fade_end: bool, overlap: int) -> np.ndarray:
    """1-D blend weights [size] for one tile axis (all in output pixels).

    At an interior edge the weight is 0 for the first ``overlap/4`` pixels (where the tile lacks
    context and differs from untiled inference), then rises linearly to 1 over ``overlap/2``.
    The neighbour covering those pixels is then at least ``3/4 * overlap`` from its own edge and
    has weight 1 there, so the weights never sum to zero.
    """
    d = np.arange(size, dtype=np.float32) + 0.5
    w = np.ones(size, np.float32)
    lo, span = overlap / 4, max(overlap / 2, 1.0)
    if fade_start:
        w = np.minimum(w, np.clip((d - lo) / span, 0.0, 1.0))
    if fade_end:
        w = np.minimum(w, np.clip((size - d - lo) / span, 0.0, 1.0))
    return w


class SwinIRUpscaler:
    """A loaded, compiled SwinIR with tiled inference.

    tile / overlap: tile side and minimum overlap in input pixels (rounded to the window size;
        overlap defaults to tile / 4).
    tile_batch: tiles per compiled call (the last batch is zero-padded, so one shape compiles once).
    dtype: compute dtype (bfloat16 on accelerators halves memory; params stay fp32).
    """

    def __init__(
        self,
        cfg: SwinIRConfig,
        params: dict[str, Any],
        name: str = "swinir",
        *,
        tile: int = 128,
        overlap: int | None = None,
        tile_batch: int = 1,
        dtype=jnp.float32,
    ):
        w = cfg.window_size
        if tile < 2 * w:
            raise ValueError(
                f"upscaler tile {tile} is too small; use at least 2 × window_size = {2 * w}"
            )
        overlap = tile // 4 if overlap is None else overlap
        if not 0 <= overlap < tile:
            raise ValueError(f"upscaler overlap {overlap} must be in [0, tile={tile})")
        self.cfg = cfg
        self.params = params
        self.name = name
        self.tile = tile // w * w
        self.overlap = min(-(-overlap // w) * w, self.tile - w)
        self.tile_batch = max(1, int(tile_batch))
        module = SwinIR(cfg, dtype)
        self._apply = jax.jit(lambda p, x: module.apply({"params": p}, x))

    @property
    def scale(self) -> int:
        return self.cfg.upscale

    @property
    def method(self) -> str:
        return f"swinir:{self.name}"

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike, name: str | None = None, **kwargs
    ) -> SwinIRUpscaler:
        """Load a SwinIR-JAX checkpoint (local folder or hub id); see ``dalle_core.checkpoints.swinir``."""
        from dalle_core.checkpoints.swinir import load_swinir

        cfg, params = load_swinir(source)
        return cls(cfg, params, name or os.path.basename(os.fspath(source).rstrip("/")), **kwargs)

    @classmethod
    def random(
        cls, variant: str | SwinIRConfig = "tiny", seed: int = 0, **kwargs
    ) -> SwinIRUpscaler:
        """Random weights (tests, benchmarks): the output is noise-like, never a real upscale."""
        from dalle_core.checkpoints.swinir import init_params

        cfg = get_swinir_variant(variant) if isinstance(variant, str) else variant
        name = f"random-{variant if isinstance(variant, str) else 'custom'}"
        return cls(cfg, init_params(cfg, seed), name, **kwargs)

    def run_untiled(self, x: np.ndarray) -> np.ndarray:
        """x: float32 [B, H, W, 3] in [0, 1] → float32 [B, sH, sW, 3] in one call (debugging, tests)."""
        return np.asarray(self._apply(self.params, jnp.asarray(x, jnp.float32)))

    def run_tiled(self, x: np.ndarray) -> np.ndarray:
        """x: float32 [H, W, 3] in [0, 1] → float32 [sH, sW, 3] (not clipped), tile by tile."""
        h0, w0, c = x.shape
        s, w = self.scale, self.cfg.window_size
        # Tile origins must sit on the window grid of the whole image so each tile's windows are
        # the whole image's windows; pad the image to that grid first.
        ph, pw = (-h0) % w, (-w0) % w
        if ph or pw:
            x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h0, w0) > 1 else "edge")
        hp, wp, _ = x.shape
        th, ys = tile_layout(hp, self.tile, self.overlap, w)
        tw, xs = tile_layout(wp, self.tile, self.overlap, w)
        if len(ys) == 1 and len(xs) == 1:
            return self.run_untiled(x[None])[0, : h0 * s, : w0 * s]

        boxes = [(y, xx) for y in ys for xx in xs]
        out = np.zeros((hp * s, wp * s, c), np.float32)
        weight = np.zeros((hp * s, wp * s, 1), np.float32)
        ov = self.overlap * s
        for i in range(0, len(boxes), self.tile_batch):
            chunk = boxes[i : i + self.tile_batch]
            batch = np.zeros((self.tile_batch, th, tw, c), np.float32)
            for j, (y, xx) in enumerate(chunk):
                batch[j] = x[y : y + th, xx : xx + tw]
            result = self.run_untiled(batch)
            for j, (y, xx) in enumerate(chunk):
                wy = blend_ramp(th * s, y > 0, y + th < hp, ov)
                wx = blend_ramp(tw * s, xx > 0, xx + tw < wp, ov)
                wt = (wy[:, None] * wx[None, :])[..., None]
                out[y * s : (y + th) * s, xx * s : (xx + tw) * s] += result[j] * wt
                weight[y * s : (y + th) * s, xx * s : (xx + tw) * s] += wt
        out /= np.maximum(weight, 1e-8)
        return out[: h0 * s, : w0 * s]

    def __call__(self, image) -> np.ndarray:
        """uint8 [H, W, 3] (array or PIL) → uint8 [H*scale, W*scale, 3]."""
        arr = _as_uint8_array(image).astype(np.float32) / 255.0
        out = self.run_tiled(arr)
        return (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def upscale(image, upscaler: SwinIRUpscaler | None = None, scale: int = 4) -> Upscaled:
    """Upscale one RGB image ×``scale``; SwinIR when ``upscaler`` is given, else Lanczos + sharpening.

    image: uint8 [H, W, 3] array or PIL image. Returns ``Upscaled(uint8 [sH, sW, 3], method)``.
    """
    if upscaler is None:
        return Upscaled(lanczos_upscale(image, scale), "lanczos")
    if upscaler.scale != scale:
        raise ValueError(
            f"the configured SwinIR upscales ×{upscaler.scale} but ×{scale} was asked; "
            f"pass scale={upscaler.scale} or configure a ×{scale} checkpoint"
        )
    return Upscaled(upscaler(image), upscaler.method)


def load_upscaler(source: str | os.PathLike | None, **kwargs) -> SwinIRUpscaler | None:
    """``None`` (or "" / "lanczos") → no model, the Lanczos fallback runs; else load SwinIR weights."""
    if source is None or str(source) in ("", "lanczos", "none"):
        log.info("no SwinIR weights configured; upscaling with Lanczos + unsharp mask")
        return None
    return SwinIRUpscaler.from_pretrained(source, **kwargs)
