"""CLIP module and checkpoint tests on a micro config.

The PyTorch-format checkpoint is built here by hand from the names in transformers'
``modeling_clip.py`` (not from our mapping), and the features of the loaded model are compared
with a plain-numpy CLIP forward pass that reads those PyTorch tensors directly.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from dalle_core.checkpoints import CheckpointError, flatten
from dalle_core.checkpoints.clip import load_clip, save_clip
from dalle_core.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from dalle_core.models.clip import CLIPModel, clip_param_shapes

TEXT = CLIPTextConfig(
    vocab_size=50,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=8,
    eos_token_id=2,  # legacy rule: pool at argmax(ids)
)
VISION = CLIPVisionConfig(
    image_size=8,
    patch_size=4,
    hidden_size=12,
    intermediate_size=20,
    num_hidden_layers=2,
    num_attention_heads=3,
)
MICRO = CLIPConfig(text=TEXT, vision=VISION, projection_dim=6, logit_scale_init=2.0)


# ----------------------------------------------------------------- hand-built PyTorch checkpoint


def torch_state(cfg: CLIPConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """A PyTorch-named CLIPModel state dict, written from modeling_clip.py's module tree."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.3):
        return (scale * rng.normal(size=shape)).astype(np.float32)

    sd = {}

    def tower(prefix, c):
        for i in range(c.num_hidden_layers):
            p = f"{prefix}.encoder.layers.{i}"
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                sd[f"{p}.self_attn.{proj}.weight"] = r(c.hidden_size, c.hidden_size)  # [out, in]
                sd[f"{p}.self_attn.{proj}.bias"] = r(c.hidden_size)
            for ln in ("layer_norm1", "layer_norm2"):
                sd[f"{p}.{ln}.weight"] = 1 + r(c.hidden_size, scale=0.1)
                sd[f"{p}.{ln}.bias"] = r(c.hidden_size, scale=0.1)
            sd[f"{p}.mlp.fc1.weight"] = r(c.intermediate_size, c.hidden_size)
            sd[f"{p}.mlp.fc1.bias"] = r(c.intermediate_size)
            sd[f"{p}.mlp.fc2.weight"] = r(c.hidden_size, c.intermediate_size)
            sd[f"{p}.mlp.fc2.bias"] = r(c.hidden_size)

    t, v = cfg.text, cfg.vision
    sd["text_model.embeddings.token_embedding.weight"] = r(t.vocab_size, t.hidden_size)
    sd["text_model.embeddings.position_embedding.weight"] = r(t.max_position_embeddings, t.hidden_size)
    tower("text_model", t)
    sd["text_model.final_layer_norm.weight"] = 1 + r(t.hidden_size, scale=0.1)
    sd["text_model.final_layer_norm.bias"] = r(t.hidden_size, scale=0.1)
    n_pos = (v.image_size // v.patch_size) ** 2 + 1
    sd["vision_model.embeddings.class_embedding"] = r(v.hidden_size)
    sd["vision_model.embeddings.patch_embedding.weight"] = r(
        v.hidden_size, v.num_channels, v.patch_size, v.patch_size
    )
    sd["vision_model.embeddings.position_embedding.weight"] = r(n_pos, v.hidden_size)
    sd["vision_model.pre_layrnorm.weight"] = 1 + r(v.hidden_size, scale=0.1)
    sd["vision_model.pre_layrnorm.bias"] = r(v.hidden_size, scale=0.1)
    tower("vision_model", v)
    sd["vision_model.post_layernorm.weight"] = 1 + r(v.hidden_size, scale=0.1)
    sd["vision_model.post_layernorm.bias"] = r(v.hidden_size, scale=0.1)
    sd["visual_projection.weight"] = r(cfg.projection_dim, v.hidden_size)
    sd["text_projection.weight"] = r(cfg.projection_dim, t.hidden_size)
    sd["logit_scale"] = np.array(cfg.logit_scale_init, np.float32)
    return sd


def hf_config(cfg: CLIPConfig) -> dict:
    """config.json as transformers writes it for CLIPModel (written out independently of our writer)."""
    t, v = cfg.text, cfg.vision
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.projection_dim,
        "logit_scale_init_value": cfg.logit_scale_init,
        "text_config": {
            "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "max_position_embeddings": t.max_position_embeddings, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": t.eos_token_id, "pad_token_id": 1,
            "attention_dropout": 0.0, "projection_dim": cfg.projection_dim,
        },
        "vision_config": {
            "image_size": v.image_size, "patch_size": v.patch_size, "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads, "num_channels": 3,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": cfg.projection_dim,
        },
    }


def write_torch_checkpoint(folder, cfg=MICRO, sd=None, extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    sd = torch_state(cfg) if sd is None else sd
    save_file({**sd, **(extra or {})}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(cfg)))
    return sd


# ------------------------------------------------------------------ numpy reference forward pass


def _ln(x, sd, name, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _linear(x, sd, name, bias=True):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if bias else y


def _tower(x, sd, prefix, c, mask):
    b, length, d = x.shape
    hd = d // c.num_attention_heads
    for i in range(c.num_hidden_layers):
        p = f"{prefix}.encoder.layers.{i}"
        h = _ln(x, sd, f"{p}.layer_norm1")
        q, k, v = (
            _linear(h, sd, f"{p}.self_attn.{n}_proj").reshape(b, length, -1, hd).transpose(0, 2, 1, 3)
            for n in "qkv"
        )
        s = q @ k.transpose(0, 1, 3, 2) * hd**-0.5
        if mask is not None:
            s = np.where(mask[:, None], s, -1e30)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        a = (w @ v).transpose(0, 2, 1, 3).reshape(b, length, d)
        x = x + _linear(a, sd, f"{p}.self_attn.out_proj")
        h = _linear(_ln(x, sd, f"{p}.layer_norm2"), sd, f"{p}.mlp.fc1")
        h = h / (1 + np.exp(-1.702 * h))  # quick_gelu
        x = x + _linear(h, sd, f"{p}.mlp.fc2")
    return x


def ref_text_features(sd, cfg, ids, mask):
    ids = np.asarray(ids)
    length = ids.shape[1]
    x = sd["text_model.embeddings.token_embedding.weight"][ids]
    x = x + sd["text_model.embeddings.position_embedding.weight"][:length]
    attn = np.tril(np.ones((length, length), bool))[None] & (np.asarray(mask) > 0)[:, None, :]
    x = _ln(_tower(x, sd, "text_model", cfg.text, attn), sd, "text_model.final_layer_norm")
    if cfg.text.eos_token_id == 2:
        pos = ids.argmax(-1)
    else:
        pos = (ids == cfg.text.eos_token_id).argmax(-1)
    return _linear(x[np.arange(len(ids)), pos], sd, "text_projection", bias=False)


def ref_image_features(sd, cfg, pixels_nhwc):
    v = cfg.vision
    b, s = pixels_nhwc.shape[0], v.image_size
    g, p = s // v.patch_size, v.patch_size
    img = np.asarray(pixels_nhwc).reshape(b, g, p, g, p, v.num_channels)
    w = sd["vision_model.embeddings.patch_embedding.weight"]  # [out, in, kh, kw]
    patches = np.einsum("bxiyjc,ocij->bxyo", img, w).reshape(b, g * g, -1)
    cls = np.broadcast_to(sd["vision_model.embeddings.class_embedding"], (b, 1, v.hidden_size))
    x = np.concatenate([cls, patches], 1) + sd["vision_model.embeddings.position_embedding.weight"]
    x = _tower(_ln(x, sd, "vision_model.pre_layrnorm"), sd, "vision_model", v, None)
    pooled = _ln(x[:, 0], sd, "vision_model.post_layernorm")
    return _linear(pooled, sd, "visual_projection", bias=False)


# ------------------------------------------------------------------------------------- fixtures

IDS = np.array([[0, 7, 9, 4, 49, 1, 1, 1], [0, 3, 49, 1, 1, 1, 1, 1], [0, 5, 6, 7, 8, 9, 10, 49]], np.int32)
MASK = (np.arange(8)[None] <= IDS.argmax(-1)[:, None]).astype(np.int32)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def torch_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_pt")
    sd = write_torch_checkpoint(folder)
    return folder, sd


@pytest.fixture(scope="module")
def loaded(torch_ckpt):
    return load_clip(torch_ckpt[0])


def _fns(cfg):
    model = CLIPModel(cfg)
    text = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method="get_text_features"))
    image = jax.jit(lambda p, x: model.apply({"params": p}, x, method="get_image_features"))
    both = jax.jit(lambda p, i, m, x: model.apply({"params": p}, i, m, x))
    return text, image, both


FNS = _fns(MICRO)


# ---------------------------------------------------------------------------------------- tests


def test_param_tree_matches_hf_flax_names():
    flat = flatten(clip_param_shapes(MICRO))
    for key, shape in {
        "text_model/embeddings/token_embedding/embedding": (50, 16),
        "text_model/embeddings/position_embedding/embedding": (8, 16),
        "text_model/encoder/layers/1/self_attn/q_proj/kernel": (16, 16),
        "text_model/encoder/layers/0/mlp/fc1/kernel": (16, 24),
        "text_model/encoder/layers/0/layer_norm2/scale": (16,),
        "text_model/final_layer_norm/bias": (16,),
        "vision_model/embeddings/class_embedding": (12,),
        "vision_model/embeddings/patch_embedding/kernel": (4, 4, 3, 12),
        "vision_model/embeddings/position_embedding/embedding": (5, 12),
        "vision_model/pre_layrnorm/scale": (12,),
        "vision_model/encoder/layers/1/self_attn/out_proj/bias": (12,),
        "vision_model/post_layernorm/scale": (12,),
        "visual_projection/kernel": (12, 6),
        "text_projection/kernel": (16, 6),
        "logit_scale": (),
    }.items():
        assert flat[key].shape == shape, key
    assert "vision_model/embeddings/patch_embedding/bias" not in flat
    assert "text_projection/bias" not in flat and "visual_projection/bias" not in flat
    # ViT-B/32 has 151,277,313 parameters
    full = flatten(clip_param_shapes(CLIPConfig()))
    assert sum(int(np.prod(v.shape)) for v in full.values()) == 151_277_313


def test_torch_checkpoint_matches_numpy_reference(torch_ckpt, loaded, pixels):
    _, sd = torch_ckpt
    cfg, params = loaded
    assert cfg == MICRO
    text_fn, image_fn, _ = FNS
    np.testing.assert_allclose(
        text_fn(params, IDS, MASK), ref_text_features(sd, cfg, IDS, MASK), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        image_fn(params, pixels), ref_image_features(sd, cfg, pixels), rtol=1e-4, atol=1e-5
    )


def test_call_gives_scaled_cosine_logits(loaded, pixels):
    cfg, params = loaded
    text_fn, image_fn, both = FNS
    logits = both(params, IDS, MASK, pixels)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    t = np.array(text_fn(params, IDS, MASK))
    i = np.array(image_fn(params, pixels))
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    i /= np.linalg.norm(i, axis=-1, keepdims=True)
    np.testing.assert_allclose(logits, i @ t.T * np.exp(2.0), rtol=1e-4, atol=1e-5)


def test_padding_after_eos_does_not_change_text_features(loaded):
    _, params = loaded
    text_fn = FNS[0]
    ids = IDS.copy()
    ids[0, 5:] = [11, 12, 13]  # garbage after the EOS, masked out
    np.testing.assert_allclose(text_fn(params, ids, MASK)[0], text_fn(params, IDS, MASK)[0], atol=1e-5)
    # ... but a different token before the EOS does change them
    ids[0, 2] = 10
    assert not np.allclose(text_fn(params, ids, MASK)[0], text_fn(params, IDS, MASK)[0], atol=1e-4)


def test_non_legacy_eos_pools_at_first_eos(tmp_path, pixels):
    cfg = CLIPConfig(text=CLIPTextConfig(**{**TEXT.__dict__, "eos_token_id": 4}), vision=VISION,
                     projection_dim=6, logit_scale_init=2.0)
    sd = write_torch_checkpoint(tmp_path, cfg)
    loaded_cfg, params = load_clip(tmp_path)
    assert loaded_cfg.text.eos_token_id == 4
    ids = np.array([[0, 9, 4, 30, 4, 4, 4, 4]], np.int32)  # argmax would be position 3
    mask = np.ones_like(ids)
    got = _fns(cfg)[0](params, ids, mask)
    np.testing.assert_allclose(got, ref_text_features(sd, cfg, ids, mask), rtol=1e-4, atol=1e-5)


def test_save_round_trips_both_formats(tmp_path, torch_ckpt, loaded, pixels):
    cfg, params = loaded
    _, sd = torch_ckpt
    save_clip(tmp_path / "st", cfg, params, format="safetensors")
    # the written safetensors has exactly the PyTorch names and layouts we built by hand
    written = load_file(str(tmp_path / "st" / "model.safetensors"))
    assert set(written) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(written[k], sd[k], err_msg=k)
    save_clip(tmp_path / "mp", cfg, params, format="msgpack")
    assert not (tmp_path / "mp" / "model.safetensors").exists()
    for sub in ("st", "mp"):
        cfg2, params2 = load_clip(tmp_path / sub)
        assert cfg2 == cfg
        a, b = flatten(params), flatten(params2)
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{sub}: {k}")
    raw = json.loads((tmp_path / "st" / "config.json").read_text())
    assert raw["text_config"]["hidden_act"] == "quick_gelu"
    assert raw["logit_scale_init_value"] == 2.0 and raw["projection_dim"] == 6


def test_position_id_buffers_are_ignored(tmp_path):
    write_torch_checkpoint(
        tmp_path,
        extra={
            "text_model.embeddings.position_ids": np.arange(8, dtype=np.int64)[None],
            "vision_model.embeddings.position_ids": np.arange(5, dtype=np.int64)[None],
        },
    )
    cfg, _ = load_clip(tmp_path)
    assert cfg == MICRO


def test_wrong_shape_names_torch_key(tmp_path):
    sd = torch_state(MICRO)
    sd["vision_model.embeddings.patch_embedding.weight"] = np.zeros((12, 3, 2, 2), np.float32)
    write_torch_checkpoint(tmp_path, sd=sd)
    with pytest.raises(
        CheckpointError,
        match=r"vision_model\.embeddings\.patch_embedding\.weight expected shape \(12, 3, 4, 4\), found \(12, 3, 2, 2\)",
    ):
        load_clip(tmp_path)


def test_missing_and_unexpected_torch_keys(tmp_path):
    sd = torch_state(MICRO)
    del sd["text_model.encoder.layers.1.mlp.fc2.bias"]
    write_torch_checkpoint(tmp_path, sd=sd)
    with pytest.raises(CheckpointError, match=r"missing key text_model\.encoder\.layers\.1\.mlp\.fc2\.bias \(expected shape \(16,\)\)"):
        load_clip(tmp_path)
    sd = torch_state(MICRO)
    sd["text_model.encoder.layers.2.mlp.fc2.bias"] = np.zeros(16, np.float32)  # a third layer
    write_torch_checkpoint(tmp_path, sd=sd)
    with pytest.raises(CheckpointError, match=r"unexpected key text_model\.encoder\.layers\.2\.mlp\.fc2\.bias"):
        load_clip(tmp_path)


def test_msgpack_mismatch_names_flax_key(tmp_path, loaded):
    cfg, params = loaded
    save_clip(tmp_path, cfg, params, format="msgpack")
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["projection_dim"] = 7
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"text_projection/kernel expected shape \(16, 7\), found \(16, 6\)"):
        load_clip(tmp_path)


def test_bad_files_and_config(tmp_path):
    write_torch_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_clip(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no CLIP weights"):
        load_clip(tmp_path)
    write_torch_checkpoint(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["vision_config"]["hidden_act"] = "gelu"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="vision_config.hidden_act='gelu' is not supported"):
        load_clip(tmp_path)


def test_wrong_image_size_is_a_clear_error(loaded):
    _, params = loaded
    with pytest.raises(ValueError, match="expects 8×8 images, got 16×16"):
        FNS[1](params, np.zeros((1, 16, 16, 3), np.float32))
