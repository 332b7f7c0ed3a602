"""Checkpoint I/O shared by the model-specific loaders (``bart``, ``vqgan``, ``clip``).

Loading fails loudly: every key and shape is compared with what the model expects, and a mismatch
raises ``CheckpointError`` naming the key, the expected and the found shape.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

log = logging.getLogger(__name__)


HUB_FILES = ["*.json", "*.msgpack", "*.safetensors", "*.txt"]


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def resolve_source(source: str | os.PathLike, files: tuple[str, ...] = ("config.json",)) -> Path:
    """A local folder, or a Hugging Face hub id downloaded with ``huggingface_hub``.

    Only network-enabled machines can use hub ids; ``HF_HUB_OFFLINE=1`` makes the hub path
    fail fast with a clear error instead of hanging.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise CheckpointError(f"{path}: missing {', '.join(missing)}")
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; expected a checkpoint folder")
    if str(source).count("/") != 1 or str(source).startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint folder {source} does not exist (and is not a hub id 'owner/name')")
    try:
        from huggingface_hub import snapshot_download

        # Only what our loaders read: hub repos also hold PyTorch/TF copies of the weights (GBs).
        local = snapshot_download(repo_id=str(source), allow_patterns=HUB_FILES)
    except Exception as err:  # network errors, offline mode, unknown repo
        raise CheckpointError(
            f"could not download {source} from the Hugging Face hub ({type(err).__name__}: {err}); "
            "download it on a machine with network access and point the config at the local folder"
        ) from err
    return resolve_source(local, files)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint's ``config.json`` as a dict; unreadable or non-object files raise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read config ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_msgpack(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Flax ``.msgpack`` state dict into nested dicts of numpy arrays."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as err:
        raise CheckpointError(f"{path} is not a valid Flax msgpack checkpoint ({err})") from err
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"{path}: expected a mapping at the top level, found {type(tree).__name__}")
    return tree


def write_msgpack(path: str | os.PathLike, tree: Mapping[str, Any]) -> None:
    """Write nested dicts of arrays as a Flax ``.msgpack`` state dict (atomically)."""
    path = Path(path)
    host = _to_numpy(tree)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(host))
    tmp.replace(path)


def _to_numpy(tree):
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    return {sep.join(k): v for k, v in flatten_dict(dict(tree)).items()}


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    return unflatten_dict({tuple(k.split(sep)): v for k, v in flat.items()})


def check_shapes(expected: Mapping[str, Any], found: Mapping[str, Any], where: str) -> None:
    """Compare two flat ``{key: array}`` dicts; raise naming the first bad key.

    ``expected`` values may be arrays or ``jax.ShapeDtypeStruct``s (anything with ``.shape``).
    """
    missing = sorted(set(expected) - set(found))
    if missing:
        raise CheckpointError(
            f"{where}: missing key {missing[0]} (expected shape {tuple(expected[missing[0]].shape)})"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{where}: unexpected key {unexpected[0]} (shape {tuple(np.shape(found[unexpected[0]]))})"
            + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
        )
    for key in sorted(expected):
        want, got = tuple(expected[key].shape), tuple(np.shape(found[key]))
        if want != got:
            raise CheckpointError(f"{where}: key {key} expected shape {want}, found {got}")


def cast_floats(tree, dtype):
    """Cast floating-point leaves (fp16 checkpoints load into the configured compute dtype)."""
    import jax
    import jax.numpy as jnp

    def cast(x):
        x = np.asarray(x) if not hasattr(x, "dtype") else x
        return jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.asarray(x)

    return jax.tree_util.tree_map(cast, tree)
