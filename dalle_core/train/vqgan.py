"""Train a VQGAN (reconstruction + codebook/commitment losses, dead-code restarts); resumable.

No perceptual or GAN loss: LPIPS weights cannot be downloaded here, and flat-colour shapes are
reconstructed well by L1 + L2 alone. Small codebooks lose codes that no encoder output picks
("dead" codes); every ``restart_every`` steps such codes are moved onto random encoder outputs of
the current batch, which also initialises the codebook from data at step 0.

The model is fully convolutional, so most steps train on ``crop``×``crop`` crops taken on the
token grid (4× cheaper than 64×64 at the same number of pixels per token); the last
``full_res_fraction`` of the steps use whole images, so the mid-block attention also sees the
full grid it runs on at inference.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dalle_core.config import VQGANConfig
from dalle_core.models.vqgan import VQModel, init_vqgan_params
from dalle_core.train.loop import Progress, load_state, param_count, save_state, warmup_cosine

log = logging.getLogger(__name__)

CODEBOOK = ("quantize", "embedding", "embedding")


@dataclass(frozen=True)
class VQGANTrainConfig:
    """Hyper-parameters of a VQGAN run.

    steps / batch_size: optimizer steps and images (or crops) per step.
    crop: side of the training crops (None: whole images); crops sit on the token grid.
    full_res_fraction: the final fraction of steps that train on whole images (batch / 4).
    beta: commitment weight (taming uses 0.25). l2_weight: weight of the L2 term next to L1.
    ink_weight: extra weight of non-background pixels in the reconstruction loss.
    edge_weight: extra weight of pixels on a colour edge (their 3×3 neighbourhood holds more
        than one colour): what tells a small circle from a small square is a few edge and
        corner pixels, which an area-weighted loss barely sees.
    recolour: share of images in every batch whose palette colours are replaced by random ones
        (``shapes.recolour``; batches stay a function of (seed, step), so resuming is exact).
    ae_steps: first steps train a plain autoencoder (no quantizer); then the codebook is
        initialised by k-means on encoder outputs and VQ training starts. A VQ trained from
        scratch on a mostly white domain tends to settle on "everything is background".
    decoder_only: train only ``post_quant_conv`` and the decoder, on whole images: the codes
        an image gets (encoder, codebook) stay fixed, so a DalleBart trained on them stays
        valid while the decoder keeps improving. Needs ``init_params``; no restarts.
    restart_every: dead-code restart period in steps (0: never); restarts stop after
        ``restart_until`` of the run so the codebook can settle.
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.0
    crop: int | None = 32
    full_res_fraction: float = 0.1
    beta: float = 0.25
    l2_weight: float = 1.0
    ink_weight: float = 4.0
    edge_weight: float = 0.0
    recolour: float = 0.0
    ae_steps: int = 0
    decoder_only: bool = False
    restart_every: int = 50
    restart_until: float = 0.5
    ckpt_every: int = 200
    log_every: int = 25
    seed: int = 0


def _ae_forward(model: VQModel, pixels):
    """Plain autoencoder pass (no quantizer): the warm-up phase."""
    return model.decode(model.encode_latents(pixels, True))


def _pixel_loss(recon, pixels, tcfg: VQGANTrainConfig):
    """(weighted L1 + L2, plain L1). Pixels away from white weigh ``1 + ink_weight``: shapes
    cover a few percent of a 64×64 image, and an unweighted loss is content with background."""
    ink = (jnp.min(pixels, axis=-1, keepdims=True) < 0.6).astype(jnp.float32)
    w = 1.0 + tcfg.ink_weight * ink
    if tcfg.edge_weight:
        w = w + tcfg.edge_weight * edge_mask(pixels)
    err = recon - pixels
    weighted = jnp.mean(w * (jnp.abs(err) + tcfg.l2_weight * err**2)) / jnp.mean(w)
    return weighted, jnp.mean(jnp.abs(err))


def edge_mask(pixels) -> jax.Array:
    """float32 [B, H, W, 1]: 1 where a pixel's 3×3 neighbourhood spans more than 0.25 in some channel."""
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    hi = jax.lax.reduce_window(pixels, -jnp.inf, jax.lax.max, window, strides, "SAME")
    lo = jax.lax.reduce_window(pixels, jnp.inf, jax.lax.min, window, strides, "SAME")
    return (jnp.max(hi - lo, axis=-1, keepdims=True) > 0.25).astype(jnp.float32)


def _loss_fn(params, model: VQModel, pixels, tcfg: VQGANTrainConfig, quantize: bool = True):
    if not quantize:
        recon = model.apply({"params": params}, pixels, method=_ae_forward)
        loss, l1 = _pixel_loss(recon, pixels, tcfg)
        zero = jnp.zeros((), jnp.float32)
        return loss, {"loss": loss, "l1": l1, "codebook": zero, "indices": jnp.zeros((1,), jnp.int32)}
    recon, aux = model.apply({"params": params}, pixels, train=True)
    rec_loss, l1 = _pixel_loss(recon, pixels, tcfg)
    loss = rec_loss + aux["codebook_loss"] + tcfg.beta * aux["commitment_loss"]
    return loss, {"loss": loss, "l1": l1, "codebook": aux["codebook_loss"], "indices": aux["indices"]}


def make_train_step(model: VQModel, opt: optax.GradientTransformation, tcfg: VQGANTrainConfig):
    """(params, opt_state, pixels float32 [B, H, W, 3]) → (params, opt_state, metrics)."""

    @partial(jax.jit, donate_argnums=(0, 1), static_argnames=("quantize",))
    def step(params, opt_state, pixels, quantize: bool = True):
        loss_fn = partial(_loss_fn, quantize=quantize)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, model, pixels, tcfg)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return step


_CACHE: dict = {}


def _compiled(cfg: VQGANConfig, tcfg: VQGANTrainConfig):
    """(optimizer, jitted train step, jitted encoder-to-latents), cached per config: a resumed or
    repeated run in the same process reuses the compilations."""
    key = (cfg, tcfg)
    if key not in _CACHE:
        model = VQModel(cfg)
        sched = warmup_cosine(tcfg.lr, tcfg.steps, tcfg.warmup)
        opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b1=0.5, b2=0.9, weight_decay=tcfg.weight_decay))
        if tcfg.decoder_only:
            # only the decoder side learns; the labels follow the module's top-level names
            def label(params):
                return {k: jax.tree_util.tree_map(lambda _, k=k: "train" if k in ("decoder", "post_quant_conv") else "frozen", v)
                        for k, v in params.items()}

            opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, label)
            tcfg = dataclasses.replace(tcfg, crop=None, restart_every=0, ae_steps=0)
        _CACHE[key] = (opt, make_train_step(model, opt, tcfg), jax.jit(partial(_latents, model)))
    return _CACHE[key]


def _latents(model: VQModel, params, pixels):
    return model.apply({"params": params}, pixels, method="encode_latents")


def restart_dead_codes(codebook: np.ndarray, usage: np.ndarray, z: np.ndarray, rng: np.random.Generator,
                       threshold: float = 1e-4) -> tuple[np.ndarray, int]:
    """Move codes whose usage share is below ``threshold`` onto encoder outputs, k-means++ style.

    codebook [K, D]; usage [K] counts since the last restart; z [M, D] encoder outputs. The
    threshold is low on purpose: rare but real patterns (one colour's triangle tip) must keep
    their codes; only codes nobody picks move. Targets are drawn with probability proportional
    to their squared distance from the nearest live code (one at a time, so restarted codes
    spread out): a batch is mostly white background, and uniform draws would pile the
    restarted codes onto near-identical white vectors while colours stay unrepresented.
    """
    share = usage / max(usage.sum(), 1.0)
    dead = np.nonzero(share < threshold)[0]
    if len(dead) == 0 or len(z) == 0:
        return codebook, 0
    codebook = codebook.copy()
    z = z.astype(np.float64)
    live = np.setdiff1d(np.arange(len(codebook)), dead)
    if len(live):
        d2 = ((z[:, None, :] - codebook[live][None].astype(np.float64)) ** 2).sum(-1).min(1)
    else:
        d2 = np.full(len(z), np.inf)
    scale = 1e-3 * (float(np.std(z)) + 1e-6)
    for k in dead:
        if np.isfinite(d2).all() and d2.sum() > 1e-12:
            pick = int(rng.choice(len(z), p=d2 / d2.sum()))
        else:
            pick = int(rng.integers(len(z)))
        codebook[k] = z[pick] + rng.normal(scale=scale, size=z.shape[1])
        d2 = np.minimum(d2, ((z - codebook[k]) ** 2).sum(-1))
    return codebook, len(dead)


def kmeans_codebook(z: np.ndarray, k: int, rng: np.random.Generator, iters: int = 10) -> np.ndarray:
    """k codes [k, D] from encoder outputs z [M, D]: k-means++ seeding, then Lloyd iterations.

    Distinct vectors only (a batch repeats the white background thousands of times); with
    fewer distinct vectors than codes the rest are noisy copies, which restarts later reuse.
    """
    uniq = np.unique(np.round(z.astype(np.float64), 4), axis=0)
    book, _ = restart_dead_codes(np.zeros((k, z.shape[1])), np.zeros(k), uniq, rng, threshold=1.0)
    for _ in range(iters):
        d = (uniq**2).sum(1)[:, None] + (book**2).sum(1)[None] - 2 * uniq @ book.T
        assign = d.argmin(1)
        for j in np.unique(assign):
            book[j] = uniq[assign == j].mean(0)
    return book.astype(np.float32)


def _ink_weights(images: np.ndarray, crop: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate crop offsets (multiples of the token size) and per-image sampling weights.

    Crops that contain shapes are preferred (a mostly white dataset would otherwise train mostly
    on white), but every offset keeps some weight.
    """
    side = images.shape[1]
    offs = np.arange(0, side - crop + 1, grid)
    ink = (images.min(axis=-1) < 150).astype(np.float32)  # [N, H, W]
    cs = ink.cumsum(1).cumsum(2)
    cs = np.pad(cs, ((0, 0), (1, 0), (1, 0)))
    w = np.zeros((len(images), len(offs), len(offs)), np.float32)
    for i, y in enumerate(offs):
        for j, x in enumerate(offs):
            w[:, i, j] = cs[:, y + crop, x + crop] - cs[:, y, x + crop] - cs[:, y + crop, x] + cs[:, y, x]
    w = w.reshape(len(images), -1)
    w = w / np.maximum(w.sum(1, keepdims=True), 1.0) + 0.05
    return offs, w / w.sum(1, keepdims=True)


def train_vqgan(
    cfg: VQGANConfig,
    images: np.ndarray,
    run_dir: str | os.PathLike,
    tcfg: VQGANTrainConfig = VQGANTrainConfig(),
    resume: bool = True,
    init_params: dict | None = None,
) -> dict:
    """Train on uint8 images [N, H, W, 3] (H = W = cfg.resolution); returns the params.

    Checkpoints to ``run_dir/state.msgpack`` every ``ckpt_every`` steps and at the end; with
    ``resume`` a run continues from there. Logs to ``run_dir/log.jsonl``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (cfg.resolution, cfg.resolution, 3):
        raise ValueError(f"images must be uint8 [N, {cfg.resolution}, {cfg.resolution}, 3], got {images.shape}")
    if len(images) == 0:
        raise ValueError("no training images")
    run_dir = Path(run_dir)
    key = jax.random.PRNGKey(tcfg.seed)
    # copy: the train step donates its params, and the caller's arrays must survive
    if init_params is not None:
        params = jax.tree_util.tree_map(jnp.array, init_params)
    else:  # one compiled init instead of hundreds of eager ops
        params = jax.jit(partial(init_vqgan_params, cfg))(key)
    if tcfg.decoder_only and init_params is None:
        raise ValueError("decoder_only training needs init_params (a trained VQGAN)")
    opt, step_fn, pre_quant = _compiled(cfg, tcfg)
    if tcfg.decoder_only:
        tcfg = dataclasses.replace(tcfg, crop=None, restart_every=0, ae_steps=0)
    state = {"params": params, "opt_state": opt.init(params), "step": 0,
             "usage": np.zeros(cfg.n_embed, np.float32)}
    if resume:
        loaded = load_state(run_dir, state)
        if loaded is not None:
            state = loaded
            log.info("vqgan: resuming %s at step %d", run_dir, int(state["step"]))
    params, opt_state, start = state["params"], state["opt_state"], int(state["step"])
    usage = np.array(state["usage"], np.float32)  # writable: restored arrays are read-only
    log.info("vqgan: %d params, %d images, %d steps of %d", param_count(params), len(images), tcfg.steps, tcfg.batch_size)

    full_from = int(tcfg.steps * (1.0 - tcfg.full_res_fraction)) if tcfg.crop else 0
    crop = tcfg.crop or cfg.resolution
    offs, weights = _ink_weights(images, crop, cfg.downsample) if tcfg.crop else (None, None)
    progress = Progress("vqgan", tcfg.steps, run_dir, tcfg.log_every, start)
    restart_stop = int(tcfg.steps * tcfg.restart_until)
    def batch_at(step: int, rng: np.random.Generator) -> jax.Array:
        if step >= full_from:
            idx = rng.integers(len(images), size=max(8, tcfg.batch_size * crop * crop // cfg.resolution**2))
            batch = images[idx]
        else:
            idx = rng.integers(len(images), size=tcfg.batch_size)
            choice = np.array([rng.choice(weights.shape[1], p=weights[i]) for i in idx])
            ys, xs = offs[choice // len(offs)], offs[choice % len(offs)]
            batch = np.stack([images[i, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs, strict=True)])
        if tcfg.recolour:
            from dalle_core.train.shapes import recolour

            batch = recolour(batch, rng, p=tcfg.recolour)
        return jnp.asarray(batch, jnp.float32) / 255.0

    for step in range(start, tcfg.steps):
        rng = np.random.default_rng([tcfg.seed, step])  # batches depend only on (seed, step)
        pixels = batch_at(step, rng)
        quantize = step >= tcfg.ae_steps
        if tcfg.ae_steps and step == tcfg.ae_steps:
            # k-means on encoder outputs of many batches: every pattern gets codes from the start
            z = np.concatenate([
                np.asarray(pre_quant(params, batch_at(step, np.random.default_rng([tcfg.seed, step, k])))).reshape(-1, cfg.embed_dim)
                for k in range(16)
            ])
            params = _set_codebook(params, kmeans_codebook(z, cfg.n_embed, rng))
            usage = np.ones_like(usage)
            log.info("vqgan step %d: codebook initialised by k-means on %d encoder outputs", step, len(z))
        elif quantize and tcfg.restart_every and step % tcfg.restart_every == 0 and step < restart_stop:
            z = np.asarray(pre_quant(params, pixels)).reshape(-1, cfg.embed_dim)
            book = np.asarray(params[CODEBOOK[0]][CODEBOOK[1]][CODEBOOK[2]])
            fresh = step == 0
            book, moved = restart_dead_codes(book, np.zeros_like(usage) if fresh else usage, z, rng)
            if moved:
                params = _set_codebook(params, book)
                log.info("vqgan step %d: restarted %d dead codes", step, moved)
            usage = np.zeros_like(usage)
        params, opt_state, metrics = step_fn(params, opt_state, pixels, quantize=quantize)
        indices = np.asarray(metrics.pop("indices")).ravel()
        if quantize:
            usage += np.bincount(indices, minlength=cfg.n_embed).astype(np.float32)
        metrics["codes_used"] = float((usage > 0).sum())
        progress.update(step + 1, metrics)
        if (step + 1) % tcfg.ckpt_every == 0 or step + 1 == tcfg.steps:
            save_state(run_dir, {"params": params, "opt_state": opt_state, "step": step + 1, "usage": usage})
    return jax.device_get(params)


def _set_codebook(params: dict, book: np.ndarray) -> dict:
    params = jax.tree_util.tree_map(lambda x: x, params)  # shallow structural copy
    q = dict(params[CODEBOOK[0]])
    q[CODEBOOK[1]] = {**q[CODEBOOK[1]], CODEBOOK[2]: jnp.asarray(book, jnp.float32)}
    return {**params, CODEBOOK[0]: q}


def encode_images(cfg: VQGANConfig, params: dict, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 [N, H, W, 3] → VQGAN codes int32 [N, grid²] (deduplicated: identical images encode once)."""
    model = VQModel(cfg)
    flat = images.reshape(len(images), -1)
    uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
    uniq = uniq.reshape((-1,) + images.shape[1:])
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode")[1])
    out = []
    for s in range(0, len(uniq), batch_size):
        chunk = uniq[s : s + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
        out.append(np.asarray(fn(params, jnp.asarray(chunk, jnp.float32) / 255.0))[: batch_size - pad])
    codes = np.concatenate(out) if out else np.zeros((0, cfg.grid_size**2), np.int32)
    return codes[inverse.ravel()].astype(np.int32)


def decode_codes(cfg: VQGANConfig, params: dict, codes: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """VQGAN codes int [N, grid²] → uint8 images [N, H, W, 3] (identical rows decode once)."""
    model = VQModel(cfg)
    fn = jax.jit(lambda p, c: model.apply({"params": p}, c, method="decode_code"))
    codes, inverse = np.unique(np.asarray(codes, np.int32).reshape(len(codes), -1), axis=0, return_inverse=True)
    out = []
    for s in range(0, len(codes), batch_size):
        chunk = np.asarray(codes[s : s + batch_size], np.int32)
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
        px = np.asarray(fn(params, jnp.asarray(chunk)))[: batch_size - pad]
        out.append(np.round(px * 255.0).astype(np.uint8))
    return np.concatenate(out)[inverse.ravel()]


def reconstruction_report(cfg: VQGANConfig, params: dict, images: np.ndarray, scenes, check=None) -> dict:
    """How well the VQGAN keeps the domain: the pixel checker on reconstructions, and the L1 error.

    Top-level keys are the checker's rates (``colour_shape``, ``relation``, ...) and ``l1``;
    ``singles`` breaks single objects down by size and shape ({"small circle": {"pass", "count"}}),
    which shows which objects the tokenizer cannot draw (a DalleBart trained on it cannot either).
    ``check(image, scene) -> {name: bool}``: the domain's checker (default: the shapes one).
    """
    if check is None:
        from dalle_core.train.shapes import check

    recon = decode_codes(cfg, params, encode_images(cfg, params, images))
    totals: dict[str, list[bool]] = {}
    singles: dict[str, list[bool]] = {}
    for img, sc in zip(recon, scenes, strict=True):
        result = check(img, sc)
        for k, v in result.items():
            totals.setdefault(k, []).append(v)
        if sc.kind == "single" and hasattr(sc, "objects"):
            singles.setdefault(f"{sc.size or 'medium'} {sc.objects[0].shape}", []).append(result["colour_shape"])
    report: dict = {k: float(np.mean(v)) for k, v in totals.items()}
    report["l1"] = float(np.abs(recon.astype(np.float32) - images.astype(np.float32)).mean() / 255.0)
    report["singles"] = {k: {"pass": float(np.mean(v)), "count": len(v)} for k, v in sorted(singles.items())}
    return report


def token_coverage(cfg: VQGANConfig, params: dict, train_images: np.ndarray, images: np.ndarray, scenes) -> dict:
    """Which images need tokens that the training images never produce.

    DalleBart learns to emit only the codes it saw as targets, so an image whose tokens include a
    code absent from the training images' tokens is one it cannot draw. Returns ``train_codes``
    (distinct codes the training images use) and ``groups``: per kind of object, size first and
    position ignored ("large yellow circle", "medium blue circle"; "pair" for two objects), the
    share of ``images`` that need such a code, how many distinct such codes, and the count.
    """
    seen = np.zeros(cfg.n_embed, bool)
    seen[np.unique(encode_images(cfg, params, train_images))] = True
    codes = encode_images(cfg, params, images)
    groups: dict[str, list[np.ndarray]] = {}
    for row, sc in zip(codes, scenes, strict=True):
        o = sc.objects[0]
        key = f"{sc.size or 'medium'} {o.colour} {o.shape}" if sc.kind == "single" else "pair"
        groups.setdefault(key, []).append(row)
    out = {}
    for key, rows in sorted(groups.items()):
        rows = np.stack(rows)
        unseen = ~seen[rows]
        out[key] = {"needs_unseen": float(unseen.any(axis=1).mean()), "unseen_codes": int(len(np.unique(rows[unseen]))),
                    "count": len(rows)}
    return {"train_codes": int(seen.sum()), "groups": out}
