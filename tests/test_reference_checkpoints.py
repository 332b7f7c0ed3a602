"""Checkpoints written by the original implementations load and reproduce their outputs.

The fixtures in ``tests/fixtures/reference/`` were written by dalle-mini's ``DalleBart``,
vqgan-jax's ``VQModel`` and transformers' ``FlaxCLIPModel`` (``save_pretrained``), together with those models' outputs on fixed
inputs; ``benchmarks/crosscheck_reference.py`` regenerates them (versions in
``fixtures/reference/versions.json``). No reference package is needed here.

Tolerance: both sides compute in float32 on CPU with O(1) weights, so the outputs differ only by
summation order (different XLA versions and einsum layouts). Over the whole tensor we require
``max|ours - reference| <= 1e-5 * max(1, max|reference|)``: measured differences are around
1e-6 of the magnitude, while a single wrong tensor in the mapping moves outputs by O(0.1-1).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle_core.checkpoints import flatten, read_msgpack
from dalle_core.checkpoints.bart import load_dalle_bart
from dalle_core.checkpoints.clip import load_clip
from dalle_core.checkpoints.vqgan import load_vqgan
from dalle_core.models.bart import DalleBart, init_kv_cache, unscan_params
from dalle_core.models.clip import CLIPModel
from dalle_core.models.vqgan import VQModel

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
BART_FOLDERS = ["dallebart_scanned", "dallebart_unscanned"]
REL_TOL = 1e-5


def _reference(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "reference_outputs.npz") as data:
        return dict(data)


def assert_matches(ours, reference, what: str) -> float:
    """Max abs difference, asserted within ``REL_TOL`` of the reference's magnitude."""
    ours, reference = np.asarray(ours, np.float32), np.asarray(reference, np.float32)
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape} != {reference.shape}"
    diff = float(np.max(np.abs(ours - reference)))
    bound = REL_TOL * max(1.0, float(np.max(np.abs(reference))))
    assert diff <= bound, f"{what}: max |ours - reference| = {diff:.3g} > {bound:.3g}"
    return diff


@pytest.fixture(scope="module", params=BART_FOLDERS)
def bart(request):
    folder = FIXTURES / request.param
    cfg, params = load_dalle_bart(folder)
    return request.param, cfg, params, _reference(folder)


def test_reference_layouts_are_what_the_fixture_claims():
    """Guards the fixture itself: one scanned and one unscanned dalle-mini tree."""
    scanned = flatten(read_msgpack(FIXTURES / "dallebart_scanned" / "flax_model.msgpack"))
    unscanned = flatten(read_msgpack(FIXTURES / "dallebart_unscanned" / "flax_model.msgpack"))
    assert any("/FlaxBartDecoderLayers/" in k for k in scanned)
    assert any("/FlaxBartDecoderLayer_1/" in k for k in unscanned)
    assert not any("/FlaxBartDecoderLayers/" in k for k in unscanned)


def test_dallebart_config_is_read_as_written(bart):
    name, cfg, _, ref = bart
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers) == (32, 2, 2)
    assert (cfg.attention_heads, cfg.glu_dim, cfg.text_vocab_size) == (4, 48, 300)
    assert (cfg.max_text_length, cfg.image_length) == (12, 16)
    # the reference fed its decoder_start_token_id first; mega-like: BOS 40 below vocab 47
    assert cfg.image_bos_id == int(ref["decoder_input_ids"][0, 0]) == 40
    assert cfg.image_vocab_size == (40 if name == "dallebart_scanned" else 47)


def test_dallebart_teacher_forced_logits_match_reference(bart):
    _, cfg, params, ref = bart
    logits = jax.jit(DalleBart(cfg).apply)(
        {"params": params}, ref["input_ids"], ref["attention_mask"], ref["decoder_input_ids"]
    )
    assert_matches(logits, ref["logits"], "teacher-forced logits")


def test_dallebart_incremental_decoding_matches_reference(bart):
    """The generator's path (per-layer weights and caches, cross K/V once) step by step."""
    _, cfg, params, ref = bart
    model = DalleBart(cfg, scan_layers=False)
    params = unscan_params(params)
    ids, mask, tokens = ref["input_ids"], ref["attention_mask"], ref["decoder_input_ids"]

    @jax.jit
    def prepare(ids, mask):
        enc = model.apply({"params": params}, ids, mask, method=DalleBart.encode)
        return model.apply({"params": params}, enc, method=DalleBart.cross_kv)

    cross = prepare(ids, mask)

    @jax.jit
    def step(tok, index, cache):
        return model.apply(
            {"params": params}, tok, index, cache, cross, mask, method=DalleBart.decode_step
        )

    cache = init_kv_cache(cfg, tokens.shape[0], per_layer=True)
    steps = []
    for t in range(tokens.shape[1]):
        logits, cache = step(jnp.asarray(tokens[:, t : t + 1]), jnp.int32(t), cache)
        steps.append(logits[:, 0])
    assert_matches(np.stack(steps, 1), ref["logits"], "incremental logits")


@pytest.fixture(scope="module")
def clip():
    folder = FIXTURES / "clip"
    cfg, params = load_clip(folder)
    return cfg, params, _reference(folder)


def test_clip_config_is_read_as_written(clip):
    cfg, _, _ = clip
    text, vision = cfg.text, cfg.vision
    assert (text.vocab_size, text.hidden_size, text.max_position_embeddings) == (99, 32, 16)
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (32, 8, 40)
    # transformers 4.25.1 writes eos_token_id=2, the legacy value that means "pool at argmax(ids)"
    assert text.eos_token_id == 2
    assert cfg.projection_dim == 24


def test_clip_features_and_logits_match_reference(clip):
    cfg, params, ref = clip
    model, variables = CLIPModel(cfg), {"params": params}
    ids, mask, pixels = ref["input_ids"], ref["attention_mask"], ref["pixel_values"]

    @jax.jit
    def run(ids, mask, pixels):
        text = model.apply(variables, ids, mask, method=CLIPModel.get_text_features)
        image = model.apply(variables, pixels, method=CLIPModel.get_image_features)
        return text, image, model.apply(variables, ids, mask, pixels)

    text, image, logits = run(ids, mask, pixels)
    assert_matches(text, ref["text_features"], "text features")
    assert_matches(image, ref["image_features"], "image features")
    assert_matches(logits, ref["logits_per_image"], "logits_per_image")


@pytest.fixture(scope="module")
def vqgan():
    folder = FIXTURES / "vqgan"
    cfg, params = load_vqgan(folder)
    return cfg, params, _reference(folder)


def test_vqgan_config_is_read_as_written(vqgan):
    cfg, _, _ = vqgan
    assert (cfg.ch, tuple(cfg.ch_mult), cfg.num_res_blocks, tuple(cfg.attn_resolutions)) == (32, (1, 1), 1, (8,))
    assert (cfg.resolution, cfg.z_channels, cfg.embed_dim, cfg.n_embed) == (16, 8, 8, 16)
    assert cfg.grid_size == 8


def test_vqgan_encode_and_decode_match_reference(vqgan):
    """Encoder + quantizer (same codes), decoder from latents and from codes ("images")."""
    cfg, params, ref = vqgan
    model, variables = VQModel(cfg), {"params": params}

    @jax.jit
    def run(pixels, codes):
        quantized, indices = model.apply(variables, pixels, method="encode")
        reconstruction = model.apply(variables, quantized, method="decode")
        grid = codes.reshape(codes.shape[0], cfg.grid_size, cfg.grid_size)
        decoded = model.apply(variables, model.apply(variables, grid, method="lookup_grid"), method="decode")
        return quantized, indices, reconstruction, decoded, model.apply(variables, codes, method="decode_code")

    quantized, indices, reconstruction, decoded, clipped = run(ref["pixel_values"], ref["codes"])
    np.testing.assert_array_equal(indices, ref["indices"])
    assert len(np.unique(ref["indices"])) > 3  # the check covers more than one or two codes
    assert_matches(quantized, ref["quantized"], "quantized latents")
    assert_matches(reconstruction, ref["reconstruction"], "reconstruction")
    assert_matches(decoded, ref["decoded"], "decode_code")
    # ours clips decode_code's pixels to [0, 1]; vqgan-jax returns them raw
    assert_matches(clipped, np.clip(ref["decoded"], 0.0, 1.0), "decode_code clipped")
