"""Write tiny DalleBart, VQGAN and CLIP checkpoints with the ORIGINAL implementations, plus their outputs.

The fixtures in ``tests/fixtures/reference/`` are what another implementation writes in the published
layouts; ``tests/test_reference_checkpoints.py`` loads them with our loaders and must reproduce the
saved outputs. This script is the only thing that needs the reference packages; the test does not.

Regenerate (from the repository root; takes well under a minute on CPU)::

    /root/.pyenv/versions/3.10.13/bin/python -m venv /work/venv-ref
    /work/venv-ref/bin/pip install "jax==0.4.13" "jaxlib==0.4.13" "flax==0.6.11" "orbax==0.0.23" \
        "transformers==4.25.1" "numpy==1.24.4" einops unidecode ftfy emoji pillow wandb
    /work/venv-ref/bin/pip install --no-deps "dalle-mini==0.1.5"
    # vqgan-jax is not on PyPI: install a checkout of github.com/patil-suraj/vqgan-jax
    # (commit 10ef240, which has the July 2022 attention fixes) into the same venv
    /work/venv-ref/bin/pip install --no-deps /path/to/vqgan-jax
    JAX_PLATFORMS=cpu nice -n 10 /work/venv-ref/bin/python benchmarks/crosscheck_reference.py

Pins that install and import together (Python 3.10.13, x86_64 Linux, checked with this script):
dalle-mini 0.1.5 (installed ``--no-deps``), jax 0.4.13, jaxlib 0.4.13, flax 0.6.11,
transformers 4.25.1 (the version dalle-mini pins; still has ``FlaxCLIPModel``), numpy 1.24.4,
einops 0.8.2, wandb 0.31.0 (imported by ``dalle_mini.model.utils``), tokenizers 0.13.3.

Why not dalle-mini's own pins (jax 0.3.25, jaxlib 0.3.25, flax 0.6.3): the package index offers
no jaxlib older than 0.4.13 ("Could not find a version that satisfies the requirement
jaxlib==0.3.25 (from versions: 0.4.13, ...)"), and flax 0.6.3 does not import on jax 0.4.13
("AttributeError: module 'jax.experimental.pjit' has no attribute 'PartitionSpec'"); flax 0.6.11
does. jax 0.4.13 also dropped ``jax.experimental.PartitionSpec``, which
``dalle_mini/model/partitions.py`` imports (only for sharding rules, not used here), so
:func:`_import_dalle_mini` puts ``jax.sharding.PartitionSpec`` back under that name before the
import. Nothing in the model code is touched.

What is written (each checkpoint by the reference's own ``save_pretrained``):

- ``dallebart_scanned/``: ``DalleBart`` with ``use_scan=True`` (as published), mini's settings
  (``image_vocab_size`` = BOS id, bos/eos/pad = image_vocab_size + 1).
- ``dallebart_unscanned/``: ``DalleBart`` with ``use_scan=False`` (``FlaxBart*Layer_{i}`` names) and
  mega's vocabulary quirk (image vocabulary padded past the BOS id: ``image_vocab_size`` 47,
  ``decoder_start_token_id`` 40).
- ``clip/``: ``FlaxCLIPModel`` (``flax_model.msgpack``, HF Flax names).

Every other DalleBart switch has the value the published mini and mega use (normformer,
layernorm, GLU, no biases, final LNs, sinkhorn 1, no head scale, no cosine attention, ...). After
the reference's random init every parameter is redrawn at O(1) scale (LayerNorm scales around 1,
biases and embeddings non-zero) so that a wrong mapping of any single tensor changes the outputs
visibly; the default init (std 0.02, scale 1, bias 0) would hide swapped LayerNorms.

Each folder also gets ``reference_outputs.npz`` (float32 outputs, int32 inputs):

- DalleBart: ``input_ids``, ``attention_mask`` [2, max_text_length] (row 0 padded), ``decoder_input_ids``
  [2, image_length] (BOS first), ``logits`` [2, image_length, image_vocab_size + 1] (teacher-forced).
- CLIP: ``input_ids``, ``attention_mask`` [2, 16] (EOS = highest id; row 0 padded with 0, row 1 with
  EOS as CLIP's tokenizer does), ``pixel_values`` [3, 32, 32, 3] NHWC (the reference is fed its
  NCHW transpose), ``text_features`` [2, P], ``image_features`` [3, P] (projected, unnormalised),
  ``logits_per_image`` [3, 2].
- VQGAN (``vqgan/``, vqgan-jax's ``VQModel``): ``pixel_values`` [2, 16, 16, 3] in [0, 1],
  ``quantized`` and ``indices`` from ``encode``, ``reconstruction`` (``decode`` of ``quantized``,
  raw, not clipped), ``codes`` [2, 64] and ``decoded`` (``decode_code``, raw).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference"

# Same sizes as tests/test_bart.py's CFG, so the two suites exercise the same shapes.
BART_SIZES = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    encoder_vocab_size=300,
    max_text_length=12,
    image_length=16,
)
# The published mini/mega values of every architecture switch (dalle-mini's defaults, spelled out
# so that a change of default upstream cannot silently change what the fixture covers).
PUBLISHED_SWITCHES = dict(
    normalize_text=True,
    activation_function="gelu",
    scale_embedding=False,
    use_bias=False,
    ln_type="layernorm",
    ln_positions="normformer",
    use_head_scale=False,
    use_cosine_attention=False,
    use_absolute_position_embeddings=True,
    use_swin_position_embeddings=False,
    use_deepnet_scaling=False,
    use_subln_init=False,
    use_glu=True,
    use_alibi=False,
    sinkhorn_iters=1,
    use_final_ln_encoder=True,
    use_final_ln_decoder=True,
    force_ln_scale=False,
    tie_word_embeddings=False,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
)
TEXT_PAD_ID = 1  # BART's <pad>


def _import_dalle_mini():
    import jax.experimental
    import jax.sharding

    if not hasattr(jax.experimental, "PartitionSpec"):  # removed in jax 0.4.x; see module doc
        jax.experimental.PartitionSpec = jax.sharding.PartitionSpec
    from dalle_mini.model import DalleBart, DalleBartConfig

    return DalleBart, DalleBartConfig


def _redraw(params, seed: int):
    """Every leaf redrawn at O(1) scale, by its name (kernels ~ N(0, 1/fan_in))."""
    import jax.numpy as jnp
    from flax.core.frozen_dict import unfreeze
    from flax.traverse_util import flatten_dict, unflatten_dict

    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(flatten_dict(unfreeze(params)).items()):
        shape, name = np.shape(leaf), path[-1]
        if name == "scale":
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "bias":
            value = 0.2 * rng.standard_normal(shape)
        elif name == "kernel":
            # 2-D dense [in, out]; scanned dense [layers, in, out]; conv HWIO: fan_in = H*W*I
            fan_in = np.prod(shape[:-1]) if len(shape) == 4 else shape[-2]
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif name == "logit_scale":
            value = np.full(shape, 2.0)
        else:  # embeddings, class_embedding
            value = rng.standard_normal(shape)
        out[path] = jnp.asarray(value, jnp.float32)
    return unflatten_dict(out)


def _bart_inputs(cfg, bos: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, cfg.encoder_vocab_size, (2, cfg.max_text_length)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[0, 5:], mask[0, 5:] = TEXT_PAD_ID, 0  # padding must not leak into the results
    tokens = rng.integers(0, 40, (2, cfg.image_length)).astype(np.int32)  # real codes only
    tokens[:, 0] = bos
    return ids, mask, tokens


def write_dallebart(name: str, use_scan: bool, image_vocab_size: int, start_id: int, seed: int):
    import jax
    import jax.numpy as jnp

    DalleBart, DalleBartConfig = _import_dalle_mini()
    config = DalleBartConfig(
        **BART_SIZES,
        **PUBLISHED_SWITCHES,
        image_vocab_size=image_vocab_size,
        use_scan=use_scan,
        decoder_start_token_id=start_id,
        # mini and mega: bos/eos/pad are one past the image vocabulary (unused by the forward pass)
        bos_token_id=image_vocab_size + 1,
        eos_token_id=image_vocab_size + 1,
        pad_token_id=image_vocab_size + 1,
    )
    model = DalleBart(config, seed=seed, dtype=jnp.float32)
    params = _redraw(model.params, seed)
    model.params = params
    folder = OUT / name
    model.save_pretrained(folder, params=params)

    ids, mask, tokens = _bart_inputs(config, start_id, seed + 1)
    logits = model(
        jnp.asarray(ids), jnp.asarray(mask), decoder_input_ids=jnp.asarray(tokens), params=params
    ).logits
    logits = np.asarray(jax.device_get(logits), np.float32)
    np.savez_compressed(
        folder / "reference_outputs.npz",
        input_ids=ids,
        attention_mask=mask,
        decoder_input_ids=tokens,
        logits=logits,
    )
    return folder, logits


def write_clip(seed: int):
    import jax.numpy as jnp
    from transformers import CLIPConfig, FlaxCLIPModel

    vocab = 99
    text = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=40,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=5,
    )
    # hidden_act and eos_token_id are left at transformers 4.25.1's defaults (quick_gelu, 2): that
    # is what a genuine checkpoint from this writer (and openai/clip-vit-base-patch32) carries.
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    model = FlaxCLIPModel(config, seed=seed, dtype=jnp.float32)
    params = _redraw(model.params, seed)
    model.params = params
    folder = OUT / "clip"
    model.save_pretrained(folder, params=params)

    rng = np.random.default_rng(seed + 1)
    length = text["max_position_embeddings"]
    ids = rng.integers(1, vocab - 1, (2, length)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[0, 6], ids[0, 7:], mask[0, 7:] = vocab - 1, 0, 0  # EOS at 6, then pad 0 (masked)
    ids[1, 10:], mask[1, 11:] = vocab - 1, 0  # EOS at 10, padded with EOS: pool at the first
    pixels = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)  # NHWC, already normalised
    nchw = jnp.asarray(pixels.transpose(0, 3, 1, 2))
    text_features = model.get_text_features(jnp.asarray(ids), jnp.asarray(mask), params=params)
    image_features = model.get_image_features(nchw, params=params)
    out = model(jnp.asarray(ids), nchw, jnp.asarray(mask), params=params)
    np.savez_compressed(
        folder / "reference_outputs.npz",
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        text_features=np.asarray(text_features, np.float32),
        image_features=np.asarray(image_features, np.float32),
        logits_per_image=np.asarray(out.logits_per_image, np.float32),
    )
    return folder


def write_vqgan(seed: int):
    """vqgan-jax's ``VQModel``: a tiny f2 model (16×16 pixels → 8×8 codes) with attention at 8×8
    and in the middle block, so the attention blocks' weights are exercised. GroupNorm has 32 groups
    in vqgan-jax, so 32 channels is the least (all levels keep 32 to keep the fixture small)."""
    import jax.numpy as jnp
    from vqgan_jax.configuration_vqgan import VQGANConfig
    from vqgan_jax.modeling_flax_vqgan import VQModel

    config = VQGANConfig(
        ch=32,
        ch_mult=(1, 1),
        num_res_blocks=1,
        attn_resolutions=(8,),
        resolution=16,
        z_channels=8,
        embed_dim=8,
        n_embed=16,
    )
    model = VQModel(config, input_shape=(1, 16, 16, 3), seed=seed, dtype=jnp.float32)
    params = _redraw(model.params, seed)
    model.params = params
    folder = OUT / "vqgan"
    model.save_pretrained(folder, params=params)

    rng = np.random.default_rng(seed + 1)
    pixels = rng.random((2, 16, 16, 3)).astype(np.float32)  # [0, 1], NHWC (dalle-mini's convention)
    quantized, indices = model.encode(jnp.asarray(pixels), params=params)
    codes = rng.integers(0, config.n_embed, (2, 64)).astype(np.int32)
    np.savez_compressed(
        folder / "reference_outputs.npz",
        pixel_values=pixels,
        quantized=np.asarray(quantized, np.float32),
        indices=np.asarray(indices, np.int32),
        reconstruction=np.asarray(model.decode(quantized, params=params), np.float32),
        codes=codes,
        decoded=np.asarray(model.decode_code(codes, params=params), np.float32),
    )
    return folder


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("dalle-mini", "vqgan-jax", "jax", "jaxlib", "flax", "transformers", "numpy")
    return {"python": sys.version.split()[0], **{n: version(n) for n in names}}


def main() -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    OUT.mkdir(parents=True, exist_ok=True)
    _, scanned = write_dallebart(
        "dallebart_scanned", True, image_vocab_size=40, start_id=40, seed=0
    )
    _, unscanned = write_dallebart(
        "dallebart_unscanned", False, image_vocab_size=47, start_id=40, seed=10
    )
    write_clip(seed=20)
    write_vqgan(seed=30)
    versions = _versions()
    (OUT / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB) with {versions}")
    peak = {"scanned": np.abs(scanned).max(), "unscanned": np.abs(unscanned).max()}
    print("max |logits|: " + ", ".join(f"{k} {v:.2f}" for k, v in peak.items()))


if __name__ == "__main__":
    main()
