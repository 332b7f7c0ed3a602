"""Wide and tall images by outpainting in token space.

A generated image is a g×g grid of VQGAN codes. To reach another aspect ratio we place it on a
larger canvas and fill the rest window by window: each g×g window holds already-known tokens
(kept with the Generator's forced-token decoding) and unknown ones (sampled, conditioned on the
prompt and on every known token before them in raster order). The whole canvas is then decoded
at once: the VQGAN decoder is convolutional and its attention runs over all h·w positions, so
any h×w grid decodes without stitching.

Raster order decides which directions condition well:

- right / down: each new token sees the original to its left / above — strong conditioning.
- left: the new columns of row r see rows < r of the original but not row r itself (it comes
  later in the window) — somewhat weaker, still usually seamless.
- up: the new rows come before every original token, so they see only the prompt; a seam is
  likely. Tall presets therefore extend downwards by default.

The original tokens are never overwritten (``outpaint_tokens`` checks this before returning).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dalle_core.types import SamplingSettings

log = logging.getLogger(__name__)

HORIZONTAL = ("both", "right", "left")
VERTICAL = ("down", "both", "up")


@dataclass(frozen=True)
class OutpaintSettings:
    """How the canvas is filled.

    step: new columns (or rows) per window; None → half the model grid (the other half is
        context). Smaller steps mean more context per window and more sampling passes.
    horizontal: where new columns go for wide targets: "both" keeps the subject centred,
        "right" gives the best conditioning (see module docstring).
    vertical: where new rows go for tall targets: "down" (best conditioning), "both" or "up".
    """

    step: int | None = None
    horizontal: str = "both"
    vertical: str = "down"

    def __post_init__(self):
        if self.horizontal not in HORIZONTAL:
            raise ValueError(
                f"outpaint horizontal must be one of {HORIZONTAL}, got {self.horizontal!r}"
            )
        if self.vertical not in VERTICAL:
            raise ValueError(f"outpaint vertical must be one of {VERTICAL}, got {self.vertical!r}")
        if self.step is not None and self.step < 1:
            raise ValueError(
                f"outpaint step must be >= 1 (or null for half the grid), got {self.step}"
            )


@dataclass
class Outpainted:
    """tokens: int32 [H, W]; origin: (row, col) of the original g×g block inside it;
    joins_x / joins_y: token-grid column / row boundaries where sampled tokens meet earlier ones
    (the places to look for seams); windows: how many sampling passes ran."""

    tokens: np.ndarray
    origin: tuple[int, int]
    grid: int
    joins_x: list[int] = field(default_factory=list)
    joins_y: list[int] = field(default_factory=list)
    windows: int = 0


# Frozen, so safe as shared argument defaults.
DEFAULT_OUTPAINT = OutpaintSettings()
DEFAULT_SAMPLING = SamplingSettings()


def target_grid(grid: int, aspect: float) -> tuple[int, int]:
    """(rows, cols) of the smallest canvas, one side ``grid``, whose aspect (cols/rows) ≥ the
    target's for wide targets (≤ for tall ones), so a centred crop reaches it exactly."""
    if aspect <= 0 or not math.isfinite(aspect):
        raise ValueError(f"aspect ratio must be a positive number, got {aspect}")
    if aspect >= 1:
        return grid, max(grid, math.ceil(grid * aspect - 1e-9))
    return max(grid, math.ceil(grid / aspect - 1e-9)), grid


def _origin(extra: int, mode: str, start_modes: tuple[str, str]) -> int:
    """Offset of the original along one axis for ``extra`` new cells placed as ``mode``."""
    towards_end, towards_start = start_modes
    if mode == towards_end:  # all new cells after the original
        return 0
    if mode == towards_start:
        return extra
    return extra // 2


def plan_windows(
    shape: tuple[int, int], grid: int, origin: tuple[int, int], step: int
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Window origins (row, col), in sampling order, that fill a canvas around the original.

    Returns (windows, joins_x, joins_y). Horizontal growth happens first on the original rows,
    then vertical growth over the full width (windows left to right, each overlapping the
    previous one by at least half a grid so neighbouring new rows agree).
    """
    rows, cols = shape
    oy, ox = origin
    g = grid
    windows: list[tuple[int, int]] = []
    joins_x: list[int] = []
    joins_y: list[int] = []

    right = ox + g
    while right < cols:
        new = min(step, cols - right)
        windows.append((oy, right + new - g))
        joins_x.append(right)
        right += new
    left = ox
    while left > 0:
        new = min(step, left)
        windows.append((oy, left - new))
        joins_x.append(left)
        left -= new

    col_starts = _starts(cols, g, g // 2)
    bottom = oy + g
    while bottom < rows:
        new = min(step, rows - bottom)
        windows.extend((bottom + new - g, c) for c in col_starts)
        joins_y.append(bottom)
        bottom += new
    top = oy
    while top > 0:
        new = min(step, top)
        windows.extend((top - new, c) for c in col_starts)
        joins_y.append(top)
        top -= new
    return windows, sorted(joins_x), sorted(joins_y)


def _starts(length: int, size: int, overlap: int) -> list[int]:
    if size >= length:
        return [0]
    starts = list(range(0, length - size, size - overlap))
    return starts + [length - size]


def outpaint_tokens(
    generator,
    tokens,
    prompt: str,
    shape: tuple[int, int],
    *,
    seed: int = 0,
    settings: SamplingSettings = DEFAULT_SAMPLING,
    negative_prompt: str | None = None,
    outpaint: OutpaintSettings = DEFAULT_OUTPAINT,
    progress: Callable[[int, int], None] | None = None,
) -> Outpainted:
    """Grow a g×g token grid to ``shape`` = (rows, cols) by sampling new tokens in g×g windows.

    generator: anything with ``sample_tokens(prompts, n, seed, settings, negative_prompt,
        forced_tokens=[1, g, g], forced_mask=[1, g, g]) -> int [1, 1, g, g]``
        (``dalle_core.generator.Generator``).
    tokens: int [g, g], the image to extend. Returns an ``Outpainted`` whose ``tokens`` contain
    the original unchanged at ``origin``. ``progress(done_windows, total_windows)`` if given.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] != tokens.shape[1]:
        raise ValueError(f"tokens must be one square grid [g, g], got shape {tokens.shape}")
    g = tokens.shape[0]
    rows, cols = int(shape[0]), int(shape[1])
    if rows < g or cols < g:
        raise ValueError(
            f"outpaint target {rows}x{cols} is smaller than the {g}x{g} grid; crop instead"
        )
    step = outpaint.step or max(1, g // 2)
    if step >= g:
        raise ValueError(
            f"outpaint step {step} leaves no context in a {g}-token window; use at most {g - 1}"
        )
    oy = _origin(rows - g, outpaint.vertical, ("down", "up"))
    ox = _origin(cols - g, outpaint.horizontal, ("right", "left"))

    canvas = np.zeros((rows, cols), np.int32)
    known = np.zeros((rows, cols), bool)
    canvas[oy : oy + g, ox : ox + g] = tokens
    known[oy : oy + g, ox : ox + g] = True
    windows, joins_x, joins_y = plan_windows((rows, cols), g, (oy, ox), step)

    ran = 0
    for i, (y, x) in enumerate(windows):
        win_known = known[y : y + g, x : x + g]
        if win_known.all():
            continue
        sampled = generator.sample_tokens(
            [prompt],
            1,
            seed + 1009 * (i + 1),  # a distinct, reproducible stream per window
            settings,
            negative_prompt,
            forced_tokens=canvas[None, y : y + g, x : x + g],
            forced_mask=win_known[None],
        )
        sampled = np.asarray(sampled).reshape(g, g)
        region = canvas[y : y + g, x : x + g]
        region[~win_known] = sampled[~win_known]
        known[y : y + g, x : x + g] = True
        ran += 1
        if progress is not None:
            progress(i + 1, len(windows))
    if not known.all():  # a planning bug, never user input
        raise RuntimeError(f"outpainting left {int((~known).sum())} tokens unfilled")
    if not np.array_equal(canvas[oy : oy + g, ox : ox + g], tokens):
        raise RuntimeError("outpainting changed the original tokens")
    log.info("outpainted %dx%d → %dx%d in %d windows (step %d)", g, g, rows, cols, ran, step)
    return Outpainted(canvas, (oy, ox), g, joins_x, joins_y, ran)


# --------------------------------------------------------------------------------------------------
# Decoding non-square grids


def decode_grid(generator, tokens) -> np.ndarray:
    """VQGAN codes int [h, w] (any h, w) → uint8 [h·f, w·f, 3] via ``generator.decode_grid``.

    The VQGAN is convolutional (global attention over h·w), so a wide grid is decoded whole: no
    tiles, no stitching.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be a 2-D grid [h, w], got shape {tokens.shape}")
    return np.asarray(generator.decode_grid(tokens))
