"""Train DalleBart on (caption, VQGAN tokens) pairs: teacher forcing, cross-entropy, resumable.

The decoder input is BOS followed by the image tokens shifted right by one; the loss is the
cross-entropy of the logits against the image tokens. About 10% of the captions are replaced by
the unconditional prompt (the empty string tokenized raw, ``<s></s>``, exactly what the generator
feeds the unconditional branch), so super-conditioning has a trained unconditional model to push
against. Optimizer: AdamW with linear warm-up and cosine decay, global-norm clipping.

``freeze_layers=N`` keeps the embeddings and the lower N layers of both stacks fixed (the
fine-tuning recipe for small data): whole frozen leaves go through ``optax.multi_transform`` to
``set_to_zero``; the scanned layer stacks are frozen row-wise (their leading axis is the layer).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from dalle_core.config import BartConfig
from dalle_core.models.bart import DalleBart, init_params
from dalle_core.train.loop import Progress, load_state, param_count, save_state, warmup_cosine

log = logging.getLogger(__name__)

_EMBEDDING_PARTS = ("embed_tokens", "embed_positions", "layernorm_embedding")


@dataclass(frozen=True)
class BartTrainConfig:
    """Hyper-parameters of a DalleBart run.

    caption_dropout: share of captions replaced by the unconditional (empty) prompt.
    freeze_layers: keep embeddings + the lower N encoder and decoder layers fixed (0: train all).
    label_smoothing: 0 in dalle-mini.
    restarts: steps where the learning rate warms up again and the optimiser starts afresh (warm
      restarts): with ``steps=18000, restarts=(10000,)`` the first 10000 steps are exactly a
      10000-step run and the last 8000 continue its weights with a new warm-up and cosine.
    """

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    caption_dropout: float = 0.1
    freeze_layers: int = 0
    label_smoothing: float = 0.0
    ckpt_every: int = 200
    log_every: int = 25
    seed: int = 0
    restarts: tuple[int, ...] = ()

    def __post_init__(self):
        r = tuple(int(s) for s in self.restarts)
        if list(r) != sorted(set(r)) or any(not 0 < s < self.steps for s in r):
            raise ValueError(f"restarts must be increasing steps between 0 and steps={self.steps}, got {list(r)}")
        object.__setattr__(self, "restarts", r)

    @classmethod
    def from_dict(cls, d: dict | None) -> BartTrainConfig:
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown DalleBart training key(s) {', '.join(unknown)}")
        return cls(**d)

    def cycles(self) -> list[tuple[int, BartTrainConfig]]:
        """(first step, the config of a plain run as long as the cycle) per learning-rate cycle."""
        starts = (0, *self.restarts)
        ends = (*self.restarts, self.steps)
        return [(a, replace(self, steps=b - a, restarts=())) for a, b in zip(starts, ends, strict=True)]


def bart_loss(model: DalleBart, params, input_ids, attention_mask, image_tokens, label_smoothing: float = 0.0):
    """Mean cross-entropy and token accuracy.

    input_ids, attention_mask: int32 [B, T_text]; image_tokens: int32 [B, L] VQGAN codes.
    """
    cfg = model.config
    bos = jnp.full((image_tokens.shape[0], 1), cfg.image_bos_id, jnp.int32)
    decoder_input = jnp.concatenate([bos, image_tokens[:, :-1]], axis=1)
    logits = model.apply({"params": params}, input_ids, attention_mask, decoder_input).astype(jnp.float32)
    vocab = logits.shape[-1]
    labels = jax.nn.one_hot(image_tokens, vocab)
    if label_smoothing:
        labels = optax.smooth_labels(labels, label_smoothing)
    loss = optax.softmax_cross_entropy(logits, labels).mean()
    acc = (logits.argmax(-1) == image_tokens).mean()
    return loss, {"loss": loss, "acc": acc}


def _layer_stack(path: tuple[str, ...]) -> bool:
    return len(path) >= 3 and path[0] == "model" and path[2] == "layers"


def freeze_labels(params, freeze_layers: int):
    """Per-leaf label: ``"frozen"`` (embeddings when freezing), else ``"train"``."""
    flat = flatten_dict(params)
    out = {}
    for path in flat:
        frozen = freeze_layers > 0 and path[0] == "model" and len(path) > 2 and path[2] in _EMBEDDING_PARTS
        out[path] = "frozen" if frozen else "train"
    return unflatten_dict(out)


def layer_row_mask(params, freeze_layers: int):
    """Per-leaf multiplier: [layers, 1, …] with 0 for the lower ``freeze_layers`` layers, else 1."""
    flat = flatten_dict(params)
    out = {}
    for path, leaf in flat.items():
        if freeze_layers > 0 and _layer_stack(path):
            n = leaf.shape[0]
            rows = (jnp.arange(n) >= freeze_layers).astype(jnp.float32)
            out[path] = rows.reshape((n,) + (1,) * (leaf.ndim - 1))
        else:
            out[path] = jnp.ones((), jnp.float32)
    return unflatten_dict(out)


def make_optimizer(tcfg: BartTrainConfig, params) -> optax.GradientTransformation:
    """AdamW + warm-up/cosine + clipping; with ``freeze_layers`` the frozen parts get zero updates.

    The row mask is applied after AdamW, so frozen rows also skip weight decay.
    """
    sched = warmup_cosine(tcfg.lr, tcfg.steps, tcfg.warmup)
    # no weight decay on LayerNorm scales/biases (1-D leaves); kernels and embeddings decay
    decay_mask = jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
    adamw = optax.chain(
        optax.clip_by_global_norm(tcfg.grad_clip),
        optax.adamw(sched, b1=0.9, b2=0.99, weight_decay=tcfg.weight_decay, mask=decay_mask),
    )
    if tcfg.freeze_layers <= 0:
        return adamw
    rows = layer_row_mask(params, tcfg.freeze_layers)
    return optax.chain(
        optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, freeze_labels(params, tcfg.freeze_layers)),
        optax.stateless(lambda updates, _p=None: jax.tree_util.tree_map(lambda u, m: u * m, updates, rows)),
    )


def make_train_step(model: DalleBart, opt: optax.GradientTransformation, label_smoothing: float = 0.0):
    """(params, opt_state, ids, mask, tokens) → (params, opt_state, metrics)."""

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, ids, mask, tokens):
        grad_fn = jax.value_and_grad(bart_loss, argnums=1, has_aux=True)
        (_, metrics), grads = grad_fn(model, params, ids, mask, tokens, label_smoothing)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return step


_STEP_CACHE: dict = {}


def _compiled(cfg: BartConfig, tcfg: BartTrainConfig, shapes) -> tuple[optax.GradientTransformation, object]:
    """Optimizer and jitted step, cached per (config, train config, param shapes): repeated runs
    (resume, fine-tuning several folders, tests) reuse one compilation."""
    key = (cfg, tcfg, jax.tree_util.tree_structure(shapes), tuple((x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves(shapes)))
    if key not in _STEP_CACHE:
        opt = make_optimizer(tcfg, shapes)
        _STEP_CACHE[key] = (opt, make_train_step(DalleBart(cfg), opt, tcfg.label_smoothing))
    return _STEP_CACHE[key]


def make_eval_fn(model: DalleBart):
    """(params, ids, mask, tokens) → mean loss (jitted, one compilation per model config)."""
    return _eval_fn_for(model.config)


@functools.lru_cache(maxsize=8)
def _eval_fn_for(cfg: BartConfig):
    model = DalleBart(cfg)
    return jax.jit(lambda p, i, m, t: bart_loss(model, p, i, m, t)[0])


def eval_loss(model: DalleBart, params, ids, mask, tokens, batch_size: int = 64) -> float:
    """Mean teacher-forced loss over a whole set (padded last batch excluded from the mean)."""
    fn = make_eval_fn(model)
    total, count = 0.0, 0
    for s in range(0, len(tokens), batch_size):
        i, m, t = ids[s : s + batch_size], mask[s : s + batch_size], tokens[s : s + batch_size]
        total += float(fn(params, jnp.asarray(i), jnp.asarray(m), jnp.asarray(t))) * len(t)
        count += len(t)
    return total / max(count, 1)


def train_bart(
    cfg: BartConfig,
    image_tokens: np.ndarray,
    text_ids: np.ndarray,
    text_mask: np.ndarray,
    uncond: tuple[np.ndarray, np.ndarray],
    run_dir: str | os.PathLike,
    tcfg: BartTrainConfig = BartTrainConfig(),
    init: dict | None = None,
    resume: bool = True,
) -> dict:
    """Train and return the params.

    image_tokens: int32 [N, L]; text_ids / text_mask: int32 [N, K, T] (K wordings per image, one
    drawn per step) or [N, T]; uncond: (ids [T], mask [T]) of the unconditional prompt.
    init: starting params (fine-tuning); else random init from ``tcfg.seed``.
    """
    image_tokens = np.asarray(image_tokens, np.int32)
    text_ids, text_mask = np.asarray(text_ids, np.int32), np.asarray(text_mask, np.int32)
    if text_ids.ndim == 2:
        text_ids, text_mask = text_ids[:, None], text_mask[:, None]
    if len(image_tokens) == 0:
        raise ValueError("no training pairs")
    if image_tokens.shape[1] != cfg.image_length or text_ids.shape[-1] != cfg.max_text_length:
        raise ValueError(
            f"expected image tokens [N, {cfg.image_length}] and text [N, K, {cfg.max_text_length}], "
            f"got {image_tokens.shape} and {text_ids.shape}"
        )
    run_dir = Path(run_dir)
    # copy: the train step donates its params, and the caller's arrays must survive
    params = jax.tree_util.tree_map(jnp.array, init) if init is not None else init_params(cfg, jax.random.PRNGKey(tcfg.seed))
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    cycles = [(first, *_compiled(cfg, plain, shapes)) for first, plain in tcfg.cycles()]
    state = {"params": params, "opt_state": cycles[0][1].init(params), "step": 0}
    if resume:
        loaded = load_state(run_dir, state)
        if loaded is not None:
            state = loaded
            log.info("bart: resuming %s at step %d", run_dir, int(state["step"]))
    params, opt_state, start = state["params"], state["opt_state"], int(state["step"])
    log.info("bart: %d params, %d pairs, %d steps of %d", param_count(params), len(image_tokens), tcfg.steps, tcfg.batch_size)
    un_ids, un_mask = (np.asarray(u, np.int32) for u in uncond)
    progress = Progress("bart", tcfg.steps, run_dir, tcfg.log_every, start)
    n, k = text_ids.shape[:2]
    for step in range(start, tcfg.steps):
        first, opt, step_fn = next(c for c in reversed(cycles) if c[0] <= step)
        if step == first and step > 0:
            opt_state = opt.init(params)  # a warm restart: fresh moments, the schedule from warm-up again
            log.info("bart: warm restart at step %d", step)
        # batches depend only on (seed, step): a resumed run continues exactly as an uninterrupted one
        rng = np.random.default_rng([tcfg.seed, step])
        idx = rng.integers(n, size=tcfg.batch_size)
        which = rng.integers(k, size=tcfg.batch_size)
        ids, mask = text_ids[idx, which], text_mask[idx, which]
        drop = rng.random(tcfg.batch_size) < tcfg.caption_dropout
        ids = np.where(drop[:, None], un_ids[None], ids)
        mask = np.where(drop[:, None], un_mask[None], mask)
        params, opt_state, metrics = step_fn(params, opt_state, ids, mask, image_tokens[idx])
        progress.update(step + 1, jax.device_get(metrics))
        if (step + 1) % tcfg.ckpt_every == 0 or step + 1 == tcfg.steps:
            save_state(run_dir, {"params": params, "opt_state": opt_state, "step": step + 1})
    return jax.device_get(params)


def tokenize_captions(tokenizer, captions: list[list[str]] | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Captions [N] or [N][K] → ids, mask int32 [N, (K,) T] with the model's tokenizer."""
    nested = bool(captions) and isinstance(captions[0], list | tuple)
    flat = [c for caps in captions for c in caps] if nested else list(captions)
    enc = tokenizer(flat)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if nested:
        k = len(captions[0])
        ids, mask = ids.reshape(len(captions), k, -1), mask.reshape(len(captions), k, -1)
    return ids, mask


def unconditional_row(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The unconditional prompt exactly as the generator builds it (empty string, not normalised)."""
    enc = tokenizer([""], normalize=False)
    return enc["input_ids"][0], enc["attention_mask"][0]


def train_embedded_bart(out: Path, ecfg, variant, resume: bool = True) -> Path:
    """The ``bart`` stage of ``train_embedded``: tokens.npz + captions → ``out/model/dalle``."""
    import json

    from dalle_core.checkpoints.bart import save_dalle_bart
    from dalle_core.text import TextTokenizer
    from dalle_core.train.run_data import bart_pairs

    folder = out / "model" / "dalle"
    if resume and (folder / "flax_model.msgpack").exists():
        log.info("bart: already exported")
        return folder
    cfg = variant.bart
    tokenizer = TextTokenizer.from_folder(out / "tokenizer" / "dalle", max_length=cfg.max_text_length)
    codes, caps = bart_pairs(out, ecfg)
    ids, mask = tokenize_captions(tokenizer, caps)
    tcfg = BartTrainConfig.from_dict(ecfg.bart)
    params = train_bart(cfg, codes, ids, mask, unconditional_row(tokenizer), out / "bart_run", tcfg, resume=resume)
    save_dalle_bart(folder, cfg, params, scanned=True, tokenizer=tokenizer)
    (folder / "training.json").write_text(json.dumps({"train": tcfg.__dict__}, indent=2) + "\n")
    return folder
