"""VQGAN checkpoints in vqgan-jax's layout: ``config.json`` + ``flax_model.msgpack``.

The msgpack holds the bare parameter tree of vqgan-jax's ``VQModule`` (``encoder``, ``decoder``,
``quantize``, ``quant_conv``, ``post_quant_conv``), which is exactly our ``VQModel``'s tree, so
no name mapping is needed; every key and shape is still checked against the config.
``config.json`` uses vqgan-jax's ``VQGANConfig`` keys; ``num_groups`` (GroupNorm groups, which
vqgan-jax hard-codes to 32) is written as an extra key and read as 32 when absent.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from dalle_core.checkpoints import (
    CheckpointError,
    cast_floats,
    check_shapes,
    flatten,
    read_json,
    read_msgpack,
    resolve_source,
    write_msgpack,
)
from dalle_core.config import VQGANConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "flax_model.msgpack"

# vqgan-jax config keys that map one-to-one onto VQGANConfig fields.
_DIRECT_KEYS = (
    "ch",
    "out_ch",
    "in_channels",
    "num_res_blocks",
    "resolution",
    "z_channels",
    "n_embed",
    "embed_dim",
)
# vqgan-jax keys we accept only at the value our module implements (the published models use these).
_FIXED_KEYS = {"double_z": False, "resamp_with_conv": True, "give_pre_end": False}


def vqgan_config_from_dict(raw: dict[str, Any], where: str = "config.json") -> VQGANConfig:
    """Build a ``VQGANConfig`` from vqgan-jax ``config.json`` contents; unknown keys are ignored."""
    missing = [k for k in (*_DIRECT_KEYS, "ch_mult", "attn_resolutions") if k not in raw]
    if missing:
        raise CheckpointError(f"{where}: missing VQGAN config key(s) {', '.join(missing)}")
    for key, supported in _FIXED_KEYS.items():
        if key in raw and bool(raw[key]) != supported:
            raise CheckpointError(
                f"{where}: {key}={raw[key]!r} is not supported (only {supported}); "
                "this VQGAN variant is not of the vqgan_imagenet_f16 family"
            )
    try:
        cfg = VQGANConfig(
            **{k: int(raw[k]) for k in _DIRECT_KEYS},
            ch_mult=tuple(int(m) for m in raw["ch_mult"]),
            attn_resolutions=tuple(int(r) for r in raw["attn_resolutions"]),
            num_groups=int(raw.get("num_groups", 32)),
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: bad VQGAN config value ({err})") from err
    if "num_resolutions" in raw and int(raw["num_resolutions"]) != len(cfg.ch_mult):
        raise CheckpointError(
            f"{where}: num_resolutions={raw['num_resolutions']} disagrees with "
            f"ch_mult {list(cfg.ch_mult)} (length {len(cfg.ch_mult)})"
        )
    _validate(cfg, where)
    return cfg


def vqgan_config_to_dict(cfg: VQGANConfig) -> dict[str, Any]:
    """``cfg`` as vqgan-jax ``config.json`` contents (plus our ``num_groups``)."""
    out: dict[str, Any] = {"architectures": ["VQModel"]}
    out.update({k: getattr(cfg, k) for k in _DIRECT_KEYS})
    out.update(
        ch_mult=list(cfg.ch_mult),
        attn_resolutions=list(cfg.attn_resolutions),
        num_resolutions=len(cfg.ch_mult),
        dropout=0.0,
        **_FIXED_KEYS,
        num_groups=cfg.num_groups,
    )
    return out


def _validate(cfg: VQGANConfig, where: str) -> None:
    widths = {cfg.ch * m for m in cfg.ch_mult}
    bad = sorted(w for w in widths if w % cfg.num_groups)
    if bad:
        raise CheckpointError(
            f"{where}: channel width {bad[0]} is not divisible by num_groups={cfg.num_groups}"
        )
    if cfg.resolution % cfg.downsample:
        raise CheckpointError(
            f"{where}: resolution {cfg.resolution} is not divisible by the downsampling factor "
            f"{cfg.downsample} implied by ch_mult {list(cfg.ch_mult)}"
        )


def _expected_shapes(cfg: VQGANConfig) -> dict[str, Any]:
    # Imported here so that reading a config does not pull in the model.
    from dalle_core.models.vqgan import vqgan_param_shapes

    return flatten(vqgan_param_shapes(cfg))


def load_vqgan(source: str | os.PathLike) -> tuple[VQGANConfig, dict]:
    """Load a VQGAN from a local folder or a hub id (e.g. ``dalle-mini/vqgan_imagenet_f16_16384``).

    Returns ``(config, params)`` with params as a nested dict of float32 ``jax.Array``s, ready for
    ``VQModel(config).apply({"params": params}, ...)``. Raises ``CheckpointError`` naming the file,
    key and shapes when anything is missing or does not fit.
    """
    folder = resolve_source(source, (CONFIG_FILE, WEIGHTS_FILE))
    config_path = folder / CONFIG_FILE
    cfg = vqgan_config_from_dict(read_json(config_path), str(config_path))

    weights_path = folder / WEIGHTS_FILE
    tree = read_msgpack(weights_path)
    # Some exporters wrap the tree once more (a train state's {"params": ...}).
    if set(tree) == {"params"}:
        tree = tree["params"]
    found = flatten(tree)
    check_shapes(_expected_shapes(cfg), found, str(weights_path))
    log.info("loaded VQGAN from %s (%d tensors, %d codes)", folder, len(found), cfg.n_embed)
    return cfg, cast_floats(tree, jnp.float32)


def save_vqgan(folder: str | os.PathLike, cfg: VQGANConfig, params: dict) -> Path:
    """Write ``config.json`` + ``flax_model.msgpack`` that ``load_vqgan`` (and vqgan-jax) can read.

    The params are checked against ``cfg`` first, so a wrong tree is never written.
    """
    folder = Path(folder)
    _validate(cfg, "save_vqgan")
    if set(params) == {"params"}:
        params = params["params"]
    check_shapes(_expected_shapes(cfg), flatten(params), "save_vqgan params")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(vqgan_config_to_dict(cfg), indent=2) + "\n")
    write_msgpack(folder / WEIGHTS_FILE, params)
    log.info("saved VQGAN to %s", folder)
    return folder
