"""Pieces every training loop here shares: resumable train-state files, progress logging, schedules.

A run folder holds ``state.msgpack`` (params, optimizer state, step, rng — everything a resumed run
needs to continue exactly where it stopped), ``log.jsonl`` (one JSON object per logged step) and
whatever the caller exports. Writes are atomic (temp file + rename), so a run killed mid-write
resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import serialization

log = logging.getLogger(__name__)

STATE_FILE = "state.msgpack"
LOG_FILE = "log.jsonl"


def save_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``{"params", "opt_state", "step", "rng", ...}`` atomically to ``run_dir/state.msgpack``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(serialization.to_bytes(jax.device_get(state)))
    tmp.replace(path)
    return path


def load_state(run_dir: str | os.PathLike, template: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state shaped like ``template``, or None when the folder has none."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return serialization.from_bytes(template, path.read_bytes())
    except Exception as err:
        raise ValueError(
            f"{path} does not match this run's model/optimizer ({err}); delete the run folder or "
            "pass resume=False to start over"
        ) from err


class Progress:
    """Logs ``step/total``, losses, speed and ETA every ``every`` steps; appends them to log.jsonl."""

    def __init__(self, name: str, total: int, run_dir: str | os.PathLike | None, every: int, start: int = 0):
        self.name, self.total, self.every = name, total, max(1, every)
        self.path = Path(run_dir) / LOG_FILE if run_dir else None
        self.t0, self.start = time.time(), start
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """``step`` is 1-based (steps done); metrics are averaged over the logging window."""
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        if step % self.every and step != self.total:
            return
        avg = {k: v / self.count for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        elapsed = time.time() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        log.info(
            "%s step %d/%d %s | %.2f steps/s, eta %.0fs",
            self.name, step, self.total, " ".join(f"{k}={v:.4f}" for k, v in avg.items()), rate, eta,
        )
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, "time": round(elapsed, 2), **avg}) + "\n")


def warmup_cosine(lr: float, steps: int, warmup: int, end_fraction: float = 0.05) -> optax.Schedule:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine decay to ``end_fraction * lr``."""
    warmup = max(1, min(warmup, steps - 1)) if steps > 1 else 1
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
        end_value=lr * end_fraction,
    )


def param_count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def setup_logging(level: int = logging.INFO) -> None:
    """For the ``main`` entry points: timestamps on stderr (library code only logs)."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
