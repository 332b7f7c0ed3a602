"""Token-space outpainting: window planning, the original kept exactly, non-square decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle_core.config import BartConfig, CLIPConfig, ModelVariant, VQGANConfig
from dalle_core.outpaint import (
    OutpaintSettings,
    decode_grid,
    outpaint_tokens,
    plan_windows,
    target_grid,
)
from dalle_core.types import ModelInfo, SamplingSettings


class RecordingGenerator:
    """Random tokens per seed, forced positions honoured; records every window it is asked for."""

    def __init__(self, grid: int):
        self.grid = grid
        self.calls = []

    def sample_tokens(
        self, prompts, n, seed, settings, negative_prompt=None, forced_tokens=None, forced_mask=None
    ):
        g = self.grid
        out = (
            np.random.default_rng(seed)
            .integers(1000, 2000, (len(prompts), n, g, g))
            .astype(np.int32)
        )
        out = np.where(forced_mask[:, None], forced_tokens[:, None], out)
        self.calls.append((forced_tokens[0].copy(), forced_mask[0].copy()))
        return out


def test_target_grid():
    assert target_grid(16, 1200 / 630) == (16, 31)
    assert target_grid(16, 1600 / 900) == (16, 29)
    assert target_grid(16, 1080 / 1350) == (20, 16)
    assert target_grid(16, 1000 / 1500) == (24, 16)
    assert target_grid(8, 1.0) == (8, 8)
    with pytest.raises(ValueError, match="positive"):
        target_grid(8, 0.0)


@pytest.mark.parametrize(
    "shape, horizontal, vertical",
    [
        ((8, 16), "both", "down"),
        ((8, 19), "right", "down"),
        ((8, 13), "left", "down"),
        ((12, 8), "both", "down"),
        ((13, 8), "both", "up"),
        ((11, 8), "both", "both"),
        ((12, 16), "both", "down"),
    ],
)
def test_original_kept_and_every_window_conditioned(shape, horizontal, vertical):
    g = 8
    original = np.arange(g * g, dtype=np.int32).reshape(g, g)
    gen = RecordingGenerator(g)
    res = outpaint_tokens(
        gen,
        original,
        "a prompt",
        shape,
        seed=5,
        outpaint=OutpaintSettings(horizontal=horizontal, vertical=vertical),
    )
    oy, ox = res.origin
    assert res.tokens.shape == shape
    np.testing.assert_array_equal(res.tokens[oy : oy + g, ox : ox + g], original)
    # every other cell was sampled (the fake samples 1000..1999, the original holds 0..63)
    outside = np.ones(shape, bool)
    outside[oy : oy + g, ox : ox + g] = False
    assert np.all(res.tokens[outside] >= 1000)
    assert res.windows == len(gen.calls) > 0
    for _forced, mask in gen.calls:
        # each window keeps at least half of itself as context and samples the rest
        assert g * g // 2 <= mask.sum() < g * g
    # the first window's context is exactly the original's border columns/rows
    forced, mask = gen.calls[0]
    assert np.all(np.isin(forced[mask], original))
    if horizontal == "both" and shape[1] > g:
        assert ox == (shape[1] - g) // 2 and ox in res.joins_x and ox + g in res.joins_x
    if vertical == "down":
        assert oy == 0
    if vertical == "up":
        assert oy == shape[0] - g


def test_windows_cover_the_canvas_and_stay_inside():
    for shape in [(8, 31), (16, 31), (24, 16), (20, 29)]:
        g = 8 if shape[0] == 8 else 16
        oy, ox = 0, (shape[1] - g) // 2
        windows, joins_x, joins_y = plan_windows(shape, g, (oy, ox), g // 2)
        covered = np.zeros(shape, bool)
        covered[oy : oy + g, ox : ox + g] = True
        for y, x in windows:
            assert 0 <= y <= shape[0] - g and 0 <= x <= shape[1] - g
            assert covered[y : y + g, x : x + g].any()  # every window has context when it runs
            covered[y : y + g, x : x + g] = True
        assert covered.all(), shape


def test_bad_requests():
    gen = RecordingGenerator(8)
    tokens = np.zeros((8, 8), np.int32)
    with pytest.raises(ValueError, match="smaller than the 8x8 grid"):
        outpaint_tokens(gen, tokens, "p", (8, 4))
    with pytest.raises(ValueError, match="step 8 leaves no context"):
        outpaint_tokens(gen, tokens, "p", (8, 16), outpaint=OutpaintSettings(step=8))
    with pytest.raises(ValueError, match="one square grid"):
        outpaint_tokens(gen, np.zeros((8, 9)), "p", (8, 16))
    with pytest.raises(ValueError, match="horizontal must be one of"):
        OutpaintSettings(horizontal="middle")


# --------------------------------------------------------------------------------------------------
# With the real Generator on a very small random model (4×4 tokens, 32 px, f8 VQGAN)

BART = BartConfig(
    d_model=32,
    encoder_layers=1,
    decoder_layers=1,
    attention_heads=4,
    glu_dim=48,
    text_vocab_size=400,
    image_vocab_size=64,
    max_text_length=16,
    image_length=16,
)
VQ = VQGANConfig(
    ch=8,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    resolution=32,
    z_channels=8,
    embed_dim=8,
    n_embed=64,
    num_groups=4,
)


def _fill(shapes, seed):
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return jnp.ones(x.shape, x.dtype)
        if "bias" in name:
            return jnp.zeros(x.shape, x.dtype)
        return jnp.asarray(rng.standard_normal(x.shape).astype(np.float32) * 0.3)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def generator():
    from dalle_core.generator import Generator
    from dalle_core.models.bart import param_shapes
    from dalle_core.models.vqgan import vqgan_param_shapes
    from dalle_core.text import build_fallback_tokenizer

    variant = ModelVariant("custom", BART, VQ, CLIPConfig())
    info = ModelInfo(
        name="outpaint-test", variant="custom", checkpoint="random-init", random_init=True
    )
    tokenizer = build_fallback_tokenizer(400, max_length=BART.max_text_length)
    return Generator(
        variant, _fill(param_shapes(BART), 0), _fill(vqgan_param_shapes(VQ), 1), tokenizer, info
    )


def test_real_generator_outpaints_wide_and_tall(generator):
    settings = SamplingSettings(condition_scale=1.0, top_k=None)
    original = generator.sample_tokens(["a lighthouse"], 1, seed=0, settings=settings)[0, 0]
    seen = []
    sample = generator.sample_tokens

    def checked(*args, **kwargs):  # the sampler itself must keep forced tokens
        out = sample(*args, **kwargs)
        mask, forced = kwargs["forced_mask"], kwargs["forced_tokens"]
        np.testing.assert_array_equal(out[0, 0][mask[0]], forced[0][mask[0]])
        seen.append(int((~mask).sum()))
        return out

    generator.sample_tokens = checked
    try:
        res = outpaint_tokens(
            generator, original, "a lighthouse", (6, 8), seed=1, settings=settings
        )
    finally:
        del generator.sample_tokens
    oy, ox = res.origin
    assert (oy, ox) == (0, 2)
    np.testing.assert_array_equal(res.tokens[0:4, 2:6], original)
    assert res.tokens.min() >= 0 and res.tokens.max() < VQ.n_embed
    assert sum(seen) == 6 * 8 - 16  # every new token sampled exactly once

    pixels = decode_grid(generator, res.tokens)
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8
    # the whole-grid VQGAN path agrees with the Generator's own decoder on its square grid
    own = generator.decode(original[None])[0]
    np.testing.assert_array_equal(generator.decode_grid(original), own)
    np.testing.assert_array_equal(decode_grid(generator, original), own)
    with pytest.raises(ValueError, match="VQGAN codes"):
        generator.decode_grid(np.full((2, 3), VQ.n_embed))
