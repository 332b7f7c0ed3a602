"""Cover-ready images: one generation → every platform preset at its exact size.

For each preset: outpaint the token grid to the preset's aspect ratio (``dalle_core.outpaint``),
decode it, upscale ×4 (``dalle_core.upscale``), crop to the exact aspect around the original
image and resize to the exact pixel size, then optionally overlay the title. Work is shared:
all wide presets use one wide canvas (outpainted to the widest one) and all tall presets one tall
canvas, each decoded and upscaled once.

Presets live in ``configs/platforms.yaml`` (see there for the fields); ``load_presets`` reads it.
Importing this module does not import JAX (flows list presets without loading models); the
upscaler and the VQGAN load when ``render_platforms`` runs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dalle_core.outpaint import (
    DEFAULT_OUTPAINT,
    DEFAULT_SAMPLING,
    OutpaintSettings,
    decode_grid,
    outpaint_tokens,
    target_grid,
)
from dalle_core.types import SamplingSettings

if TYPE_CHECKING:
    from dalle_core.upscale import SwinIRUpscaler

log = logging.getLogger(__name__)

FONT_PATH = Path(__file__).parent / "fonts" / "DejaVuSans-Bold.ttf"
# Aspect ratios closer than this to 1 are treated as square (no outpainting).
_SQUARE_TOL = 0.02


# --------------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class PlatformPreset:
    """One output image.

    width / height: exact pixel size of the result.
    outpaint: extend the token grid to this aspect ratio; False centre-crops the square instead.
    upscale: run the ×4 upscaler before the final resize (False: resize the decoded pixels).
    title: draw the title when one is given.
    """

    name: str
    width: int
    height: int
    outpaint: bool = True
    upscale: bool = True
    title: bool = True
    description: str = ""

    def __post_init__(self):
        if (
            not (isinstance(self.width, int) and isinstance(self.height, int))
            or min(self.width, self.height) < 16
        ):
            raise ValueError(
                f"preset {self.name!r}: width and height must be integers >= 16, got {self.width}x{self.height}"
            )

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def shape_kind(self) -> str:
        if abs(math.log(self.aspect)) < _SQUARE_TOL or not self.outpaint:
            return "square"
        return "wide" if self.aspect > 1 else "tall"


@dataclass(frozen=True)
class PlatformConfig:
    """The whole ``platforms.yaml``: presets plus the shared outpainting settings."""

    presets: dict[str, PlatformPreset]
    outpaint: OutpaintSettings = field(default_factory=OutpaintSettings)
    aliases: dict[str, str] = field(default_factory=dict)  # other name → preset name

    def names(self) -> list[str]:
        """Every name a user may give: the presets, then the aliases."""
        return [*self.presets, *self.aliases]

    def resolve(self, names: Iterable[str] | str) -> list[str]:
        """Preset names for ``names`` (a list or a comma-separated string; aliases resolved,
        repeats dropped, "all" for every preset). Unknown names raise one ``ValueError`` line."""
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        names = [str(n).strip().lower() for n in names]
        if names == ["all"]:
            return list(self.presets)
        unknown = [n for n in names if n not in self.presets and n not in self.aliases]
        if unknown:
            raise ValueError(
                f"unknown platform(s) {', '.join(map(repr, unknown))}; choose from "
                f"{', '.join(self.presets)} (or {', '.join(f'{a}={t}' for a, t in self.aliases.items())}, all)"
            )
        return list(dict.fromkeys(self.aliases.get(n, n) for n in names))

    def preset(self, name: str) -> PlatformPreset:
        """The preset a name or alias stands for (unknown names raise like :meth:`resolve`)."""
        return self.presets[self.resolve([name])[0]]


_PRESET_KEYS = {"width", "height", "outpaint", "upscale", "title", "description"}


def default_platforms_path() -> Path:
    return Path(str(resources.files("configs") / "platforms.yaml"))


def load_platforms(path: str | os.PathLike | None = None) -> PlatformConfig:
    """Read ``configs/platforms.yaml`` (or ``path``); bad entries raise one-line ``ValueError``s."""
    import yaml

    path = Path(path) if path is not None else default_platforms_path()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read platform presets {path}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("presets"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'presets' mapping")
    defaults = data.get("defaults") or {}
    unknown = set(defaults) - (_PRESET_KEYS - {"width", "height", "description"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) in defaults: {', '.join(sorted(unknown))}")
    presets = {}
    for name, spec in data["presets"].items():
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: preset {name!r} must be a mapping with width and height")
        unknown = set(spec) - _PRESET_KEYS
        if unknown:
            raise ValueError(
                f"{path}: preset {name!r} has unknown key(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(_PRESET_KEYS))}"
            )
        if "width" not in spec or "height" not in spec:
            raise ValueError(f"{path}: preset {name!r} needs both width and height")
        presets[str(name)] = PlatformPreset(name=str(name), **{**defaults, **spec})
    try:
        outpaint = OutpaintSettings(**(data.get("outpaint") or {}))
    except TypeError as err:
        raise ValueError(f"{path}: bad outpaint section ({err})") from err
    aliases = data.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise ValueError(f"{path}: 'aliases' must map other names to preset names")
    aliases = {str(a): str(t) for a, t in aliases.items()}
    for alias, target in aliases.items():
        if target not in presets or alias in presets:
            raise ValueError(f"{path}: alias {alias!r} must name a preset ({target!r} is not one) "
                             "and must not be a preset's own name")
    return PlatformConfig(presets, outpaint, aliases)


def load_presets(path: str | os.PathLike | None = None) -> dict[str, PlatformPreset]:
    """Presets by name from ``configs/platforms.yaml`` (or ``path``)."""
    return load_platforms(path).presets


def select_presets(names: Iterable[str] | str, platforms: PlatformConfig) -> list[PlatformPreset]:
    """Presets named in ``names`` (see :meth:`PlatformConfig.resolve`)."""
    return [platforms.presets[n] for n in platforms.resolve(names)]


# --------------------------------------------------------------------------------------------------
# Title overlay


@dataclass(frozen=True)
class TitleLayout:
    """Where and how the title goes. box: (left, top, right, bottom) of the text block."""

    font_size: int
    lines: tuple[str, ...]
    box: tuple[int, int, int, int]
    line_height: int


def _font(size: int, font_path: str | os.PathLike | None) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path or FONT_PATH), size)


def _wrap(words: list[str], font, max_width: float) -> list[str]:
    """Greedy word wrap; a word wider than the line is broken between characters."""
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        while font.getlength(word) > max_width and len(word) > 1:
            cut = 1
            while cut < len(word) and font.getlength(word[: cut + 1]) <= max_width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def layout_title(
    size: tuple[int, int],
    title: str,
    *,
    position: str = "bottom",
    margin: float = 0.06,
    max_lines: int = 3,
    max_height: float = 0.4,
    max_font: float = 0.1,
    min_font_px: int = 12,
    font_path: str | os.PathLike | None = None,
) -> TitleLayout:
    """Largest font (≤ ``max_font`` × height) at which ``title`` wraps into ≤ ``max_lines`` lines
    inside the safe area (``margin`` × each side) and ≤ ``max_height`` × height.

    If even ``min_font_px`` does not fit, the last line is cut with an ellipsis.
    """
    if position not in ("bottom", "top", "center"):
        raise ValueError(f"title position must be 'bottom', 'top' or 'center', got {position!r}")
    title = " ".join(str(title).split())
    if not title:
        raise ValueError("title is empty")
    w, h = size
    mx, my = round(margin * w), round(margin * h)
    box_w = w - 2 * mx
    words = title.split(" ")
    start = max(min_font_px, int(max_font * min(h, w * 0.6)))
    chosen = None
    font_size = start
    while True:
        font = _font(font_size, font_path)
        line_h = round(font_size * 1.2)
        lines = _wrap(words, font, box_w)
        if len(lines) <= max_lines and len(lines) * line_h <= max_height * h:
            chosen = (font_size, lines, line_h)
            break
        if font_size <= min_font_px:
            break
        font_size = max(min_font_px, int(font_size * 0.92))
    if chosen is None:  # does not fit even at the minimum size: keep max_lines, ellipsis
        font = _font(min_font_px, font_path)
        line_h = round(min_font_px * 1.2)
        keep = max(1, min(max_lines, int(max_height * h // line_h)))
        lines = lines[:keep]
        last = lines[-1]
        while last and font.getlength(last + "…") > box_w:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
        chosen = (min_font_px, lines, line_h)
    font_size, lines, line_h = chosen
    font = _font(font_size, font_path)
    block_h = line_h * len(lines)
    block_w = max(int(math.ceil(font.getlength(line))) for line in lines)
    if position == "bottom":
        top = h - my - block_h
    elif position == "top":
        top = my
    else:
        top = (h - block_h) // 2
    return TitleLayout(font_size, tuple(lines), (mx, top, mx + block_w, top + block_h), line_h)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Relative luminance (WCAG, linearised sRGB) of uint8 [..., 3] → float [...] in [0, 1]."""
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def contrast_ratio(l1: float, l2: float) -> float:
    hi, lo = max(l1, l2), min(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


def overlay_title(
    image: Image.Image,
    title: str,
    *,
    position: str = "bottom",
    margin: float = 0.06,
    max_lines: int = 3,
    max_height: float = 0.4,
    max_font: float = 0.1,
    min_font_px: int = 12,
    min_contrast: float = 4.5,
    font_path: str | os.PathLike | None = None,
) -> Image.Image:
    """Draw ``title`` on a copy of ``image`` with automatic contrast.

    A full-width translucent band sits behind the text. Its colour is the opposite of the text:
    light text on a dark band over dark or average backgrounds, dark text on a light band over
    light ones. The band's opacity grows until even the band's brightest (or darkest) pixel
    reaches ``min_contrast`` against the text (WCAG AA for normal text is 4.5), so busy
    backgrounds get a denser band and calm ones a lighter touch.
    """
    img = image.convert("RGB")
    w, h = img.size
    lay = layout_title(
        (w, h),
        title,
        position=position,
        margin=margin,
        max_lines=max_lines,
        max_height=max_height,
        max_font=max_font,
        min_font_px=min_font_px,
        font_path=font_path,
    )
    pad = max(4, round(lay.font_size * 0.4))
    band_top, band_bottom = max(0, lay.box[1] - pad), min(h, lay.box[3] + pad)
    arr = np.asarray(img).copy()
    region = arr[band_top:band_bottom]
    lum = _luminance(region)
    dark_text = float(np.median(lum)) > 0.4
    text_rgb = np.array([17, 17, 17] if dark_text else [255, 255, 255], np.float64)
    band_rgb = np.array([255, 255, 255] if dark_text else [0, 0, 0], np.float64)
    text_l = float(_luminance(text_rgb.astype(np.uint8)))
    # Worst background pixel: the brightest one under light text, the darkest under dark text
    # (robust percentiles ignore a few stray pixels).
    worst = np.percentile(region.reshape(-1, 3), 2 if dark_text else 98, axis=0)
    alpha = 0.25
    while alpha < 0.95:
        blended = worst * (1 - alpha) + band_rgb * alpha
        if (
            contrast_ratio(float(_luminance(blended.round().astype(np.uint8))), text_l)
            >= min_contrast
        ):
            break
        alpha += 0.05
    arr[band_top:band_bottom] = (region * (1 - alpha) + band_rgb * alpha).round().astype(np.uint8)
    out = Image.fromarray(arr)
    draw = ImageDraw.Draw(out)
    font = _font(lay.font_size, font_path)
    fill = tuple(int(v) for v in text_rgb)
    for i, line in enumerate(lay.lines):
        draw.text((lay.box[0], lay.box[1] + i * lay.line_height), line, font=font, fill=fill)
    out.info.update(image.info)
    out.info["title_font_px"] = str(lay.font_size)
    return out


# --------------------------------------------------------------------------------------------------
# Rendering


def crop_to_aspect(image: Image.Image, aspect: float, center: tuple[float, float]) -> Image.Image:
    """Largest crop of ``image`` with width/height == ``aspect`` whose centre is as close to
    ``center`` (x, y in pixels) as the borders allow."""
    w, h = image.size
    if w / h > aspect:
        cw, ch = max(1, round(h * aspect)), h
    else:
        cw, ch = w, max(1, round(w / aspect))
    left = int(round(min(max(center[0] - cw / 2, 0), w - cw)))
    top = int(round(min(max(center[1] - ch / 2, 0), h - ch)))
    return image.crop((left, top, left + cw, top + ch))


def render_platforms(
    generator,
    tokens,
    presets: Mapping[str, PlatformPreset] | Iterable[PlatformPreset],
    *,
    prompt: str,
    seed: int = 0,
    settings: SamplingSettings = DEFAULT_SAMPLING,
    negative_prompt: str | None = None,
    upscaler: SwinIRUpscaler | None = None,
    title: str | None = None,
    outpaint: OutpaintSettings = DEFAULT_OUTPAINT,
    title_options: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Image.Image]:
    """Every preset from one generated image.

    generator: a ``dalle_core.generator.Generator`` (``sample_tokens`` for outpainting, VQGAN
        decoding). tokens: int [g, g], the chosen candidate's codes. prompt / seed / settings /
        negative_prompt: what produced them (outpainting samples new tokens with the same
        conditioning). upscaler: SwinIR, or None for the Lanczos fallback. title: drawn on
        presets whose ``title`` flag is set.

    Returns {preset name: RGB PIL image of exactly width×height}. Each image's ``info`` records
    ``upscale_method``, ``token_grid`` ("rows x cols") and ``outpainted`` ("yes"/"no").
    """
    from dalle_core.upscale import upscale

    preset_list = list(presets.values()) if isinstance(presets, Mapping) else list(presets)
    if not preset_list:
        raise ValueError("no platform presets selected")
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] != tokens.shape[1]:
        raise ValueError(f"tokens must be one square grid [g, g], got shape {tokens.shape}")
    g = tokens.shape[0]
    say = progress or (lambda _msg: None)

    # One canvas per direction, sized for the most extreme preset of that direction.
    canvases: dict[str, tuple[np.ndarray, tuple[int, int]]] = {"square": (tokens, (0, 0))}
    kinds = {p.shape_kind for p in preset_list}
    for kind in ("wide", "tall"):
        if kind not in kinds:
            continue
        shapes = [target_grid(g, p.aspect) for p in preset_list if p.shape_kind == kind]
        shape = (max(s[0] for s in shapes), max(s[1] for s in shapes))
        say(f"outpainting to {shape[0]}x{shape[1]} tokens for {kind} presets")
        result = outpaint_tokens(
            generator,
            tokens,
            prompt,
            shape,
            seed=seed,
            settings=settings,
            negative_prompt=negative_prompt,
            outpaint=outpaint,
        )
        canvases[kind] = (result.tokens, result.origin)

    decoded: dict[str, np.ndarray] = {}
    upscaled: dict[str, tuple[np.ndarray, str]] = {}
    out: dict[str, Image.Image] = {}
    for preset in preset_list:
        kind = preset.shape_kind
        grid_tokens, (oy, ox) = canvases[kind]
        if kind not in decoded:
            say(f"decoding {grid_tokens.shape[0]}x{grid_tokens.shape[1]} tokens")
            decoded[kind] = decode_grid(generator, grid_tokens)
        pixels, method = decoded[kind], "none"
        if preset.upscale:
            if kind not in upscaled:
                say(f"upscaling {kind} image")
                result = upscale(decoded[kind], upscaler)
                upscaled[kind] = (result.image, result.method)
            pixels, method = upscaled[kind]
        px_per_token = pixels.shape[0] / grid_tokens.shape[0]
        center = ((ox + g / 2) * px_per_token, (oy + g / 2) * px_per_token)
        img = crop_to_aspect(Image.fromarray(pixels), preset.aspect, center)
        img = img.resize((preset.width, preset.height), Image.Resampling.LANCZOS)
        if title and preset.title:
            img = overlay_title(img, title, **dict(title_options or {}))
        img.info.update(
            upscale_method=method,
            token_grid=f"{grid_tokens.shape[0]}x{grid_tokens.shape[1]}",
            outpainted="yes" if kind != "square" else "no",
        )
        out[preset.name] = img
    return out
