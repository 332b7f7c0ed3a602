"""Train a CLIP on (caption, image) pairs with the symmetric contrastive loss; resumable.

Images go through ``rank.clip_preprocess`` — the exact preprocessing used when CLIP ranks
candidates. Besides the in-batch negatives, each image brings ``hard_negatives`` perturbed
captions (the same scene with one scored attribute changed: a colour, a shape, the position, the
size, the relation, or the two objects' shapes swapped), so the model learns the distinctions
re-ranking needs, not just "which colours are present". Those only teach the image → text
direction; ranking asks the other one (one prompt, which of these images?), so with
``image_negatives`` each image also brings renders of such changed scenes
(``shapes.counterpart``), each with its own caption, into the batch. With ``reconstructions`` it
also sees the VQGAN's reconstructions of the renders, which have the same artefacts as generated
images; with ``broken_negatives`` also, for each image, its reconstruction from a token grid with
some of the shape's tokens replaced (``break_codes``: a bite, a bump, a stray colour — the
mistakes DalleBart makes), an image no caption matches, so a prompt learns to prefer a clean
shape over a broken one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dalle_core.config import CLIPConfig
from dalle_core.models.clip import CLIPModel, init_clip_params
from dalle_core.rank import clip_preprocess
from dalle_core.train.loop import Progress, load_state, param_count, save_state, warmup_cosine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CLIPTrainConfig:
    """Hyper-parameters of a CLIP run.

    hard_negatives: perturbed captions per image (0: in-batch negatives only).
    image_negatives: renders of perturbed scenes per image, with their captions (the embedded
        pipeline's clip stage; 0: none). The batch then holds ``batch_size * (1 + image_negatives)``
        images.
    broken_negatives: add, per image, a reconstruction from corrupted tokens as a negative image
        with no caption (the embedded pipeline's clip stage; needs ``reconstructions``).
    reconstructions: also train on the VQGAN's reconstructions of the renders (the embedded
        pipeline's clip stage), i.e. on images with the artefacts generated images have, since
        those are what CLIP ranks.
    """

    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    hard_negatives: int = 1
    image_negatives: int = 0
    broken_negatives: bool = False
    reconstructions: bool = False
    ckpt_every: int = 200
    log_every: int = 25
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict | None) -> CLIPTrainConfig:
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown CLIP training key(s) {', '.join(unknown)}")
        return cls(**d)


def clip_loss(params, cfg: CLIPConfig, ids, mask, images_uint8, pairs: int | None = None):
    """Contrastive loss. ids/mask int32 [T, L]; images uint8 [I, H, W, 3]; image i matches text i
    for i < ``pairs`` (default I). Texts beyond ``pairs`` are extra negatives for the images,
    images beyond it extra negatives for the texts."""
    b = pairs or images_uint8.shape[0]
    pixels = clip_preprocess(images_uint8, cfg)
    logits = CLIPModel(cfg).apply({"params": params}, ids, mask, pixels)  # [I, T]
    labels = jnp.arange(b)
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits[:b], labels).mean()
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits[:, :b].T, labels).mean()
    acc = (logits[:b].argmax(-1) == labels).mean()
    return (i2t + t2i) / 2, {"loss": (i2t + t2i) / 2, "acc": acc}


def make_train_step(cfg: CLIPConfig, opt: optax.GradientTransformation, pairs: int | None = None):
    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, ids, mask, images):
        (_, metrics), grads = jax.value_and_grad(clip_loss, has_aux=True)(params, cfg, ids, mask, images, pairs)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # CLIP clamps the temperature at 100 (logit_scale = ln 100)
        params = {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, 4.6052)}
        return params, opt_state, metrics

    return step


def train_clip(
    cfg: CLIPConfig,
    images: np.ndarray,
    caption_fn,
    tokenizer,
    run_dir: str | os.PathLike,
    tcfg: CLIPTrainConfig = CLIPTrainConfig(),
    resume: bool = True,
    counterpart_fn=None,
    broken: np.ndarray | None = None,
    init_params: dict | None = None,
    extra_fn=None,
) -> dict:
    """Train on uint8 images [N, H, W, 3].

    caption_fn(indices int [B], rng, k) → (captions [B], k·B negative captions or None): fresh
    wordings each step, ``k = tcfg.hard_negatives``. tokenizer: ``rank.ClipTokenizer`` (texts → ids, mask [B, L]).
    counterpart_fn(indices, rng) → (uint8 images [M, H, W, 3], their M captions): extra image–text
    pairs that are negatives for the batch's (needed when ``tcfg.image_negatives``).
    broken: uint8 [N, H, W, 3], a broken version of each image, added to the batch as an image no
    caption matches (needed when ``tcfg.broken_negatives``).
    init_params: start from these weights (fine-tuning) instead of a fresh initialisation.
    extra_fn(rng) → (uint8 images [M, H, W, 3], their M captions, uint8 negative images [K, H, W, 3]):
    more pairs and captionless negatives each step, the same M and K every step (``tune_embedded_clip``).
    """
    images = np.asarray(images)
    if len(images) == 0:
        raise ValueError("no training images")
    if tcfg.image_negatives and counterpart_fn is None:
        raise ValueError("image_negatives needs a counterpart_fn (renders of the changed scenes)")
    if tcfg.broken_negatives and (broken is None or len(broken) != len(images)):
        raise ValueError("broken_negatives needs a broken version of every training image")
    run_dir = Path(run_dir)
    if init_params is not None:  # a copy: the step donates its params, the caller keeps the given ones
        params = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), init_params)
    else:
        params = init_clip_params(cfg, jax.random.PRNGKey(tcfg.seed))
    sched = warmup_cosine(tcfg.lr, tcfg.steps, tcfg.warmup)
    decay = jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b1=0.9, b2=0.98, weight_decay=tcfg.weight_decay, mask=decay))
    state = {"params": params, "opt_state": opt.init(params), "step": 0}
    if resume:
        loaded = load_state(run_dir, state)
        if loaded is not None:
            state = loaded
            log.info("clip: resuming %s at step %d", run_dir, int(state["step"]))
    params, opt_state, start = state["params"], state["opt_state"], int(state["step"])
    log.info("clip: %d params, %d images, %d steps of %d", param_count(params), len(images), tcfg.steps, tcfg.batch_size)
    step_fns: dict[int, object] = {}  # by the number of image–caption pairs (fixed in practice)
    progress = Progress("clip", tcfg.steps, run_dir, tcfg.log_every, start)
    for step in range(start, tcfg.steps):
        rng = np.random.default_rng([tcfg.seed, step])  # batches depend only on (seed, step)
        idx = rng.integers(len(images), size=tcfg.batch_size)
        caps, negs = caption_fn(idx, rng, int(tcfg.hard_negatives))
        # image j matches text j for j < pairs; captionless negative images come after them
        paired, caps, unpaired = [images[idx]], list(caps), []
        if tcfg.image_negatives:
            extra, extra_caps = counterpart_fn(idx, rng)
            paired.append(extra)
            caps += list(extra_caps)
        if extra_fn is not None:
            extra, extra_caps, extra_negatives = extra_fn(rng)
            paired.append(extra)
            caps += list(extra_caps)
            unpaired.append(extra_negatives)
        if tcfg.broken_negatives:
            unpaired.append(broken[idx])
        pairs = len(caps)
        if pairs not in step_fns:
            step_fns[pairs] = make_train_step(cfg, opt, pairs=pairs)
        texts = caps + (list(negs) if negs is not None else [])
        ids, mask = tokenizer(texts)
        params, opt_state, metrics = step_fns[pairs](params, opt_state, ids, mask, np.concatenate(paired + unpaired))
        progress.update(step + 1, jax.device_get(metrics))
        if (step + 1) % tcfg.ckpt_every == 0 or step + 1 == tcfg.steps:
            save_state(run_dir, {"params": params, "opt_state": opt_state, "step": step + 1})
    return jax.device_get(params)


def shapes_caption_fn(scenes, domain=None):
    """caption_fn for a training domain (default shapes): a random wording and ``k`` hard
    negatives per scene."""
    if domain is None:
        from dalle_core.train.domains import ShapesDomain

        domain = ShapesDomain()

    def fn(idx, rng, k=1):
        caps = [domain.caption(scenes[i], rng) for i in idx]
        negs = [domain.caption(domain.perturb(scenes[i], rng), rng) for _ in range(k) for i in idx]
        return caps, (negs or None)

    return fn


def break_codes(codes: np.ndarray, rng: np.random.Generator, share: float = 0.25) -> np.ndarray:
    """Token grids int [N, L] with mistakes like a sampler's: in each grid, ``share`` of the tokens
    that are not background (the grid's most common code) or touch one, at least one, are replaced
    by a background token (a bite) or by a token drawn from the inked tokens of all grids (a bump,
    a ragged edge, a stray colour); every chosen token changes. Returns a new array."""
    codes = np.array(codes)
    n, length = codes.shape
    side = int(round(length**0.5))
    if side * side != length:
        raise ValueError(f"codes must be square token grids, got length {length}")
    background = np.array([np.bincount(row).argmax() for row in codes])
    inked = codes != background[:, None]
    pool = codes[inked]
    if pool.size == 0:
        raise ValueError("no inked tokens to break")
    ink_pools: dict[int, np.ndarray] = {}
    for i in range(n):
        ink = inked[i].reshape(side, side)
        near = ink.copy()
        near[1:] |= ink[:-1]
        near[:-1] |= ink[1:]
        near[:, 1:] |= ink[:, :-1]
        near[:, :-1] |= ink[:, 1:]
        where = np.flatnonzero(near)
        if where.size == 0:
            continue
        m = min(where.size, max(1, int(round(share * ink.sum()))))
        pos = rng.choice(where, size=m, replace=False)
        if background[i] not in ink_pools:  # nearly every grid has the same background code
            ink_pools[background[i]] = pool[pool != background[i]]
        ink_pool = ink_pools[background[i]]
        if ink_pool.size == 0:
            continue
        values = rng.choice(ink_pool, size=m)
        values[(rng.random(m) < 1 / 3) & inked[i, pos]] = background[i]  # bites only where there is ink
        same = values == codes[i, pos]  # every chosen token changes
        values[same] = np.where(inked[i, pos][same], background[i], rng.choice(ink_pool, size=int(same.sum())))
        codes[i, pos] = values
    return codes


def shapes_counterpart_fn(counterparts, images, domain=None):
    """counterpart_fn for a training domain (default shapes): ``counterparts[i]`` are the k changed
    scenes of training image i and ``images`` uint8 [N, k, H, W, 3] their pictures; fresh wordings
    each step."""
    if domain is None:
        from dalle_core.train.domains import ShapesDomain

        domain = ShapesDomain()

    def fn(idx, rng):
        caps = [domain.caption(counterparts[i][j], rng) for i in idx for j in range(images.shape[1])]
        return images[idx].reshape((-1,) + images.shape[2:]), caps

    return fn


@dataclass(frozen=True)
class CLIPTuneConfig:
    """The ``clip_tune`` stage: the trained CLIP fine-tuned on the run's own DalleBart samples.

    scenes: training scenes whose captions DalleBart samples, ``samples`` times each, at
        ``condition_scale`` and ``top_k`` (the settings the model ships with); the pixel checker
        marks each sample right or wrong.
    groups: per step, mined scenes with a right and a wrong sample: a right one is paired with a
        fresh caption of the scene and ``wrong`` wrong ones join as captionless negatives, so the
        caption learns to pick its right sample out of DalleBart's own mistakes.
    readings: per step, wrong samples captioned with what the checker sees in them
        (``shapes.read_scene``: never a held-out combination).
    A sample that looks like a held-out combination (``shapes.shows_heldout``) is left out.
    train: the ``CLIPTrainConfig`` of the fine-tuning (``batch_size`` training renders with their
        captions per step keep the contrastive task); ``steps: 0`` skips the stage.
    """

    scenes: int = 4000
    samples: int = 8
    condition_scale: float = 1.0
    top_k: int = 4
    groups: int = 16
    wrong: int = 3
    readings: int = 32
    train: CLIPTrainConfig = CLIPTrainConfig(steps=2000, batch_size=32, lr=1e-3, hard_negatives=0, ckpt_every=250)

    @classmethod
    def from_dict(cls, d: dict | None) -> CLIPTuneConfig:
        """Its own keys, plus any ``CLIPTrainConfig`` key for ``train``."""
        d = dict(d or {})
        own = {f.name for f in fields(cls)} - {"train"}
        train = {f.name: getattr(cls.train, f.name) for f in fields(CLIPTrainConfig)}
        train.update({k: v for k, v in d.items() if k not in own})
        return cls(**{k: v for k, v in d.items() if k in own}, train=CLIPTrainConfig.from_dict(train))


def mine_samples(generator, scenes, samples: int, settings, rng: np.random.Generator, seed: int = 0, batch: int = 16):
    """DalleBart's samples of one fresh caption per scene, checked against the scene.

    Returns (uint8 images [M, samples, H, W, 3], bool right [M, samples], bool held-out look
    [M, samples] (``shapes.shows_heldout``)); logs its progress.
    """
    from dalle_core.train import shapes

    captions = [shapes.caption(sc, rng) for sc in scenes]
    images, right, heldout = [], [], []
    for start in range(0, len(scenes), batch):
        chunk = captions[start : start + batch]
        texts = chunk + [chunk[-1]] * (batch - len(chunk))  # one batch shape, one compilation
        decoded = generator.decode(generator.sample_tokens(texts, samples, seed + start, settings)[: len(chunk)])
        for scene, row in zip(scenes[start : start + batch], decoded, strict=True):
            seen = [shapes.objects_in(x) for x in row]
            right.append([all(shapes.check(x, scene, objs).values()) for x, objs in zip(row, seen, strict=True)])
            heldout.append([shapes.shows_heldout(x, objs) for x, objs in zip(row, seen, strict=True)])
        images.append(decoded)
        if (start // batch) % 25 == 0 or start + batch >= len(scenes):
            log.info("clip_tune: sampled %d/%d scenes, %.1f%% right", min(start + batch, len(scenes)), len(scenes),
                     100 * np.mean(right))
    return np.concatenate(images), np.asarray(right, bool), np.asarray(heldout, bool)


def shapes_mined_fn(scenes, images: np.ndarray, right: np.ndarray, wrong_ones: np.ndarray, readings, groups: int,
                    wrong: int, n_readings: int):
    """extra_fn for ``train_clip`` from mined samples: ``scenes[j]`` was sampled into ``images[j]``
    (uint8 [M, S, H, W, 3]); ``right[j]`` and ``wrong_ones[j]`` (bool [M, S]) mark the samples to use
    as right and as wrong (a sample may be neither); ``readings`` are (image, scene) pairs, wrong
    samples with what they show. See ``CLIPTuneConfig``."""
    from dalle_core.train import shapes

    usable = np.flatnonzero(right.any(1) & wrong_ones.any(1))
    if len(usable) < groups or len(readings) < n_readings:
        raise ValueError(f"too few mined samples: {len(usable)} scenes with a right and a wrong sample (need "
                         f"{groups}), {len(readings)} readable wrong samples (need {n_readings})")

    def fn(rng):
        paired, captions, negatives = [], [], []
        for j in rng.choice(usable, size=groups, replace=False):
            paired.append(images[j, rng.choice(np.flatnonzero(right[j]))])
            captions.append(shapes.caption(scenes[j], rng))
            negatives.extend(images[j, rng.choice(np.flatnonzero(wrong_ones[j]), size=wrong)])
        for r in rng.choice(len(readings), size=n_readings, replace=False):
            paired.append(readings[r][0])
            captions.append(shapes.caption(readings[r][1], rng))
        return np.stack(paired), captions, np.stack(negatives) if negatives else np.zeros((0,) + images.shape[2:], np.uint8)

    return fn


def tune_embedded_clip(out: Path, ecfg, resume: bool = True) -> Path:
    """The ``clip_tune`` stage of ``train_embedded``: ``out/model/clip`` fine-tuned on the run's
    DalleBart samples of training captions (``CLIPTuneConfig``), in place."""
    import json

    from dalle_core.checkpoints.clip import load_clip, save_clip
    from dalle_core.generator import Generator
    from dalle_core.rank import load_clip_tokenizer
    from dalle_core.train import shapes
    from dalle_core.train.run_data import load_data
    from dalle_core.types import SamplingSettings

    folder, run_dir = out / "model" / "clip", out / "clip_tune_run"
    done = run_dir / "tuned.json"
    ucfg = CLIPTuneConfig.from_dict(ecfg.clip_tune)
    if ucfg.train.steps and ecfg.domain != "shapes":
        raise ValueError(f"clip_tune reads samples with the shapes checker; set clip_tune.steps: 0 for the {ecfg.domain} domain")
    if ucfg.train.steps == 0 or (resume and done.exists()):
        log.info("clip_tune: %s", "already done" if done.exists() else "skipped (steps: 0)")
        return folder
    for part in ("dalle", "vqgan", "clip"):
        if not (out / "model" / part / "config.json").exists():
            raise FileNotFoundError(f"clip_tune needs the run's {part} in {out / 'model' / part}: run its stage first")
    run_dir.mkdir(parents=True, exist_ok=True)
    train = load_data(out, "train", ecfg)
    rng = np.random.default_rng([ucfg.train.seed, 5])
    chosen = rng.choice(len(train.scenes), size=min(ucfg.scenes, len(train.scenes)), replace=False)
    scenes = [train.scenes[i] for i in chosen]
    mined = run_dir / "mined.npz"
    if resume and mined.exists():
        with np.load(mined) as z:
            images, right, heldout = z["images"], z["right"], z["heldout"]
        log.info("clip_tune: %d mined samples from %s", right.size, mined)
    else:
        settings = SamplingSettings(condition_scale=ucfg.condition_scale, top_k=ucfg.top_k, top_p=None, temperature=1.0)
        images, right, heldout = mine_samples(Generator.from_folder(out / "model"), scenes, ucfg.samples, settings,
                                              rng, seed=ucfg.train.seed)
        np.savez_compressed(mined, images=images, right=right, heldout=heldout)
    # a sample that looks like a held-out combination is not used at all: training never shows one
    use_right, use_wrong = right & ~heldout, ~right & ~heldout
    readings = [(images[j, k], sc) for j, k in zip(*np.nonzero(use_wrong), strict=True)
                if (sc := shapes.read_scene(images[j, k], rng)) is not None]
    log.info("clip_tune: %d samples, %.1f%% right, %d look held-out (left out); %d wrong ones read as a training scene",
             right.size, 100 * right.mean(), int(heldout.sum()), len(readings))
    # the clip stage's weights, kept: the result replaces them in model/clip, and a rerun without
    # resume must start from them again, not from its own result
    base_dir = run_dir / "clip_stage"
    if not (base_dir / "config.json").exists():
        save_clip(base_dir, *load_clip(folder))
    cfg, base = load_clip(base_dir)
    tokenizer = load_clip_tokenizer(folder, cfg.text.max_position_embeddings)
    extra = shapes_mined_fn(scenes, images, use_right, use_wrong, readings, ucfg.groups, ucfg.wrong, ucfg.readings)
    params = train_clip(cfg, train.images, shapes_caption_fn(train.scenes), tokenizer, run_dir, ucfg.train,
                        resume=resume, init_params=base, extra_fn=extra)
    save_clip(folder, cfg, params)
    done.write_text(json.dumps({"samples": int(right.size), "right": round(float(right.mean()), 4),
                                "heldout_looks": int(heldout.sum()), "readings": len(readings)}, indent=2) + "\n")
    return folder


def train_embedded_clip(out: Path, ecfg, variant, resume: bool = True) -> Path:
    """The ``clip`` stage of ``train_embedded``: renders + captions → ``out/model/clip``."""
    import shutil

    from dalle_core.checkpoints.clip import save_clip
    from dalle_core.rank import load_clip_tokenizer
    from dalle_core.train.run_data import domain_of, load_data

    folder = out / "model" / "clip"
    domain = domain_of(out, ecfg)
    if resume and (folder / "model.safetensors").exists():
        log.info("clip: already exported")
        return folder
    cfg = variant.clip
    tokenizer = load_clip_tokenizer(out / "tokenizer" / "clip", cfg.text.max_position_embeddings)
    train = load_data(out, "train", ecfg)
    tcfg = CLIPTrainConfig.from_dict(ecfg.clip)
    images, scenes = train.images, list(train.scenes)
    counterparts, cp_images, broken = None, None, None
    if tcfg.broken_negatives and not tcfg.reconstructions:
        raise ValueError("clip.broken_negatives needs clip.reconstructions (the VQGAN that breaks the tokens)")
    if tcfg.image_negatives:
        rng = np.random.default_rng([tcfg.seed, 3])
        counterparts = [[domain.counterpart(sc, rng) for _ in range(tcfg.image_negatives)] for sc in scenes]
        cp_images = np.stack([domain.render(c) for row in counterparts for c in row])
        log.info("clip: rendered %d counterpart scenes (image negatives)", len(cp_images))
    if tcfg.reconstructions:
        from dalle_core.checkpoints.vqgan import load_vqgan
        from dalle_core.train.vqgan import decode_codes, encode_images

        vq_folder = out / "model" / "vqgan"
        if not (vq_folder / "config.json").exists():
            raise FileNotFoundError(f"clip.reconstructions needs the trained VQGAN in {vq_folder}: run the vqgan stage first")
        vq_cfg, vq_params = load_vqgan(vq_folder)

        def reconstruct(x):
            return decode_codes(vq_cfg, vq_params, encode_images(vq_cfg, vq_params, x))

        log.info("clip: reconstructing %d training images with %s", len(images), vq_folder)
        codes = encode_images(vq_cfg, vq_params, images)
        if tcfg.broken_negatives:
            rng = np.random.default_rng([tcfg.seed, 4])
            broken = np.concatenate([decode_codes(vq_cfg, vq_params, break_codes(codes, rng)) for _ in range(2)])
            log.info("clip: %d broken reconstructions (negative images)", len(broken))
        images = np.concatenate([images, decode_codes(vq_cfg, vq_params, codes)])
        scenes = scenes + scenes
        if counterparts is not None:
            cp_images = np.concatenate([cp_images, reconstruct(cp_images)])
            counterparts = counterparts + counterparts
    cp_fn = None
    if counterparts is not None:
        cp_fn = shapes_counterpart_fn(counterparts, cp_images.reshape((len(counterparts), tcfg.image_negatives) + cp_images.shape[1:]),
                                      domain)
    params = train_clip(cfg, images, shapes_caption_fn(scenes, domain), tokenizer, out / "clip_run", tcfg, resume=resume,
                        counterpart_fn=cp_fn, broken=broken)
    save_clip(folder, cfg, params)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(out / "tokenizer" / "clip" / name, folder / name)
    return folder
