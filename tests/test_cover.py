"""Platform presets, exact output sizes, the title overlay and its automatic contrast."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dalle_core.cover import (
    PlatformPreset,
    _luminance,
    contrast_ratio,
    crop_to_aspect,
    layout_title,
    load_platforms,
    load_presets,
    overlay_title,
    render_platforms,
    select_presets,
)
from dalle_core.models.swinir import SwinIRConfig
from dalle_core.upscale import SwinIRUpscaler

EXPECTED = {
    "blog": (1200, 630),
    "linkedin": (1200, 627),
    "x": (1600, 900),
    "instagram-square": (1080, 1080),
    "instagram-portrait": (1080, 1350),
    "facebook": (1200, 630),
    "pinterest": (1000, 1500),
}


class FakeGenerator:
    """Seeded random tokens that honour forced positions; each code decodes to a flat 8×8 colour."""

    def __init__(self, grid: int = 8, n_embed: int = 64):
        self.grid, self.n_embed = grid, n_embed
        self.palette = np.random.default_rng(123).integers(0, 256, (n_embed, 3), dtype=np.uint8)
        self.calls = []

    def sample_tokens(
        self, prompts, n, seed, settings, negative_prompt=None, forced_tokens=None, forced_mask=None
    ):
        g = self.grid
        out = (
            np.random.default_rng(seed)
            .integers(0, self.n_embed, (len(prompts), n, g, g))
            .astype(np.int32)
        )
        if forced_mask is not None:
            out = np.where(
                np.asarray(forced_mask)[:, None], np.asarray(forced_tokens)[:, None], out
            )
        self.calls.append((np.asarray(forced_tokens).copy(), np.asarray(forced_mask).copy()))
        return out

    def decode_grid(self, tokens):
        return np.repeat(np.repeat(self.palette[tokens], 8, axis=0), 8, axis=1)


@pytest.fixture()
def tokens():
    return np.random.default_rng(0).integers(0, 64, (8, 8)).astype(np.int32)


def test_default_presets_have_the_platform_sizes():
    presets = load_presets()
    assert {name: (p.width, p.height) for name, p in presets.items()} == EXPECTED
    assert all(p.outpaint and p.upscale and p.title for p in presets.values())
    assert load_platforms().outpaint.vertical == "down"
    platforms = load_platforms()
    assert [p.name for p in select_presets("blog, x", platforms)] == ["blog", "x"]
    assert len(select_presets("all", platforms)) == len(EXPECTED)
    with pytest.raises(ValueError, match="unknown platform\\(s\\) 'tiktok'; choose from blog"):
        select_presets(["blog", "tiktok"], platforms)


def test_one_registry_of_names_and_aliases():
    platforms = load_platforms()
    assert platforms.aliases == {"og": "blog", "twitter": "x", "instagram": "instagram-square"}
    assert platforms.resolve("og, twitter,Instagram, blog") == ["blog", "x", "instagram-square"]
    assert platforms.names()[:len(EXPECTED)] == list(EXPECTED)
    assert platforms.preset("Instagram").name == "instagram-square"  # as resolve() reads names


def test_bad_preset_files_name_the_problem(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("presets:\n  og:\n    width: 1200\n    heigth: 630\n")
    with pytest.raises(ValueError, match="preset 'og' has unknown key\\(s\\) heigth"):
        load_presets(bad)
    bad.write_text("presets:\n  og:\n    width: 1200\n")
    with pytest.raises(ValueError, match="needs both width and height"):
        load_presets(bad)
    bad.write_text("presets:\n  og: {width: 4, height: 630}\n")
    with pytest.raises(ValueError, match="integers >= 16"):
        load_presets(bad)
    bad.write_text("outpaint: {vertical: sideways}\npresets:\n  og: {width: 40, height: 30}\n")
    with pytest.raises(ValueError, match="vertical must be one of"):
        load_platforms(bad)


def test_every_preset_at_its_exact_size_from_one_generation(tokens):
    gen = FakeGenerator()
    images = render_platforms(
        gen, tokens, load_presets(), prompt="a lighthouse", seed=3, title="Remote work rituals"
    )
    assert set(images) == set(EXPECTED)
    for name, img in images.items():
        assert img.size == EXPECTED[name], name
        assert img.mode == "RGB"
        assert img.info["upscale_method"] == "lanczos"
    assert images["instagram-square"].info["outpainted"] == "no"
    # One wide canvas serves blog, linkedin, facebook and x (x is the least wide: ceil(8·1200/627) = 16).
    assert images["blog"].info["token_grid"] == images["x"].info["token_grid"] == "8x16"
    # One tall canvas for both tall presets, sized for the taller (pinterest 2:3 → 12 rows).
    assert (
        images["pinterest"].info["token_grid"]
        == images["instagram-portrait"].info["token_grid"]
        == "12x8"
    )
    # 8 new columns in two windows (4 right, 4 left) + 4 new rows in one window.
    assert len(gen.calls) == 3
    # Every window call kept the known tokens: the original's columns are forced in the first call.
    forced, mask = gen.calls[0]
    assert mask[0].sum() == 8 * 4 and np.array_equal(forced[0][mask[0]], tokens[:, 4:].ravel())


def test_wide_image_keeps_the_original_in_the_middle(tokens):
    gen = FakeGenerator()
    preset = PlatformPreset("wide", 512, 256, upscale=False)
    img = render_platforms(gen, tokens, [preset], prompt="p", seed=1)["wide"]
    # 8x16 canvas decodes to 64x128, no upscale, resized 4x: the original sits at columns 4..12.
    arr = np.asarray(img)
    original = np.asarray(
        Image.fromarray(gen.decode_grid(tokens)).resize((256, 256), Image.Resampling.LANCZOS)
    )
    np.testing.assert_allclose(
        arr[:, 128 + 8 : 384 - 8].astype(float), original[:, 8:-8].astype(float), atol=40
    )
    assert img.info["upscale_method"] == "none"


def test_square_only_and_no_outpaint_presets_sample_nothing(tokens):
    gen = FakeGenerator()
    presets = [PlatformPreset("sq", 300, 300), PlatformPreset("crop", 400, 200, outpaint=False)]
    images = render_platforms(gen, tokens, presets, prompt="p")
    assert gen.calls == []
    assert images["sq"].size == (300, 300) and images["crop"].size == (400, 200)
    assert images["crop"].info["outpainted"] == "no"


def test_swinir_upscaler_is_recorded(tokens):
    cfg = SwinIRConfig(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, num_feat=8)
    up = SwinIRUpscaler.random(cfg, tile=64)
    images = render_platforms(
        FakeGenerator(), tokens, [PlatformPreset("sq", 200, 200)], prompt="p", upscaler=up
    )
    assert images["sq"].size == (200, 200)
    assert images["sq"].info["upscale_method"] == "swinir:random-custom"


def test_crop_to_aspect_stays_inside_and_near_the_centre():
    img = Image.new("RGB", (400, 100))
    crop = crop_to_aspect(img, 2.0, center=(390, 50))
    assert crop.size == (200, 100)
    assert crop_to_aspect(img, 2.0, center=(100, 50)).size == (200, 100)
    assert crop_to_aspect(Image.new("RGB", (100, 300)), 0.5, (50, 150)).size == (100, 200)


# --------------------------------------------------------------------------------------------------
# Title overlay


def _text_pixels(before: np.ndarray, after: np.ndarray, text_rgb) -> np.ndarray:
    return np.all(np.abs(after.astype(int) - np.asarray(text_rgb)) <= 2, axis=-1) & np.any(
        before != after, axis=-1
    )


@pytest.mark.parametrize(
    "background, text_rgb", [(250, (17, 17, 17)), (10, (255, 255, 255)), (128, (255, 255, 255))]
)
def test_title_contrast_follows_the_background(background, text_rgb):
    img = Image.new("RGB", (1200, 630), (background,) * 3)
    out = overlay_title(img, "Five rituals that make remote teams work")
    before, after = np.asarray(img), np.asarray(out)
    text = _text_pixels(before, after, text_rgb)
    assert text.sum() > 500
    ys, xs = np.nonzero(text)
    # Safe margins: 6% of each side is left free.
    assert xs.min() >= 0.06 * 1200 - 1 and xs.max() <= 1200 * 0.94 + 1
    assert ys.max() <= 630 * 0.94 + 1
    # The band spans the full width; its part left of the text is pure band over background.
    band_bg = after[ys.min() : ys.max() + 1, : xs.min() - 4].reshape(-1, 3)
    assert np.any(band_bg != before[0, 0])  # a band was drawn
    worst = np.percentile(_luminance(band_bg), 98 if text_rgb[0] > 128 else 2)
    assert contrast_ratio(float(worst), float(_luminance(np.array(text_rgb, np.uint8)))) >= 4.4


def test_title_on_a_busy_background_gets_a_denser_band():
    rng = np.random.default_rng(0)
    busy = Image.fromarray(rng.integers(0, 256, (630, 1200, 3), dtype=np.uint8))
    calm = Image.new("RGB", (1200, 630), (40, 40, 40))
    title = "A short title"

    def band_change(img):
        out = np.asarray(overlay_title(img, title)).astype(float)
        lay = layout_title(img.size, title)
        rows = slice(lay.box[1], lay.box[3])
        return np.abs(out[rows, :60] - np.asarray(img).astype(float)[rows, :60]).mean()

    assert band_change(busy) > band_change(calm)


def test_long_titles_shrink_and_wrap_and_never_overflow():
    short = layout_title((1200, 630), "Rituals")
    long = layout_title(
        (1200, 630),
        "Why asynchronous rituals, written decisions and quiet focus hours make remote teams faster "
        * 2,
    )
    assert long.font_size < short.font_size
    assert 1 < len(long.lines) <= 3
    assert long.box[2] <= 1200 - 72 and long.box[3] <= 630 - 37
    tiny = layout_title(
        (120, 63), "Supercalifragilisticexpialidocious is a very long word indeed " * 3
    )
    assert tiny.font_size == 12 and tiny.lines[-1].endswith("…") and len(tiny.lines) <= 3
    with pytest.raises(ValueError, match="title is empty"):
        layout_title((100, 100), "   ")


def test_render_draws_the_title_only_where_enabled(tokens):
    presets = [PlatformPreset("with", 400, 210), PlatformPreset("without", 400, 210, title=False)]
    images = render_platforms(
        FakeGenerator(), tokens, presets, prompt="p", seed=0, title="Hello covers"
    )
    a, b = np.asarray(images["with"]), np.asarray(images["without"])
    assert not np.array_equal(a, b)
    assert np.array_equal(a[:100], b[:100])  # the band is at the bottom; the top is untouched
