"""Upscaling: SwinIR shapes and names on a tiny config, checkpoint round trip and loud failures,
tiled vs untiled inference, and the Lanczos fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dalle_core.checkpoints import CheckpointError, flatten, read_msgpack, write_msgpack
from dalle_core.checkpoints.swinir import (
    config_from_json,
    init_params,
    load_swinir,
    param_shapes,
    save_swinir,
)
from dalle_core.models.swinir import (
    SwinIRConfig,
    get_swinir_variant,
    relative_position_index,
    shifted_window_mask,
)
from dalle_core.upscale import (
    SwinIRUpscaler,
    blend_ramp,
    lanczos_upscale,
    load_upscaler,
    tile_layout,
    upscale,
)

# One group of two blocks (so shifted windows and their mask run), window 4: compiles in seconds.
TINY = SwinIRConfig(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, num_feat=8)


@pytest.fixture(scope="module")
def upscaler():
    return SwinIRUpscaler(
        TINY, init_params(TINY, seed=0), "tiny-test", tile=24, overlap=16, tile_batch=8
    )


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((28, 36, 3)).astype(np.float32)


def test_published_layouts_have_the_published_names_and_sizes():
    m, big = param_shapes(get_swinir_variant("M")), param_shapes(get_swinir_variant("L"))
    # SwinIR-M (1conv) and SwinIR-L (3conv) real-SR x4: ~11.7M and ~28.0M parameters.
    assert abs(sum(int(np.prod(s.shape)) for s in m.values()) / 1e6 - 11.72) < 0.05
    assert abs(sum(int(np.prod(s.shape)) for s in big.values()) / 1e6 - 28.01) < 0.05
    assert m["layers_5/residual_group/blocks_5/attn/relative_position_bias_table"].shape == (225, 6)
    assert m["layers_0/residual_group/blocks_0/attn/qkv/kernel"].shape == (180, 540)
    assert m["layers_0/conv/kernel"].shape == (3, 3, 180, 180)
    assert m["conv_before_upsample_0/kernel"].shape == (3, 3, 180, 64)
    assert m["patch_embed/norm/scale"].shape == (180,)
    assert big["layers_8/conv/conv_2/kernel"].shape == (1, 1, 60, 60)
    assert big["conv_after_body/conv_4/kernel"].shape == (3, 3, 60, 240)
    assert "conv_up2/kernel" in m and "layers_6/conv/kernel" not in m


def test_relative_position_index_and_mask():
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and idx.min() == 0 and idx.max() == 24
    assert np.all(np.diag(idx) == 12)  # zero offset is the table's centre row
    assert idx[0, 8] == 0 and idx[8, 0] == 24  # (-2,-2) and (+2,+2) offsets
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert np.all(mask[0] == 0)  # top-left window holds one region only
    assert np.any(mask[3] == -100.0) and np.all(np.diag(mask[3]) == 0)


def test_swinir_upscales_by_four_any_size(upscaler, image):
    out = upscaler.run_untiled(image[None])
    assert out.shape == (1, 112, 144, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.std() > 0


def test_tiled_matches_untiled(upscaler, image):
    full = upscaler.run_untiled(image[None])[0]
    tiled = upscaler.run_tiled(image)
    assert tiled.shape == full.shape
    assert (
        len(tile_layout(28, 24, 16, 4)[1]) * len(tile_layout(36, 24, 16, 4)[1]) == 6
    )  # really tiled
    diff = np.abs(tiled - full)
    # Tiles see less context near their edges; the blend gives those pixels little or no weight.
    assert diff.mean() < 0.01 * full.std(), diff.mean()
    assert diff.max() < 0.2 * full.std(), diff.max()


def test_uint8_call_and_method(upscaler):
    img = (np.random.default_rng(1).random((28, 36, 3)) * 255).astype(np.uint8)
    result = upscale(img, upscaler)
    assert result.method == "swinir:tiny-test"
    assert result.image.shape == (112, 144, 3) and result.image.dtype == np.uint8
    with pytest.raises(ValueError, match="×2"):
        upscale(img, upscaler, scale=2)


def test_tile_layout_and_blend_weights():
    assert tile_layout(256, 128, 32, 8) == (112, [0, 72, 144])  # evenly spread, no excess overlap
    assert tile_layout(100, 128, 32, 4) == (100, [0])
    for length, tile, overlap, align in [
        (28, 24, 16, 4),
        (100, 32, 8, 4),
        (33, 32, 4, 1),
        (1000, 128, 32, 8),
    ]:
        size, starts = tile_layout(length, tile, overlap, align)
        assert size <= tile and starts[0] == 0 and starts[-1] + size == length
        assert size % align == 0 and all(s % align == 0 for s in starts)
        assert all(size - (b - a) >= overlap for a, b in zip(starts, starts[1:], strict=False))
        total = np.zeros(length)
        for s in starts:
            total[s : s + size] += blend_ramp(size, s > 0, s + size < length, overlap)
        assert total.min() > 0.2, (length, tile, overlap)


def test_lanczos_fallback():
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, 8:] = 200
    result = upscale(img)
    assert result.method == "lanczos"
    assert result.image.shape == (64, 64, 3) and result.image.dtype == np.uint8
    assert result.image[:, :28].max() < 30 and result.image[:, 36:].min() > 170
    plain = lanczos_upscale(img, sharpen=False)
    # the unsharp mask steepens the edge
    edge = lambda a: np.abs(np.diff(a[:, :, 0].astype(float), axis=1)).max()  # noqa: E731
    assert edge(result.image) >= edge(plain)
    assert load_upscaler(None) is None and load_upscaler("lanczos") is None
    with pytest.raises(ValueError, match="uint8"):
        upscale(np.zeros((4, 4, 3), np.float32))


def test_checkpoint_round_trip(tmp_path):
    params = init_params(TINY, seed=3)
    save_swinir(tmp_path / "ckpt", TINY, params)
    cfg, loaded = load_swinir(tmp_path / "ckpt")
    assert cfg == TINY
    a, b = flatten(params), flatten(loaded)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    up = SwinIRUpscaler.from_pretrained(tmp_path / "ckpt", tile=16)
    assert up.method == "swinir:ckpt"


def test_published_config_json_is_understood():
    # The keys a SwinIR-JAX config.json holds (no num_feat: the published models all use 64).
    data = {
        "img_size": [64, 64],
        "patch_size": [1, 1],
        "in_chans": 3,
        "embed_dim": 240,
        "depths": [6] * 9,
        "num_heads": [8] * 9,
        "window_size": 8,
        "mlp_ratio": 2,
        "qkv_bias": True,
        "drop_rate": 0.0,
        "attn_drop_rate": 0.0,
        "drop_path_rate": 0.1,
        "ape": False,
        "patch_norm": True,
        "upscale": 4,
        "img_range": 1.0,
        "upsampler": "nearest+conv",
        "resi_connection": "3conv",
        "transformers_version": "4.23.1",
    }
    assert config_from_json(data) == get_swinir_variant("L")
    with pytest.raises(CheckpointError, match="upsampler"):
        config_from_json({**data, "upsampler": "pixelshuffle"})
    with pytest.raises(CheckpointError, match="ape"):
        config_from_json({**data, "ape": True})


def test_bad_checkpoints_name_the_problem(tmp_path):
    params = init_params(TINY, seed=0)
    folder = save_swinir(tmp_path / "ok", TINY, params)
    weights = folder / "flax_model.msgpack"

    flat = flatten(read_msgpack(weights))
    key = "layers_0/residual_group/blocks_1/attn/qkv/kernel"
    flat[key] = np.zeros((8, 7), np.float32)
    from dalle_core.checkpoints import unflatten

    write_msgpack(weights, unflatten(flat))
    with pytest.raises(
        CheckpointError, match=f"{key} expected shape \\(8, 24\\), found \\(8, 7\\)"
    ):
        load_swinir(folder)

    del flat[key]
    write_msgpack(weights, unflatten(flat))
    with pytest.raises(CheckpointError, match=f"missing key {key}"):
        load_swinir(folder)

    weights.write_bytes(b"\x00not msgpack at all")
    with pytest.raises(CheckpointError, match="not a valid Flax msgpack"):
        load_swinir(folder)

    # A checkpoint that does not fit the config (M weights named by an L config, say).
    save_swinir(tmp_path / "other", TINY, params)
    cfg_path = tmp_path / "other" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["resi_connection"] = "3conv"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="conv_after_body/conv_0"):
        load_swinir(tmp_path / "other")

    with pytest.raises(CheckpointError, match="missing flax_model.msgpack"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text("{}")
        load_swinir(tmp_path / "empty")
