"""DalleBart checkpoints in dalle-mini's published format.

A checkpoint folder holds ``config.json`` (``DalleBartConfig`` keys), ``flax_model.msgpack``
(the parameter tree of :mod:`dalle_core.models.bart`, without a ``params`` wrapper) and the BART
tokenizer files (``tokenizer.json`` and/or ``vocab.json`` + ``merges.txt``).

Layers are stored either scanned (``layers/FlaxBartEncoderLayers/...`` with a leading layer axis,
what dalle-mini publishes) or unscanned (``layers/FlaxBartEncoderLayer_{i}/...``, dalle-mini's
``unscan``); both load into the scanned layout the modules use.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dalle_core.checkpoints import (
    CheckpointError,
    cast_floats,
    check_shapes,
    flatten,
    read_json,
    read_msgpack,
    resolve_source,
    unflatten,
    write_msgpack,
)
from dalle_core.config import BartConfig

log = logging.getLogger(__name__)

WEIGHTS_NAME = "flax_model.msgpack"
CONFIG_NAME = "config.json"

_SCANNED = {"encoder": "FlaxBartEncoderLayers", "decoder": "FlaxBartDecoderLayers"}
_UNSCANNED_RE = re.compile(
    r"^model/(encoder|decoder)/layers/FlaxBart(Encoder|Decoder)Layer_(\d+)/(.+)$"
)

# dalle-mini config switches and the only value our modules implement (what mini and mega use).
# A config asking for anything else would load "fine" and then compute something else, so it fails.
_REQUIRED = {
    "use_glu": True,
    "ln_type": "layernorm",
    "ln_positions": "normformer",
    "use_bias": False,
    "activation_function": "gelu",
    "scale_embedding": False,
    "use_head_scale": False,
    "use_cosine_attention": False,
    "use_absolute_position_embeddings": True,
    "use_swin_position_embeddings": False,
    "use_deepnet_scaling": False,
    "use_alibi": False,
    "sinkhorn_iters": 1,
    "use_final_ln_encoder": True,
    "use_final_ln_decoder": True,
    "force_ln_scale": False,
    "tie_word_embeddings": False,
}

# DalleBartConfig defaults for the keys a config.json may leave out.
_DEFAULTS = {
    "d_model": 1024,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
    "encoder_vocab_size": 50264,
    "image_vocab_size": 16384,
    "image_length": 256,
    "max_text_length": 64,
    "normalize_text": False,
    "init_std": 0.02,
}


def config_from_json(data: dict[str, Any], where: str = CONFIG_NAME) -> BartConfig:
    """dalle-mini ``config.json`` dict → :class:`BartConfig` (unsupported variants fail loudly)."""
    if data.get("model_type", "dallebart") != "dallebart":
        raise CheckpointError(
            f"{where}: model_type is {data['model_type']!r}, expected 'dallebart'"
        )
    for key, want in _REQUIRED.items():
        got = data.get(key, want)
        if key == "ln_positions" and got == "deepnet":
            got = "postln"
        if got != want:
            raise CheckpointError(
                f"{where}: {key}={got!r} is not supported (this implementation covers {key}={want!r}, "
                "as in the published mini and mega models)"
            )
    get = {k: data.get(k, v) for k, v in _DEFAULTS.items()}
    for enc, dec in (
        ("encoder_ffn_dim", "decoder_ffn_dim"),
        ("encoder_attention_heads", "decoder_attention_heads"),
    ):
        if get[enc] != get[dec]:
            raise CheckpointError(
                f"{where}: {enc}={get[enc]} differs from {dec}={get[dec]}; both must match"
            )
    image_vocab = int(get["image_vocab_size"])
    start = data.get("decoder_start_token_id", image_vocab)
    return BartConfig(
        d_model=int(get["d_model"]),
        encoder_layers=int(get["encoder_layers"]),
        decoder_layers=int(get["decoder_layers"]),
        attention_heads=int(get["encoder_attention_heads"]),
        glu_dim=int(get["encoder_ffn_dim"]),
        text_vocab_size=int(get["encoder_vocab_size"]),
        image_vocab_size=image_vocab,
        max_text_length=int(get["max_text_length"]),
        image_length=int(get["image_length"]),
        decoder_start_token_id=None if start in (None, image_vocab) else int(start),
        normalize_text=bool(get["normalize_text"]),
        init_std=float(get["init_std"]),
    )


def config_to_json(cfg: BartConfig, scanned: bool = True) -> dict[str, Any]:
    """:class:`BartConfig` → a dalle-mini style ``config.json`` dict (loadable by ``DalleBart``)."""
    extra_id = cfg.image_vocab_size + 1  # dalle-mini's bos/eos/pad ids for the image side
    return {
        "model_type": "dallebart",
        "architectures": ["DalleBart"],
        "d_model": cfg.d_model,
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.attention_heads,
        "decoder_attention_heads": cfg.attention_heads,
        "encoder_ffn_dim": cfg.glu_dim,
        "decoder_ffn_dim": cfg.glu_dim,
        "encoder_vocab_size": cfg.text_vocab_size,
        "image_vocab_size": cfg.image_vocab_size,
        "image_length": cfg.image_length,
        "max_text_length": cfg.max_text_length,
        "decoder_start_token_id": cfg.image_bos_id,
        "bos_token_id": extra_id,
        "eos_token_id": extra_id,
        "pad_token_id": extra_id,
        "min_length": cfg.image_length + 1,
        "max_length": cfg.image_length + 1,
        "normalize_text": cfg.normalize_text,
        "init_std": cfg.init_std,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "is_encoder_decoder": True,
        "do_sample": True,
        "use_cache": True,
        "use_scan": scanned,
        "gradient_checkpointing": False,
        "use_subln_init": False,
        **_REQUIRED,
    }


def read_config(folder: str | os.PathLike) -> BartConfig:
    path = Path(folder) / CONFIG_NAME
    return config_from_json(read_json(path), str(path))


def stack_layers(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """Unscanned ``FlaxBart*Layer_{i}/...`` keys → scanned ``FlaxBart*Layers/...`` (stacked on axis 0)."""
    groups: dict[tuple[str, str], dict[int, Any]] = {}
    out = {}
    for key, value in flat.items():
        m = _UNSCANNED_RE.match(key)
        if m is None:
            out[key] = value
            continue
        stack, _, index, rest = m.groups()
        groups.setdefault((stack, rest), {})[int(index)] = value
    for (stack, rest), by_index in groups.items():
        scanned_key = f"model/{stack}/layers/{_SCANNED[stack]}/{rest}"
        if scanned_key in out:
            raise CheckpointError(f"{where}: both scanned and unscanned copies of {scanned_key}")
        n = max(by_index) + 1
        missing = [i for i in range(n) if i not in by_index]
        if missing:
            layer = _SCANNED[stack][:-1]
            raise CheckpointError(
                f"{where}: missing key model/{stack}/layers/{layer}_{missing[0]}/{rest}"
            )
        shapes = {np.shape(by_index[i]) for i in range(n)}
        if len(shapes) != 1:
            raise CheckpointError(
                f"{where}: layers of {scanned_key} have different shapes {sorted(shapes)}"
            )
        out[scanned_key] = np.stack([np.asarray(by_index[i]) for i in range(n)])
    return out


def load_dalle_bart(source: str | os.PathLike, dtype: Any = None) -> tuple[BartConfig, dict]:
    """Load a DalleBart checkpoint from a folder or a Hugging Face hub id.

    Returns (config, params) with params ``{"model": ..., "lm_head": ...}`` in the scanned layout,
    as jax arrays; floating leaves cast to ``dtype`` when given (else kept as stored, e.g. fp16 for
    mega). Raises :class:`CheckpointError` naming the key on a missing/unexpected key or a shape
    mismatch, and on unreadable files.
    """
    from dalle_core.models.bart import param_shapes

    folder = resolve_source(source, files=(CONFIG_NAME, WEIGHTS_NAME))
    cfg = read_config(folder)
    where = str(folder / WEIGHTS_NAME)
    tree = read_msgpack(folder / WEIGHTS_NAME)
    if set(tree) == {"params"}:  # some exports keep the variables' collection name
        tree = tree["params"]
    flat = stack_layers(flatten(tree), where)
    check_shapes(flatten(param_shapes(cfg)), flat, where)
    params = unflatten(flat)
    params = (
        cast_floats(params, dtype)
        if dtype is not None
        else jax.tree_util.tree_map(jnp.asarray, params)
    )
    log.info(
        "loaded DalleBart %s (d_model=%d, %d+%d layers)",
        folder,
        cfg.d_model,
        cfg.encoder_layers,
        cfg.decoder_layers,
    )
    return cfg, params


def load_dalle_bart_tokenizer(source: str | os.PathLike):
    """The BART tokenizer stored next to a DalleBart checkpoint (see :class:`~dalle_core.text.TextTokenizer`)."""
    from dalle_core.text import TextTokenizer

    folder = resolve_source(source, files=(CONFIG_NAME,))
    cfg = read_config(folder)
    return TextTokenizer.from_folder(
        folder, max_length=cfg.max_text_length, normalize=cfg.normalize_text
    )


def save_dalle_bart(
    folder: str | os.PathLike,
    cfg: BartConfig,
    params: dict,
    scanned: bool = True,
    tokenizer=None,
) -> Path:
    """Write ``config.json`` + ``flax_model.msgpack`` (+ tokenizer files when ``tokenizer`` is given).

    params: ``{"model": ..., "lm_head": ...}`` in the scanned layout (a ``{"params": ...}`` wrapper
    is accepted). ``scanned=False`` writes dalle-mini's unscanned ``FlaxBart*Layer_{i}`` layout.
    """
    from dalle_core.models.bart import param_shapes, unscan_params

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if set(params) == {"params"}:
        params = params["params"]
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    check_shapes(flatten(param_shapes(cfg)), flat, "params to save")
    tree = unflatten(flat) if scanned else unscan_params(unflatten(flat))
    write_msgpack(folder / WEIGHTS_NAME, tree)
    (folder / CONFIG_NAME).write_text(
        json.dumps(config_to_json(cfg, scanned), indent=2, sort_keys=True) + "\n"
    )
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder
