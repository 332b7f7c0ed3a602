"""CLIP checkpoints in the Hugging Face layout (``openai/clip-vit-base-patch32`` and the tiny model).

Two weight formats, one ``config.json`` (HF ``CLIPConfig``: ``text_config``, ``vision_config``,
``projection_dim``, ``logit_scale_init_value``):

- ``model.safetensors`` with PyTorch names (``text_model.encoder.layers.0.self_attn.q_proj.weight``);
  read with safetensors' numpy API, so torch is never needed. Linear weights are [out, in] and
  become Flax [in, out] kernels; the patch conv is OIHW and becomes HWIO; LayerNorm ``weight`` is
  Flax ``scale``; ``nn.Embedding.weight`` is Flax ``embedding``.
- ``flax_model.msgpack`` with HF's Flax names, which are our module's names.

The mapping is explicit code over our module's own key list, so every key and shape is checked
in both directions and a mismatch names the key.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from dalle_core.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
MSGPACK_FILE = "flax_model.msgpack"

# Non-persistent buffers that older PyTorch exports still carry; they hold no weights.
_TORCH_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

_TEXT_KEYS = {
    "vocab_size": int,
    "hidden_size": int,
    "intermediate_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "max_position_embeddings": int,
    "layer_norm_eps": float,
    "eos_token_id": int,
}
_VISION_KEYS = {
    "image_size": int,
    "patch_size": int,
    "hidden_size": int,
    "intermediate_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "num_channels": int,
    "layer_norm_eps": float,
}


# ---------------------------------------------------------------------------------------- config


def _sub_config(raw: dict, name: str, cls, keys: dict[str, Callable], where: str):
    sub = raw.get(f"{name}_config") or raw.get(f"{name}_config_dict") or {}
    if not isinstance(sub, dict):
        raise CheckpointError(f"{where}: {name}_config must be a JSON object")
    act = sub.get("hidden_act", "quick_gelu")
    if act != "quick_gelu":
        raise CheckpointError(f"{where}: {name}_config.hidden_act={act!r} is not supported (only quick_gelu)")
    # HF fills absent keys with its defaults, which are ViT-B/32's and ours.
    try:
        return cls(**{k: conv(sub[k]) for k, conv in keys.items() if sub.get(k) is not None})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: bad {name}_config value ({err})") from err


def clip_config_from_dict(raw: dict[str, Any], where: str = "config.json") -> CLIPConfig:
    """Build a ``CLIPConfig`` from HF ``CLIPConfig`` JSON contents."""
    text = _sub_config(raw, "text", CLIPTextConfig, _TEXT_KEYS, where)
    vision = _sub_config(raw, "vision", CLIPVisionConfig, _VISION_KEYS, where)
    try:
        cfg = CLIPConfig(
            text=text,
            vision=vision,
            projection_dim=int(raw.get("projection_dim", 512)),
            logit_scale_init=float(raw.get("logit_scale_init_value", 2.6592)),
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: bad CLIP config value ({err})") from err
    _validate(cfg, where)
    return cfg


def clip_config_to_dict(cfg: CLIPConfig) -> dict[str, Any]:
    """``cfg`` as HF ``CLIPConfig`` JSON (loadable by ``transformers.CLIPModel.from_pretrained``)."""
    text = {k: getattr(cfg.text, k) for k in _TEXT_KEYS}
    vision = {k: getattr(cfg.vision, k) for k in _VISION_KEYS}
    for sub in (text, vision):
        sub.update(hidden_act="quick_gelu", projection_dim=cfg.projection_dim)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "text_config": {"model_type": "clip_text_model", **text},
        "vision_config": {"model_type": "clip_vision_model", **vision},
        "projection_dim": cfg.projection_dim,
        "logit_scale_init_value": cfg.logit_scale_init,
    }


def _validate(cfg: CLIPConfig, where: str) -> None:
    for name, sub in (("text", cfg.text), ("vision", cfg.vision)):
        if sub.hidden_size % sub.num_attention_heads:
            raise CheckpointError(
                f"{where}: {name} hidden_size {sub.hidden_size} is not divisible by "
                f"num_attention_heads {sub.num_attention_heads}"
            )
    if cfg.vision.image_size % cfg.vision.patch_size:
        raise CheckpointError(
            f"{where}: image_size {cfg.vision.image_size} is not divisible by patch_size {cfg.vision.patch_size}"
        )


# ------------------------------------------------------------------------------- name mapping


# np.array(order="C") rather than np.ascontiguousarray, which turns the 0-d logit_scale into 1-d.
def _identity(x):
    return np.array(x, order="C")


def _transpose(x):
    return np.array(np.asarray(x).T, order="C")


def _hwio_to_oihw(x):
    return np.array(np.transpose(np.asarray(x), (3, 2, 0, 1)), order="C")


def _oihw_to_hwio(x):
    return np.array(np.transpose(np.asarray(x), (2, 3, 1, 0)), order="C")


def flax_to_torch_name(key: str, ndim: int) -> tuple[str, Callable, Callable]:
    """One Flax key (``a/b/kernel``) → (PyTorch name, flax→torch fn, torch→flax fn).

    ``ndim`` is the Flax array's rank (a 2-D kernel is a Linear, a 4-D kernel the patch conv).
    """
    *path, leaf = key.split("/")
    if leaf == "kernel" and ndim == 2:  # nn.Linear: weight [out, in]
        leaf, fwd, back = "weight", _transpose, _transpose
    elif leaf == "kernel" and ndim == 4:  # nn.Conv2d: weight [out, in, kh, kw]
        leaf, fwd, back = "weight", _hwio_to_oihw, _oihw_to_hwio
    elif leaf in ("scale", "embedding"):  # LayerNorm / nn.Embedding weight, same layout
        leaf, fwd, back = "weight", _identity, _identity
    elif leaf in ("bias", "class_embedding", "logit_scale"):
        fwd = back = _identity
    else:
        raise CheckpointError(f"no PyTorch name for Flax parameter {key} (rank {ndim})")
    return ".".join([*path, leaf]), fwd, back


def _expected_flat(cfg: CLIPConfig) -> dict[str, Any]:
    from dalle_core.models.clip import clip_param_shapes

    return flatten(clip_param_shapes(cfg))


def _torch_plan(cfg: CLIPConfig) -> dict[str, tuple[str, tuple[int, ...], Callable, Callable]]:
    """torch name → (flax key, torch shape, flax→torch fn, torch→flax fn) for every parameter."""
    plan = {}
    for key, spec in _expected_flat(cfg).items():
        name, fwd, back = flax_to_torch_name(key, len(spec.shape))
        torch_shape = fwd(np.zeros(spec.shape, np.int8)).shape
        plan[name] = (key, tuple(torch_shape), fwd, back)
    return plan


def torch_state_to_flax(state: dict[str, np.ndarray], cfg: CLIPConfig, where: str) -> dict:
    """PyTorch-named flat state dict → nested Flax params (every key and shape checked)."""
    state = {k: v for k, v in state.items() if k not in _TORCH_BUFFERS}
    plan = _torch_plan(cfg)
    check_shapes({name: np.empty(shape, np.int8) for name, (_, shape, _, _) in plan.items()}, state, where)
    return unflatten({key: back(state[name]) for name, (key, _, _, back) in plan.items()})


def flax_to_torch_state(params: dict, cfg: CLIPConfig) -> dict[str, np.ndarray]:
    """Nested Flax params → PyTorch-named flat state dict of float32 numpy arrays."""
    flat = flatten(params)
    out = {}
    for name, (key, _, fwd, _) in _torch_plan(cfg).items():
        out[name] = fwd(np.asarray(flat[key], np.float32))
    return out


# ------------------------------------------------------------------------------------- I/O


def _read_config(folder: Path) -> CLIPConfig:
    path = folder / CONFIG_FILE
    return clip_config_from_dict(read_json(path), str(path))


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err


def load_clip(source: str | os.PathLike) -> tuple[CLIPConfig, dict]:
    """Load CLIP from a local folder or hub id (e.g. ``openai/clip-vit-base-patch32``).

    Reads ``model.safetensors`` (PyTorch names) when present, else ``flax_model.msgpack``.
    Returns ``(config, params)`` with float32 ``jax.Array`` leaves for ``CLIPModel(config)``.
    Raises ``CheckpointError`` naming the file, key and shapes on any mismatch.
    """
    folder = resolve_source(source, (CONFIG_FILE,))
    cfg = _read_config(folder)
    if (folder / SAFETENSORS_FILE).exists():
        path = folder / SAFETENSORS_FILE
        params = torch_state_to_flax(_read_safetensors(path), cfg, str(path))
    elif (folder / MSGPACK_FILE).exists():
        path = folder / MSGPACK_FILE
        params = read_msgpack(path)
        if set(params) == {"params"}:
            params = params["params"]
        check_shapes(_expected_flat(cfg), flatten(params), str(path))
    else:
        raise CheckpointError(
            f"{folder}: no CLIP weights (expected {SAFETENSORS_FILE} or {MSGPACK_FILE})"
        )
    log.info("loaded CLIP from %s", path)
    return cfg, cast_floats(params, jnp.float32)


def save_clip(
    folder: str | os.PathLike, cfg: CLIPConfig, params: dict, format: str = "safetensors"
) -> Path:
    """Write ``config.json`` plus ``model.safetensors`` (PyTorch names) or ``flax_model.msgpack``."""
    if format not in ("safetensors", "msgpack"):
        raise ValueError(f"CLIP checkpoint format must be 'safetensors' or 'msgpack', got {format!r}")
    folder = Path(folder)
    _validate(cfg, "save_clip")
    if set(params) == {"params"}:
        params = params["params"]
    check_shapes(_expected_flat(cfg), flatten(params), "save_clip params")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(clip_config_to_dict(cfg), indent=2) + "\n")
    if format == "safetensors":
        from safetensors.numpy import save_file

        tmp = folder / (SAFETENSORS_FILE + ".tmp")
        save_file(flax_to_torch_state(params, cfg), str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / SAFETENSORS_FILE)
    else:
        write_msgpack(folder / MSGPACK_FILE, params)
    other = folder / (MSGPACK_FILE if format == "safetensors" else SAFETENSORS_FILE)
    if other.exists():
        log.warning("%s also holds %s; load_clip reads %s first", folder, other.name, SAFETENSORS_FILE)
    log.info("saved CLIP (%s) to %s", format, folder)
    return folder
