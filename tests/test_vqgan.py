"""VQGAN module and checkpoint tests on a micro config (16×16 pixels, f2, attention at 8²)."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle_core.checkpoints import CheckpointError, flatten, read_msgpack, unflatten, write_msgpack
from dalle_core.checkpoints.vqgan import load_vqgan, save_vqgan
from dalle_core.config import VQGANConfig, get_variant
from dalle_core.models.vqgan import VQModel, init_vqgan_params, vqgan_param_shapes

MICRO = VQGANConfig(
    ch=8,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    resolution=16,
    z_channels=8,
    embed_dim=4,
    n_embed=16,
    num_groups=4,
)


@functools.cache
def _apply(cfg, method=None):
    """A jitted ``VQModel(cfg).apply`` (one compile beats eager op-by-op dispatch on CPU), shared by tests."""
    fn = lambda p, x: VQModel(cfg).apply({"params": p}, x, method=method)  # noqa: E731
    return jax.jit(fn)


def _random_params(cfg, seed=0):
    """Random numpy params of the right shapes without running the model (checkpoint I/O tests)."""
    # (jax.random initialisers cost seconds of XLA compile each on CPU; numpy costs nothing.)
    rng = np.random.default_rng(seed)
    flat = flatten(vqgan_param_shapes(cfg))
    scale = {k: 1.0 / np.sqrt(np.prod(v.shape[:-1])) if len(v.shape) > 1 else 0.1 for k, v in flat.items()}
    return unflatten(
        {k: (scale[k] * rng.normal(size=v.shape)).astype(np.float32) for k, v in flat.items()}
    )


@pytest.fixture(scope="module")
def params():
    return _random_params(MICRO)


@pytest.fixture(scope="module")
def pixels():
    return jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3))


def test_param_names_follow_vqgan_jax(params):
    keys = set(flatten(params))
    expected = {
        "encoder/conv_in/kernel",
        "encoder/down_0/block_0/norm1/scale",
        "encoder/down_0/block_0/conv1/kernel",
        "encoder/down_0/downsample/conv/kernel",
        "encoder/down_1/block_0/nin_shortcut/kernel",  # 8 → 16 channels
        "encoder/down_1/attn_0/q/kernel",  # down_1 runs at 8² ∈ attn_resolutions
        "encoder/mid/block_1/norm2/bias",
        "encoder/mid/attn_1/proj_out/kernel",
        "encoder/mid/block_2/conv2/bias",
        "encoder/norm_out/scale",
        "encoder/conv_out/kernel",
        "quant_conv/kernel",
        "quantize/embedding/embedding",
        "post_quant_conv/bias",
        "decoder/conv_in/kernel",
        "decoder/up_1/block_1/conv2/kernel",  # decoder levels have num_res_blocks + 1 blocks
        "decoder/up_1/attn_1/v/kernel",
        "decoder/up_1/upsample/conv/kernel",
        "decoder/up_0/block_0/nin_shortcut/kernel",  # 16 → 8 channels
        "decoder/conv_out/bias",
    }
    assert expected <= keys, sorted(expected - keys)
    # no resampler past the ends, no attention at 16², no temb projection
    assert not any(k.startswith(("encoder/down_1/downsample", "decoder/up_0/upsample")) for k in keys)
    assert not any("down_0/attn" in k or "up_0/attn" in k or "temb" in k for k in keys)
    assert params["quantize"]["embedding"]["embedding"].shape == (16, 4)
    assert params["encoder"]["conv_in"]["kernel"].shape == (3, 3, 3, 8)  # HWIO


def test_published_config_shapes():
    # The f16 model: 16 384 codes of width 256, 256² pixels → 16² latents, attention at 16².
    flat = flatten(vqgan_param_shapes(VQGANConfig()))
    assert flat["quantize/embedding/embedding"].shape == (16384, 256)
    assert flat["encoder/down_4/attn_1/k/kernel"].shape == (1, 1, 512, 512)
    assert flat["decoder/up_4/attn_2/k/kernel"].shape == (1, 1, 512, 512)
    assert "encoder/down_3/attn_0/k/kernel" not in flat
    assert flat["decoder/conv_out/kernel"].shape == (3, 3, 128, 3)
    n = sum(int(np.prod(v.shape)) for v in flat.values())
    assert 70e6 < n < 80e6, n


def test_encode_decode_shapes(params, pixels):
    z_q, idx = _apply(MICRO, "encode")(params, pixels)
    assert z_q.shape == (2, 8, 8, 4) and z_q.dtype == jnp.float32
    assert idx.shape == (2, 64) and idx.dtype == jnp.int32
    assert int(idx.min()) >= 0 and int(idx.max()) < MICRO.n_embed
    out = _apply(MICRO, "decode_code")(params, idx)
    assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # decode_code is decode of the looked-up codes, clipped
    raw = _apply(MICRO, "decode")(params, z_q)
    np.testing.assert_allclose(out, np.clip(raw, 0, 1), atol=1e-6)


def test_tiny_variant_shapes():
    cfg = get_variant("tiny").vqgan
    x = jax.ShapeDtypeStruct((3, cfg.resolution, cfg.resolution, 3), jnp.float32)
    p = vqgan_param_shapes(cfg)
    z_q, idx = jax.eval_shape(lambda p, x: VQModel(cfg).apply({"params": p}, x, method="encode"), p, x)
    assert z_q.shape == (3, 8, 8, cfg.embed_dim) and idx.shape == (3, 64)
    out = jax.eval_shape(
        lambda p, i: VQModel(cfg).apply({"params": p}, i, method="decode_code"),
        p,
        jax.ShapeDtypeStruct((3, 64), jnp.int32),
    )
    assert out.shape == (3, 64, 64, 3)


def test_quantizer_picks_nearest_code(params):
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(16, 4)).astype(np.float32)
    z = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    p = dict(params)
    p["quantize"] = {"embedding": {"embedding": jnp.asarray(codebook)}}

    def quantize(module, z):
        return module.quantize(z)

    z_q, idx = _apply(MICRO, quantize)(p, jnp.asarray(z))
    dist = ((z.reshape(-1, 1, 4) - codebook[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(idx).reshape(-1), dist.argmin(-1))
    np.testing.assert_allclose(np.asarray(z_q).reshape(-1, 4), codebook[dist.argmin(-1)])
    # a latent equal to a code maps to that code
    exact = jnp.asarray(codebook[[3, 7, 11, 0]].reshape(1, 2, 2, 4))
    _, idx = _apply(MICRO, quantize)(p, exact)
    np.testing.assert_array_equal(np.asarray(idx), [[3, 7, 11, 0]])


def test_training_forward_straight_through(params, pixels):
    model = VQModel(MICRO)

    def recon_loss(p):
        r, a = model.apply({"params": p}, pixels, train=True)
        return jnp.mean((r - pixels) ** 2), (r, a)

    (_, (recon, aux)), g = jax.jit(jax.value_and_grad(recon_loss, has_aux=True))(params)
    assert recon.shape == pixels.shape
    assert aux["indices"].shape == (2, 64)
    # forward value of the straight-through path is the decoded quantized latents
    z_q, idx = _apply(MICRO, "encode")(params, pixels)
    np.testing.assert_array_equal(aux["indices"], idx)
    np.testing.assert_allclose(recon, _apply(MICRO, "decode")(params, z_q), atol=1e-5)
    # both VQ losses equal the mean squared latent-to-code distance in value
    assert float(aux["codebook_loss"]) > 0
    np.testing.assert_allclose(aux["codebook_loss"], aux["commitment_loss"], rtol=1e-6)
    # the pixel loss reaches the encoder only through the straight-through estimator ...
    g = flatten(g)
    assert float(jnp.abs(g["encoder/conv_in/kernel"]).sum()) > 0
    # ... and never the codebook, which moves only through the codebook loss
    assert float(jnp.abs(g["quantize/embedding/embedding"]).sum()) == 0

    def vq_losses(p):
        _, a = model.apply({"params": p}, pixels, train=True)
        return a["codebook_loss"], a["commitment_loss"]

    g_code, g_commit = (flatten(t) for t in jax.jit(jax.jacrev(vq_losses))(params))
    assert float(jnp.abs(g_code["quantize/embedding/embedding"]).sum()) > 0
    assert float(jnp.abs(g_code["encoder/conv_in/kernel"]).sum()) == 0
    assert float(jnp.abs(g_commit["quantize/embedding/embedding"]).sum()) == 0
    assert float(jnp.abs(g_commit["encoder/conv_in/kernel"]).sum()) > 0


def test_save_load_round_trip(tmp_path, params, pixels):
    save_vqgan(tmp_path, MICRO, params)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key in ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution",
                "z_channels", "double_z", "n_embed", "embed_dim", "dropout", "resamp_with_conv",
                "give_pre_end", "in_channels", "num_resolutions", "num_groups"):
        assert key in raw, key
    cfg, loaded = load_vqgan(tmp_path)
    assert cfg == MICRO
    a, b = flatten(params), flatten(loaded)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    idx = jnp.arange(128, dtype=jnp.int32).reshape(2, 64) % MICRO.n_embed
    decode = _apply(MICRO, "decode_code")
    out1, out2 = decode(params, idx), decode(loaded, idx)
    np.testing.assert_array_equal(out1, out2)


def test_num_groups_defaults_to_32(tmp_path):
    cfg = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=8,
                      z_channels=32, embed_dim=4, n_embed=8, num_groups=32)
    save_vqgan(tmp_path, cfg, _random_params(cfg))
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["num_groups"]  # as in vqgan-jax's own config.json
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded_cfg, _ = load_vqgan(tmp_path)
    assert loaded_cfg.num_groups == 32 and loaded_cfg == cfg


def test_wrong_shape_names_key(tmp_path):
    save_vqgan(tmp_path, MICRO, _random_params(MICRO))
    flat = flatten(read_msgpack(tmp_path / "flax_model.msgpack"))
    flat["decoder/conv_out/kernel"] = np.zeros((3, 3, 8, 4), np.float32)
    write_msgpack(tmp_path / "flax_model.msgpack", unflatten(flat))
    with pytest.raises(CheckpointError, match=r"decoder/conv_out/kernel expected shape \(3, 3, 8, 3\), found \(3, 3, 8, 4\)"):
        load_vqgan(tmp_path)


def test_missing_and_extra_keys(tmp_path):
    save_vqgan(tmp_path, MICRO, _random_params(MICRO))
    flat = flatten(read_msgpack(tmp_path / "flax_model.msgpack"))
    del flat["quantize/embedding/embedding"]
    write_msgpack(tmp_path / "flax_model.msgpack", unflatten(flat))
    with pytest.raises(CheckpointError, match=r"missing key quantize/embedding/embedding \(expected shape \(16, 4\)\)"):
        load_vqgan(tmp_path)
    flat["quantize/embedding/embedding"] = np.zeros((16, 4), np.float32)
    flat["encoder/down_0/attn_0/q/kernel"] = np.zeros((1, 1, 8, 8), np.float32)
    write_msgpack(tmp_path / "flax_model.msgpack", unflatten(flat))
    with pytest.raises(CheckpointError, match="unexpected key encoder/down_0/attn_0/q/kernel"):
        load_vqgan(tmp_path)


def test_config_mismatch_is_caught(tmp_path):
    save_vqgan(tmp_path, MICRO, _random_params(MICRO))
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["n_embed"] = 32  # the weights hold 16 codes
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"quantize/embedding/embedding expected shape \(32, 4\), found \(16, 4\)"):
        load_vqgan(tmp_path)
    raw["n_embed"], raw["double_z"] = 16, True
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="double_z=True is not supported"):
        load_vqgan(tmp_path)


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vqgan(tmp_path / "nope")
    save_vqgan(tmp_path, MICRO, _random_params(MICRO))
    (tmp_path / "flax_model.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a valid Flax msgpack"):
        load_vqgan(tmp_path)
    (tmp_path / "flax_model.msgpack").unlink()
    with pytest.raises(CheckpointError, match="missing flax_model.msgpack"):
        load_vqgan(tmp_path)


def test_save_refuses_params_that_do_not_fit(tmp_path):
    other = VQGANConfig(**{**MICRO.__dict__, "n_embed": 8})
    with pytest.raises(CheckpointError, match="quantize/embedding/embedding"):
        save_vqgan(tmp_path, other, _random_params(MICRO))
    assert not (tmp_path / "flax_model.msgpack").exists()


def test_init_is_deterministic_and_finite():
    cfg = VQGANConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=8,
                      z_channels=4, embed_dim=4, n_embed=8, num_groups=4)
    a = flatten(init_vqgan_params(cfg, jax.random.PRNGKey(3)))
    b = flatten(init_vqgan_params(cfg, jax.random.key(3)))  # typed key, same seed
    c = flatten(init_vqgan_params(cfg, jax.random.PRNGKey(4)))
    assert set(a) == set(flatten(vqgan_param_shapes(cfg)))
    k = "encoder/conv_in/kernel"
    np.testing.assert_array_equal(a[k], b[k])
    assert not np.allclose(a[k], c[k])
    assert all(bool(jnp.isfinite(v).all()) for v in a.values())
    assert float(jnp.std(a["quantize/embedding/embedding"])) > 0


# ------------------------------------------------------ plain-numpy reference (taming's forward)


def _np_conv(x, p, stride=1):
    """NHWC conv with an HWIO kernel: 3×3 'same' (or stride 2 after a bottom/right pad), or 1×1."""
    k, b = np.asarray(p["kernel"]), np.asarray(p["bias"])
    kh = k.shape[0]
    if stride == 2:
        x = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    elif kh == 3:
        x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h = (x.shape[1] - kh) // stride + 1
    w = (x.shape[2] - kh) // stride + 1
    out = np.zeros((x.shape[0], h, w, k.shape[-1]))
    for i in range(kh):
        for j in range(kh):
            out += x[:, i : i + stride * h : stride, j : j + stride * w : stride] @ k[i, j]
    return out + b


def _np_gn(x, p, groups):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mu = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    g = (g - mu) / np.sqrt(var + 1e-6)
    return g.reshape(x.shape) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _swish(x):
    return x / (1 + np.exp(-x))


def _np_res(x, p, groups):
    h = _np_conv(_swish(_np_gn(x, p["norm1"], groups)), p["conv1"])
    h = _np_conv(_swish(_np_gn(h, p["norm2"], groups)), p["conv2"])
    if "nin_shortcut" in p:
        x = _np_conv(x, p["nin_shortcut"])
    return x + h


def _np_attn(x, p, groups):
    b, hh, ww, c = x.shape
    h = _np_gn(x, p["norm"], groups)
    q, k, v = (_np_conv(h, p[n]).reshape(b, hh * ww, c) for n in "qkv")
    s = q @ k.transpose(0, 2, 1) / np.sqrt(c)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return x + _np_conv((s @ v).reshape(b, hh, ww, c), p["proj_out"])


def _np_level(x, p, n_blocks, groups):
    for j in range(n_blocks):
        x = _np_res(x, p[f"block_{j}"], groups)
        if f"attn_{j}" in p:  # taming: attn[j] right after block[j]
            x = _np_attn(x, p[f"attn_{j}"], groups)
    if "downsample" in p:
        x = _np_conv(x, p["downsample"]["conv"], stride=2)
    if "upsample" in p:
        x = _np_conv(x.repeat(2, axis=1).repeat(2, axis=2), p["upsample"]["conv"])
    return x


def _np_mid(x, p, groups):
    return _np_res(_np_attn(_np_res(x, p["block_1"], groups), p["attn_1"], groups), p["block_2"], groups)


def np_encode_indices(params, cfg, pixels):
    p, g = params["encoder"], cfg.num_groups
    x = _np_conv(np.asarray(pixels, np.float64), p["conv_in"])
    for i in range(len(cfg.ch_mult)):
        x = _np_level(x, p[f"down_{i}"], cfg.num_res_blocks, g)
    x = _np_conv(_swish(_np_gn(_np_mid(x, p["mid"], g), p["norm_out"], g)), p["conv_out"])
    z = _np_conv(x, params["quant_conv"]).reshape(len(x), -1, cfg.embed_dim)
    codes = np.asarray(params["quantize"]["embedding"]["embedding"])
    return ((z[:, :, None] - codes[None, None]) ** 2).sum(-1).argmin(-1)


def np_decode_code(params, cfg, indices):
    p, g = params["decoder"], cfg.num_groups
    side = int(np.sqrt(indices.shape[1]))
    z = np.asarray(params["quantize"]["embedding"]["embedding"])[indices]
    z = z.reshape(len(indices), side, side, -1)
    x = _np_conv(_np_conv(z, params["post_quant_conv"]), p["conv_in"])
    x = _np_mid(x, p["mid"], g)
    for i in reversed(range(len(cfg.ch_mult))):
        x = _np_level(x, p[f"up_{i}"], cfg.num_res_blocks + 1, g)
    return _np_conv(_swish(_np_gn(x, p["norm_out"], g)), p["conv_out"])  # unclipped


def test_matches_numpy_reference(params, pixels):
    _, idx = _apply(MICRO, "encode")(params, pixels)
    np.testing.assert_array_equal(np.asarray(idx), np_encode_indices(params, MICRO, pixels))
    ref = np_decode_code(params, MICRO, np.asarray(idx))
    assert ref.std() > 0.01  # an image-like output, not a constant
    z_q = np.asarray(params["quantize"]["embedding"]["embedding"])[np.asarray(idx)].reshape(2, 8, 8, 4)
    np.testing.assert_allclose(_apply(MICRO, "decode")(params, z_q), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_apply(MICRO, "decode_code")(params, idx), np.clip(ref, 0, 1), rtol=1e-4, atol=1e-5)
