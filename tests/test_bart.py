"""DalleBart module and checkpoint I/O on tiny configs (checkpoints written by the tests)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle_core.checkpoints import CheckpointError, flatten, read_msgpack, unflatten, write_msgpack
from dalle_core.checkpoints.bart import (
    config_from_json,
    config_to_json,
    load_dalle_bart,
    load_dalle_bart_tokenizer,
    save_dalle_bart,
)
from dalle_core.config import BartConfig, get_variant, replace
from dalle_core.models.bart import (
    DalleBart,
    init_kv_cache,
    init_params,
    param_shapes,
    unscan_params,
)
from dalle_core.text import build_fallback_tokenizer

# Smaller than `tiny` so that compiles stay quick; 3 layers so stacking order matters.
CFG = BartConfig(
    d_model=32,
    encoder_layers=3,
    decoder_layers=3,
    attention_heads=4,
    glu_dim=48,
    text_vocab_size=300,
    image_vocab_size=40,
    max_text_length=12,
    image_length=16,
)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def forward(params):
    """Teacher-forced logits, compiled once for the module (every call has the same shapes)."""
    model = DalleBart(CFG)
    return jax.jit(lambda ids, mask, tokens: model.apply({"params": params}, ids, mask, tokens))


def _text(batch=2, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, CFG.text_vocab_size, (batch, CFG.max_text_length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 5:] = 0  # a padded row: padding must not leak into the results
    ids[0, 5:] = CFG.pad_token_id
    return jnp.asarray(ids), jnp.asarray(mask)


def _image_tokens(batch=2, seed=2):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, CFG.image_vocab_size, (batch, CFG.image_length)).astype(np.int32)
    tok[:, 0] = CFG.image_bos_id
    return jnp.asarray(tok)


def test_param_tree_matches_dalle_mini_names(params):
    flat = flatten(params)
    L, d = CFG.decoder_layers, CFG.d_model
    dec = "model/decoder/layers/FlaxBartDecoderLayers"
    enc = "model/encoder/layers/FlaxBartEncoderLayers"
    assert flat["lm_head/kernel"].shape == (d, CFG.image_vocab_size + 1)
    assert flat["model/decoder/embed_tokens/embedding"].shape == (CFG.image_vocab_size + 1, d)
    assert flat["model/encoder/embed_tokens/embedding"].shape == (CFG.text_vocab_size, d)
    assert flat["model/encoder/embed_positions/embedding"].shape == (CFG.max_text_length, d)
    assert flat["model/decoder/embed_positions/embedding"].shape == (CFG.image_length, d)
    assert flat[f"{dec}/FlaxBartAttention_1/k_proj/kernel"].shape == (L, d, d)
    assert flat[f"{dec}/GLU_0/Dense_0/kernel"].shape == (L, d, CFG.glu_dim)
    assert flat[f"{dec}/GLU_0/LayerNorm_1/bias"].shape == (L, CFG.glu_dim)
    # NormFormer: pre-LNs, GLU LNs and final LNs are bias-only; post-LNs and embedding LN scale too
    for name in ("LayerNorm_0", "LayerNorm_2", "GLU_0/LayerNorm_0", "GLU_0/LayerNorm_1"):
        assert f"{dec}/{name}/bias" in flat and f"{dec}/{name}/scale" not in flat
    for name in ("LayerNorm_1", "LayerNorm_3"):
        assert f"{dec}/{name}/scale" in flat
    assert f"{enc}/LayerNorm_1/scale" in flat and f"{enc}/LayerNorm_0/scale" not in flat
    for stack in ("encoder", "decoder"):
        assert f"model/{stack}/final_ln/scale" not in flat
        assert f"model/{stack}/layernorm_embedding/scale" in flat
    # no biases in any projection
    assert not any(
        k.endswith("/bias") and ("proj" in k or "Dense" in k or "lm_head" in k) for k in flat
    )
    assert set(param_shapes(CFG)) == {"model", "lm_head"}


def test_published_sizes():
    def count(cfg):
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(param_shapes(cfg)))

    assert abs(count(get_variant("mini").bart) / 1e6 - 438) < 1
    assert abs(count(get_variant("mega").bart) / 1e9 - 2.59) < 0.01


def test_forward_shapes_and_padding_invariance(forward):
    ids, mask = _text()
    tokens = _image_tokens()
    logits = forward(ids, mask, tokens)
    assert logits.shape == (2, CFG.image_length, CFG.image_vocab_size + 1)
    assert logits.dtype == jnp.float32
    # what sits in padded text positions must not matter
    ids2 = ids.at[0, 7].set(123)
    logits2 = forward(ids2, mask, tokens)
    np.testing.assert_allclose(logits2, logits, atol=1e-6)
    # causality: changing a later image token leaves earlier logits unchanged
    tokens3 = tokens.at[:, 10].set((tokens[:, 10] + 1) % CFG.image_vocab_size)
    logits3 = forward(ids, mask, tokens3)
    np.testing.assert_allclose(logits3[:, :10], logits[:, :10], atol=1e-6)
    assert not np.allclose(logits3[:, 10:], logits[:, 10:])


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "per-layer"])
def test_cached_incremental_decoding_equals_teacher_forced(params, forward, scan_layers):
    """Both layouts: the scanned stack (training) and per-layer weights/caches (the generator's)."""
    model = DalleBart(CFG, scan_layers=scan_layers)
    if not scan_layers:
        params = unscan_params(params)
        assert "FlaxBartDecoderLayer_2" in params["model"]["decoder"]["layers"]
        assert unscan_params(params) == params  # idempotent
    ids, mask = _text()
    tokens = _image_tokens()
    full = forward(ids, mask, tokens)

    @jax.jit
    def prepare(ids, mask):
        enc = model.apply({"params": params}, ids, mask, method=DalleBart.encode)
        return model.apply({"params": params}, enc, method=DalleBart.cross_kv)

    cross = prepare(ids, mask)
    if scan_layers:
        assert cross.k.shape == (CFG.decoder_layers, 2, 4, CFG.max_text_length, 8)
    else:
        assert len(cross.k) == CFG.decoder_layers and cross.k[0].shape == (2, 4, CFG.max_text_length, 8)

    @jax.jit
    def step(tok, index, cache):
        return model.apply(
            {"params": params}, tok, index, cache, cross, mask, method=DalleBart.decode_step
        )

    cache = init_kv_cache(CFG, 2, per_layer=not scan_layers)
    steps = []
    for t in range(CFG.image_length):
        logits, cache = step(tokens[:, t : t + 1], jnp.int32(t), cache)
        steps.append(logits[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5, rtol=0)

    # a chunk of several positions at once (prefill) gives the same logits too
    cache = init_kv_cache(CFG, 2, per_layer=not scan_layers)
    head, cache = step(tokens[:, :4], jnp.int32(0), cache)
    tail, _ = step(tokens[:, 4:8], jnp.int32(4), cache)
    np.testing.assert_allclose(np.concatenate([head, tail], 1), full[:, :8], atol=1e-5, rtol=0)


def test_bf16_compute_runs_close_to_fp32(params, forward):
    ids, mask = _text()
    tokens = _image_tokens()
    full = forward(ids, mask, tokens)
    half = jax.jit(DalleBart(CFG, dtype=jnp.bfloat16).apply)({"params": params}, ids, mask, tokens)
    assert half.dtype == jnp.bfloat16
    assert np.abs(np.asarray(half, np.float32) - full).max() < 0.1 * np.abs(full).max() + 0.05


@pytest.mark.parametrize("scanned", [True, False])
def test_save_load_round_trip(tmp_path, params, scanned):
    tok = build_fallback_tokenizer(300, max_length=CFG.max_text_length)
    save_dalle_bart(tmp_path, CFG, params, scanned=scanned, tokenizer=tok)
    stored = flatten(read_msgpack(tmp_path / "flax_model.msgpack"))
    if scanned:
        assert "model/decoder/layers/FlaxBartDecoderLayers/GLU_0/Dense_2/kernel" in stored
    else:
        assert stored["model/decoder/layers/FlaxBartDecoderLayer_2/GLU_0/Dense_2/kernel"].shape == (
            48,
            32,
        )
        assert not any("FlaxBartDecoderLayers" in k for k in stored)
    cfg, loaded = load_dalle_bart(tmp_path)
    assert cfg == CFG
    a, b = flatten(params), flatten(loaded)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    _, half = load_dalle_bart(tmp_path, dtype=jnp.float16)
    assert all(x.dtype == jnp.float16 for x in jax.tree_util.tree_leaves(half))
    tok2 = load_dalle_bart_tokenizer(tmp_path)
    np.testing.assert_array_equal(tok2(["a red fox"])["input_ids"], tok(["a red fox"])["input_ids"])


def test_config_json_round_trip_and_mega_bos():
    mega = get_variant("mega").bart
    data = config_to_json(mega)
    assert data["decoder_start_token_id"] == 16384 and data["image_vocab_size"] == 16415
    assert config_from_json(data) == mega
    # a dalle-mini config.json written by DalleBartConfig (keys as published)
    published = {
        "d_model": 1024,
        "encoder_layers": 12,
        "decoder_layers": 12,
        "encoder_attention_heads": 16,
        "decoder_attention_heads": 16,
        "encoder_ffn_dim": 2730,
        "decoder_ffn_dim": 2730,
        "encoder_vocab_size": 50264,
        "image_vocab_size": 16384,
        "image_length": 256,
        "max_text_length": 64,
        "decoder_start_token_id": 16384,
        "pad_token_id": 16385,
        "normalize_text": True,
        "ln_positions": "normformer",
        "use_glu": True,
        "use_bias": False,
        "model_type": "dallebart",
    }
    assert config_from_json(published) == get_variant("mini").bart


def test_unsupported_config_is_named():
    data = config_to_json(CFG)
    data["ln_positions"] = "swinv2"
    with pytest.raises(CheckpointError, match="ln_positions='swinv2'"):
        config_from_json(data)


def _corrupt(tmp_path, params, edit):
    save_dalle_bart(tmp_path, CFG, params)
    flat = flatten(read_msgpack(tmp_path / "flax_model.msgpack"))
    edit(flat)
    write_msgpack(tmp_path / "flax_model.msgpack", unflatten(flat))


def test_wrong_shape_names_key(tmp_path, params):
    key = "model/decoder/layers/FlaxBartDecoderLayers/FlaxBartAttention_1/q_proj/kernel"
    _corrupt(tmp_path, params, lambda f: f.__setitem__(key, np.zeros((3, 32, 31), np.float32)))
    with pytest.raises(
        CheckpointError, match=rf"{key} expected shape \(3, 32, 32\), found \(3, 32, 31\)"
    ):
        load_dalle_bart(tmp_path)


def test_missing_key_is_named(tmp_path, params):
    _corrupt(tmp_path, params, lambda f: f.pop("model/encoder/final_ln/bias"))
    with pytest.raises(CheckpointError, match="missing key model/encoder/final_ln/bias"):
        load_dalle_bart(tmp_path)


def test_missing_unscanned_layer_is_named(tmp_path, params):
    save_dalle_bart(tmp_path, CFG, params, scanned=False)
    flat = flatten(read_msgpack(tmp_path / "flax_model.msgpack"))
    flat.pop("model/encoder/layers/FlaxBartEncoderLayer_1/GLU_0/Dense_0/kernel")
    write_msgpack(tmp_path / "flax_model.msgpack", unflatten(flat))
    with pytest.raises(CheckpointError, match="FlaxBartEncoderLayer_1/GLU_0/Dense_0/kernel"):
        load_dalle_bart(tmp_path)


def test_config_mismatch_with_weights(tmp_path, params):
    save_dalle_bart(tmp_path, CFG, params)
    data = json.loads((tmp_path / "config.json").read_text())
    data["decoder_layers"] = 4
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="expected shape \\(4,"):
        load_dalle_bart(tmp_path)


def test_garbage_bytes_and_missing_files(tmp_path, params):
    save_dalle_bart(tmp_path, CFG, params)
    (tmp_path / "flax_model.msgpack").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(CheckpointError, match="not a valid Flax msgpack"):
        load_dalle_bart(tmp_path)
    (tmp_path / "flax_model.msgpack").unlink()
    with pytest.raises(CheckpointError, match="missing flax_model.msgpack"):
        load_dalle_bart(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_dalle_bart(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "flax_model.msgpack").write_bytes(b"")
    with pytest.raises(CheckpointError, match="config.json"):
        load_dalle_bart(tmp_path)


def test_variant_shapes_follow_config():
    cfg = replace(get_variant("tiny").bart, decoder_layers=1)
    flat = flatten(param_shapes(cfg))
    assert flat["lm_head/kernel"].shape == (cfg.d_model, cfg.image_vocab_size + 1)
    assert flat["model/decoder/layers/FlaxBartDecoderLayers/LayerNorm_3/bias"].shape == (
        1,
        cfg.d_model,
    )
    assert flat[
        "model/encoder/layers/FlaxBartEncoderLayers/LayerNorm_3/bias".replace("3", "1")
    ].shape == (cfg.encoder_layers, cfg.d_model)
