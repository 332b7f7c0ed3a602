"""SwinIR checkpoints in the SwinIR-JAX layout: ``config.json`` + ``flax_model.msgpack``.

The published Flax weights (``SwinIR-real-sr-{M,L}-x4-{PSNR,GAN}``, converted from the official
PyTorch release by the SwinIR-JAX project) are a Hugging Face ``save_pretrained`` folder: the msgpack
holds the parameter tree directly (no ``params`` wrapper) with the names documented in
``dalle_core.models.swinir``; ``config.json`` holds the SwinIR-JAX config keys read below.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dalle_core.checkpoints import (
    CheckpointError,
    check_shapes,
    flatten,
    read_json,
    read_msgpack,
    resolve_source,
    unflatten,
    write_msgpack,
)
from dalle_core.models.swinir import SwinIR, SwinIRConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "flax_model.msgpack"

# Hub ids of the published Flax conversions (the SwinIR-JAX author's account); a local folder with
# the same two files works the same way.
PUBLISHED = {
    "M-x4-PSNR": "valhalla/SwinIR-real-sr-M-x4-PSNR",
    "M-x4-GAN": "valhalla/SwinIR-real-sr-M-x4-GAN",
    "L-x4-PSNR": "valhalla/SwinIR-real-sr-L-x4-PSNR",
    "L-x4-GAN": "valhalla/SwinIR-real-sr-L-x4-GAN",
}

# config.json keys that map one-to-one onto SwinIRConfig fields.
_CONFIG_KEYS = (
    "embed_dim",
    "depths",
    "num_heads",
    "window_size",
    "mlp_ratio",
    "upscale",
    "in_chans",
    "img_range",
    "upsampler",
    "resi_connection",
    "qkv_bias",
    "patch_norm",
    "num_feat",  # not in the published files (always 64 there); our tiny test models write it
    "rgb_mean",  # likewise; the published models use the DIV2K mean, the default
)


def config_from_json(data: dict[str, Any], where: str = CONFIG_FILE) -> SwinIRConfig:
    """Build a ``SwinIRConfig`` from a SwinIR-JAX ``config.json`` dict; unsupported options raise."""
    if data.get("ape"):
        raise CheckpointError(f"{where}: absolute position embedding (ape=true) is not supported")
    patch = data.get("patch_size", 1)
    patch = patch[0] if isinstance(patch, list | tuple) else patch
    if patch != 1:
        raise CheckpointError(
            f"{where}: patch_size {patch} is not supported (real-SR models use 1)"
        )
    kwargs = {}
    for key in _CONFIG_KEYS:
        if key in data:
            value = data[key]
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    for required in ("embed_dim", "depths", "num_heads", "upscale"):
        if required not in kwargs:
            raise CheckpointError(f"{where}: missing key {required!r}; is this a SwinIR config?")
    try:
        return SwinIRConfig(**kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from err


def config_to_json(cfg: SwinIRConfig) -> dict[str, Any]:
    """The SwinIR-JAX ``config.json`` keys for ``cfg`` (plus ``num_feat``/``rgb_mean``)."""
    data: dict[str, Any] = {key: getattr(cfg, key) for key in _CONFIG_KEYS}
    data.update(img_size=[64, 64], patch_size=[1, 1], ape=False, model_type="swin-ir")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def param_shapes(cfg: SwinIRConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat ``{"a/b/kernel": ShapeDtypeStruct}`` of every parameter the module expects."""
    return dict(_param_shapes(cfg))


@functools.lru_cache(maxsize=8)
def _param_shapes(cfg: SwinIRConfig) -> dict[str, jax.ShapeDtypeStruct]:
    side = cfg.window_size
    tree = jax.eval_shape(
        lambda: SwinIR(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, side, side, cfg.in_chans)))
    )["params"]
    return flatten(tree)


def init_params(cfg: SwinIRConfig, seed: int = 0) -> dict[str, Any]:
    """Random parameters (tests and benchmarks; never a useful upscaler).

    Filled with numpy from the expected shapes rather than by ``Module.init`` so that no
    compilation is needed: kernels ~ N(0, 1/fan_in), biases 0, LayerNorm scales 1, bias tables
    ~ N(0, 0.02²) — the same scales as the module's own initialisers.
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for key, spec in sorted(param_shapes(cfg).items()):
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(spec.shape[:-1]))
            value = rng.standard_normal(spec.shape) / np.sqrt(fan_in)
        elif leaf == "scale":
            value = np.ones(spec.shape)
        elif leaf == "relative_position_bias_table":
            value = 0.02 * rng.standard_normal(spec.shape)
        else:
            value = np.zeros(spec.shape)
        flat[key] = jnp.asarray(value, jnp.float32)
    return unflatten(flat)


def load_swinir(source: str | os.PathLike) -> tuple[SwinIRConfig, dict[str, Any]]:
    """Load a SwinIR-JAX checkpoint from a local folder or a hub id.

    Returns ``(config, params)`` with fp32 ``jax.Array`` leaves. Every key and shape is compared
    with what ``SwinIR(config)`` expects; any difference raises ``CheckpointError`` naming the key.
    """
    folder = resolve_source(source, (CONFIG_FILE, WEIGHTS_FILE))
    cfg_path = folder / CONFIG_FILE
    cfg = config_from_json(read_json(cfg_path), str(cfg_path))
    tree = read_msgpack(folder / WEIGHTS_FILE)
    if set(tree) == {"params"}:  # tolerate a flax TrainState-style wrapper
        tree = tree["params"]
    found = flatten(tree)
    check_shapes(param_shapes(cfg), found, str(folder / WEIGHTS_FILE))
    params = unflatten({k: jnp.asarray(v, jnp.float32) for k, v in found.items()})
    log.info(
        "loaded SwinIR x%d (%d groups, dim %d) from %s",
        cfg.upscale,
        len(cfg.depths),
        cfg.embed_dim,
        folder,
    )
    return cfg, params


def save_swinir(folder: str | os.PathLike, cfg: SwinIRConfig, params: dict[str, Any]) -> Path:
    """Write ``config.json`` + ``flax_model.msgpack`` in the SwinIR-JAX layout; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    check_shapes(param_shapes(cfg), flatten(params), "save_swinir params")
    (folder / CONFIG_FILE).write_text(json.dumps(config_to_json(cfg), indent=2))
    write_msgpack(folder / WEIGHTS_FILE, params)
    return folder
