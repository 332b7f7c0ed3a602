"""Training code on tiny configs: losses go down, runs resume exactly, fine-tuning handles bad data."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from dalle_core.config import BartConfig, CLIPConfig, CLIPTextConfig, CLIPVisionConfig, VQGANConfig
from dalle_core.train import shapes as S

BART = BartConfig(
    d_model=32, encoder_layers=2, decoder_layers=2, attention_heads=2, glu_dim=64,
    text_vocab_size=512, image_vocab_size=16, max_text_length=32, image_length=16,
)
VQ = VQGANConfig(
    ch=8, ch_mult=(1, 2, 2), num_res_blocks=0, attn_resolutions=(), resolution=16, z_channels=8,
    embed_dim=8, n_embed=16, num_groups=4,
)


@pytest.fixture(scope="module")
def data():
    return S.make_dataset(48, seed=5)


@pytest.fixture(scope="module")
def tokenizer(data):
    from dalle_core.text import TextTokenizer, normalize_text
    from dalle_core.train.tokenizer import train_bart_tokenizer

    return TextTokenizer(train_bart_tokenizer(data.captions * 3, 512, normalize=normalize_text), max_length=32)


def _small_images(images: np.ndarray, res: int = 16) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((res, res), Image.NEAREST)) for im in images])


def _bart_data(data, tokenizer):
    from dalle_core.train.bart import tokenize_captions, unconditional_row

    ids, mask = tokenize_captions(tokenizer, data.captions)
    # a learnable target: image tokens determined by the first object's colour and shape
    key = np.array([S.COLOURS.index(sc.objects[0].colour) * 3 + S.SHAPES.index(sc.objects[0].shape) for sc in data.scenes])
    codes = ((key[:, None] + np.arange(16)[None]) % 16).astype(np.int32)
    return codes, ids, mask, unconditional_row(tokenizer)


def test_bart_steps_lower_the_loss_and_resume_exactly(tmp_path, data, tokenizer, monkeypatch):
    from dalle_core.models.bart import DalleBart
    from dalle_core.train import loop
    from dalle_core.train.bart import BartTrainConfig, eval_loss, train_bart

    codes, ids, mask, uncond = _bart_data(data, tokenizer)
    tcfg = BartTrainConfig(steps=6, batch_size=16, lr=3e-3, warmup=1, ckpt_every=2, log_every=1)
    full = train_bart(BART, codes, ids, mask, uncond, tmp_path / "full", tcfg)
    logged = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    from dalle_core.models.bart import init_params

    model = DalleBart(BART)
    before = eval_loss(model, init_params(BART, jax.random.PRNGKey(0)), ids, mask, codes)
    assert eval_loss(model, full, ids, mask, codes) < before - 0.1

    # interrupt after step 5 (checkpoint at 4), then resume: same result as the uninterrupted run
    real_update = loop.Progress.update

    def crash(self, step, metrics):
        if step == 5:
            raise KeyboardInterrupt
        real_update(self, step, metrics)

    monkeypatch.setattr(loop.Progress, "update", crash)
    with pytest.raises(KeyboardInterrupt):
        train_bart(BART, codes, ids, mask, uncond, tmp_path / "resumed", tcfg)
    monkeypatch.setattr(loop.Progress, "update", real_update)
    resumed = train_bart(BART, codes, ids, mask, uncond, tmp_path / "resumed", tcfg)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # 5 and 6 come from the resumed run
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_bart_warm_restart_continues_a_finished_run(tmp_path, data, tokenizer):
    """steps=6, restarts=(3,): the first 3 steps are a plain 3-step run; a finished 3-step run's
    weights, handed in as the step-3 state, continue to exactly the same result (how a copy
    trained in two goes is reproduced by one preset run)."""
    from dalle_core.models.bart import init_params
    from dalle_core.train.bart import BartTrainConfig, _compiled, train_bart
    from dalle_core.train.loop import save_state

    codes, ids, mask, uncond = _bart_data(data, tokenizer)
    base = dict(batch_size=16, lr=3e-3, warmup=1, ckpt_every=100, log_every=1)
    first = train_bart(BART, codes, ids, mask, uncond, tmp_path / "first", BartTrainConfig(steps=3, **base))
    tcfg = BartTrainConfig(steps=6, restarts=[3], **base)
    assert tcfg.restarts == (3,) and [(a, c.steps) for a, c in tcfg.cycles()] == [(0, 3), (3, 3)]
    full = train_bart(BART, codes, ids, mask, uncond, tmp_path / "full", tcfg)
    # the continuation: the finished run's weights with an optimiser state the restart replaces
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), first)
    stale = _compiled(BART, BartTrainConfig(steps=3, **base), shapes)[0].init(init_params(BART, jax.random.PRNGKey(5)))
    save_state(tmp_path / "two", {"params": first, "opt_state": stale, "step": 3})
    two = train_bart(BART, codes, ids, mask, uncond, tmp_path / "two", tcfg)
    plain = train_bart(BART, codes, ids, mask, uncond, tmp_path / "plain", BartTrainConfig(steps=6, **base))
    diff = 0.0
    for a, b, c in zip(*(jax.tree_util.tree_leaves(t) for t in (full, two, plain)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        diff = max(diff, float(np.abs(np.asarray(a) - np.asarray(c)).max()))
    assert diff > 1e-4  # the restart changed the schedule and the optimiser: not a plain 6-step run
    for bad in ([6], [0], [4, 2], [3, 3]):
        with pytest.raises(ValueError, match="restarts"):
            BartTrainConfig(steps=6, restarts=bad)


def test_vqgan_steps_lower_the_loss_and_resume(tmp_path, data, monkeypatch):
    from dalle_core.models.vqgan import init_vqgan_params, vqgan_param_shapes
    from dalle_core.train import loop
    from dalle_core.train.vqgan import VQGANTrainConfig, decode_codes, encode_images, train_vqgan

    images = _small_images(data.images)
    tcfg = VQGANTrainConfig(steps=10, batch_size=8, lr=3e-3, warmup=1, crop=8, full_res_fraction=0.0,
                            restart_every=2, ckpt_every=4, log_every=1)
    real_update = loop.Progress.update

    def crash(self, step, metrics):
        if step == 6:
            raise KeyboardInterrupt
        real_update(self, step, metrics)

    monkeypatch.setattr(loop.Progress, "update", crash)
    with pytest.raises(KeyboardInterrupt):
        train_vqgan(VQ, images, tmp_path / "vq", tcfg)
    monkeypatch.setattr(loop.Progress, "update", real_update)
    params = train_vqgan(VQ, images, tmp_path / "vq", tcfg)  # resumes at step 4
    logged = [json.loads(line) for line in (tmp_path / "vq" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10]
    # judged on fixed images: reconstruction error before and after (one step's crops against another's is noise)
    start = init_vqgan_params(VQ, jax.random.PRNGKey(tcfg.seed))

    def recon_l1(p):
        return float(np.abs(decode_codes(VQ, p, encode_images(VQ, p, images)) / 255.0 - images / 255.0).mean())

    assert recon_l1(params) < recon_l1(start) - 0.05, (recon_l1(start), recon_l1(params))
    codes = encode_images(VQ, params, images)
    assert codes.shape == (48, VQ.grid_size**2) and codes.dtype == np.int32
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(vqgan_param_shapes(VQ))


def test_vqgan_decoder_only_keeps_the_codes(tmp_path, data):
    from dalle_core.models.vqgan import init_vqgan_params
    from dalle_core.train.vqgan import VQGANTrainConfig, train_vqgan

    start = init_vqgan_params(VQ, jax.random.PRNGKey(2))
    tcfg = VQGANTrainConfig(steps=2, batch_size=4, warmup=1, decoder_only=True)
    new = train_vqgan(VQ, _small_images(data.images), tmp_path / "dec", tcfg, init_params=start)
    leaves = jax.tree_util.tree_leaves
    for part in ("encoder", "quantize", "quant_conv"):
        assert all(np.array_equal(a, b) for a, b in zip(leaves(start[part]), leaves(new[part]), strict=True)), part
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(start["decoder"]), leaves(new["decoder"]), strict=True))
    with pytest.raises(ValueError, match="init_params"):
        train_vqgan(VQ, _small_images(data.images), tmp_path / "dec2", tcfg)


def test_kmeans_codebook_covers_every_cluster():
    from dalle_core.train.vqgan import kmeans_codebook

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # a background-heavy sample: one cluster has 50x the points of the others
    z = np.concatenate([centres[0] + rng.normal(0, 0.1, (500, 2)), centres[1] + rng.normal(0, 0.1, (10, 2)),
                        centres[2] + rng.normal(0, 0.1, (10, 2))])
    book = kmeans_codebook(z, 3, rng)
    nearest = np.sqrt(((centres[:, None] - book[None]) ** 2).sum(-1)).min(1)
    assert (nearest < 0.5).all()


def test_dead_code_restart_moves_only_unused_codes():
    from dalle_core.train.vqgan import restart_dead_codes

    book = np.zeros((4, 2), np.float32)
    z = np.array([[5.0, 5.0]] * 10, np.float32)
    new, moved = restart_dead_codes(book, np.array([100.0, 0.0, 50.0, 0.0]), z, np.random.default_rng(0))
    assert moved == 2
    np.testing.assert_array_equal(new[[0, 2]], 0.0)
    np.testing.assert_allclose(new[[1, 3]], 5.0, atol=1e-2)


def _tiny_clip(vocab: int, width: int, max_len: int) -> CLIPConfig:
    """A one-layer CLIP on 16-pixel images."""
    return CLIPConfig(
        text=CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=max_len, eos_token_id=2),
        vision=CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=width, intermediate_size=2 * width,
                                num_hidden_layers=1, num_attention_heads=2),
        projection_dim=width // 2,
    )


def test_clip_steps_lower_the_loss(tmp_path, data):
    from dalle_core.models.clip import init_clip_params
    from dalle_core.rank import ClipTokenizer
    from dalle_core.train.clip import (
        CLIPTrainConfig,
        clip_loss,
        shapes_caption_fn,
        shapes_counterpart_fn,
        train_clip,
    )
    from dalle_core.train.tokenizer import train_clip_tokenizer

    cfg = _tiny_clip(vocab=600, width=32, max_len=24)
    tok = ClipTokenizer(train_clip_tokenizer(data.captions * 3, 600), 24)
    images = _small_images(data.images)
    # judged by the loss on one fixed batch before and after (one step's loss against another's is noise)
    ids, mask = tok(data.captions[:16])

    def fixed_loss(params):
        return float(clip_loss(params, cfg, ids, mask, images[:16])[0])

    before = fixed_loss(init_clip_params(cfg, jax.random.PRNGKey(0)))
    tcfg = CLIPTrainConfig(steps=8, batch_size=16, lr=3e-3, warmup=1, log_every=1, ckpt_every=8)
    params = train_clip(cfg, images, shapes_caption_fn(data.scenes), tok, tmp_path / "clip", tcfg)
    caps, negs = shapes_caption_fn(data.scenes)(np.arange(4), np.random.default_rng(0), 3)
    assert len(caps) == 4 and len(negs) == 12
    logged = [json.loads(line) for line in (tmp_path / "clip" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 9))
    assert fixed_loss(params) < before - 0.3, (before, fixed_loss(params))

    # image negatives: each image brings renders of changed scenes, with their captions, into the batch
    rng = np.random.default_rng(1)
    counterparts = [[S.counterpart(sc, rng) for _ in range(2)] for sc in data.scenes]
    cp_images = _small_images(np.stack([S.render(c) for row in counterparts for c in row]))
    cp_fn = shapes_counterpart_fn(counterparts, cp_images.reshape((len(data.scenes), 2) + cp_images.shape[1:]))
    extra, extra_caps = cp_fn(np.array([3, 5]), rng)
    assert extra.shape == (4, 16, 16, 3) and len(extra_caps) == 4
    np.testing.assert_array_equal(extra[2], cp_images[10])  # image 5's first counterpart
    for cap, scene in zip(extra_caps, [counterparts[i][j] for i in (3, 5) for j in range(2)], strict=True):  # in the images' order
        for o in scene.objects:
            assert any(w in cap for w in S._COLOUR_WORDS[o.colour]) and any(w in cap for w in S._SHAPE_WORDS[o.shape]), cap
    tcfg = dataclasses.replace(tcfg, image_negatives=2, hard_negatives=0)
    with pytest.raises(ValueError, match="counterpart_fn"):
        train_clip(cfg, images, shapes_caption_fn(data.scenes), tok, tmp_path / "clip_neg", tcfg)
    params = train_clip(cfg, images, shapes_caption_fn(data.scenes), tok, tmp_path / "clip_neg", tcfg, counterpart_fn=cp_fn)
    assert fixed_loss(params) < before - 0.3, (before, fixed_loss(params))

    # broken negatives: one more image per image, which no caption matches
    tcfg = dataclasses.replace(tcfg, broken_negatives=True)
    with pytest.raises(ValueError, match="broken version"):
        train_clip(cfg, images, shapes_caption_fn(data.scenes), tok, tmp_path / "clip_broken", tcfg, counterpart_fn=cp_fn)
    broken = images[::-1].copy()
    params = train_clip(cfg, images, shapes_caption_fn(data.scenes), tok, tmp_path / "clip_broken", tcfg,
                        counterpart_fn=cp_fn, broken=broken)
    assert fixed_loss(params) < before - 0.3, (before, fixed_loss(params))


def test_clip_loss_counts_images_beyond_the_pairs_as_negatives_for_the_texts():
    """Images past ``pairs`` have no caption: they enter only the text → image softmax."""
    import jax.numpy as jnp

    from dalle_core.models.clip import init_clip_params
    from dalle_core.train.clip import clip_loss

    cfg = _tiny_clip(vocab=64, width=16, max_len=8)
    params = init_clip_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, 64, size=(3, 8)), jnp.int32)
    mask = jnp.ones_like(ids)
    images = jnp.asarray(rng.integers(0, 256, size=(4, 16, 16, 3)), jnp.uint8)
    base, _ = clip_loss(params, cfg, ids, mask, images[:3])
    same, _ = clip_loss(params, cfg, ids, mask, images[:3], pairs=3)
    more, metrics = clip_loss(params, cfg, ids, mask, images, pairs=3)
    assert float(base) == pytest.approx(float(same))
    assert float(more) > float(base)  # one more competitor for every text
    assert 0.0 <= float(metrics["acc"]) <= 1.0


def test_mined_samples_pair_right_ones_with_their_caption_and_add_wrong_ones_as_negatives(tmp_path, data):
    """The clip_tune batches: a right sample with its scene's caption, wrong samples of the same scene
    as captionless negatives, wrong samples read by the checker with the reading's caption; and
    train_clip starts from the given weights."""
    from dalle_core.models.clip import init_clip_params
    from dalle_core.rank import ClipTokenizer
    from dalle_core.train.clip import (
        CLIPTrainConfig,
        clip_loss,
        shapes_caption_fn,
        shapes_mined_fn,
        train_clip,
    )
    from dalle_core.train.tokenizer import train_clip_tokenizer

    scenes = data.scenes[:6]
    images = np.stack([np.stack([S.render(sc), S.render(S.counterpart(sc, np.random.default_rng(i)))]) for i, sc in enumerate(scenes)])
    right = np.array([[True, False]] * 5 + [[True, True]])  # the last scene has no wrong sample
    rng = np.random.default_rng(0)
    readings = [(images[j, 1], r) for j in range(5) if (r := S.read_scene(images[j, 1], rng)) is not None]
    assert len(readings) >= 2
    fn = shapes_mined_fn(scenes, images, right, ~right, readings, groups=3, wrong=2, n_readings=2)
    paired, caps, negatives = fn(np.random.default_rng(1))
    assert paired.shape == (5, 64, 64, 3) and len(caps) == 5 and negatives.shape == (6, 64, 64, 3)
    for img, cap in zip(paired[:3], caps[:3], strict=True):  # right samples: the scene's own render and words
        j = next(j for j in range(5) if (images[j, 0] == img).all())
        assert all(any(w in cap for w in S._COLOUR_WORDS[o.colour]) for o in scenes[j].objects), cap
        assert any((negatives == images[j, 1]).all(axis=(1, 2, 3)))  # its wrong sample is in the batch
    for img, cap in zip(paired[3:], caps[3:], strict=True):  # readings: a wrong sample, described
        read = next(r[1] for r in readings if (img == r[0]).all())
        assert all(any(w in cap for w in S._SHAPE_WORDS[o.shape]) for o in read.objects), cap
    with pytest.raises(ValueError, match="too few mined samples"):
        shapes_mined_fn(scenes, images, right, ~right, readings, groups=6, wrong=1, n_readings=1)

    cfg = _tiny_clip(vocab=600, width=32, max_len=24)
    tok = ClipTokenizer(train_clip_tokenizer(data.captions * 3, 600), 24)
    small = _small_images(images.reshape((-1, 64, 64, 3))).reshape(images.shape[:2] + (16, 16, 3))
    readings = [(_small_images(r[0][None])[0], r[1]) for r in readings]
    base = init_clip_params(cfg, jax.random.PRNGKey(7))
    tcfg = CLIPTrainConfig(steps=12, batch_size=8, lr=3e-3, warmup=1, log_every=1, ckpt_every=12, hard_negatives=0)
    tuned = train_clip(cfg, _small_images(data.images), shapes_caption_fn(data.scenes), tok, tmp_path / "tune", tcfg,
                       init_params=base, extra_fn=shapes_mined_fn(scenes, small, right, ~right, readings, 3, 2, 2))
    # the renders' contrastive task improves: the loss on a fixed batch (one step's loss is noisy)
    ids, mask = tok(data.captions[:16])
    fixed = _small_images(data.images[:16])
    before, after = (float(clip_loss(p, cfg, ids, mask, fixed)[0]) for p in (base, tuned))
    assert after < before - 0.05, (before, after)
    fresh = train_clip(cfg, _small_images(data.images), shapes_caption_fn(data.scenes), tok, tmp_path / "t0",
                       dataclasses.replace(tcfg, steps=0), init_params=base)
    flat = [jax.tree_util.tree_leaves(p) for p in (base, fresh, tuned)]
    assert all(np.array_equal(a, b) for a, b in zip(flat[0], flat[1], strict=True))  # no steps: the given weights
    assert not all(np.array_equal(a, b) for a, b in zip(flat[0], flat[2], strict=True))


def test_break_codes_changes_tokens_at_the_shapes_only():
    from dalle_core.train.clip import break_codes

    codes = np.full((3, 64), 7)
    codes[0, [9, 10, 17, 18]] = [1, 2, 3, 4]  # a 2x2-token shape
    codes[1, 63] = 5  # one token in the corner
    codes[2, 30:34] = 6
    for seed in range(5):
        broken = break_codes(codes, np.random.default_rng(seed))
        changed = broken != codes
        assert changed.any(axis=1).all()  # every grid is broken
        near = {0: {1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26}, 1: {55, 62, 63}, 2: set(range(22, 26)) | set(range(29, 35)) | set(range(38, 42))}
        for i in range(3):
            assert set(np.flatnonzero(changed[i])) <= near[i]
    with pytest.raises(ValueError, match="square"):
        break_codes(np.zeros((1, 10), int), np.random.default_rng(0))


# ----------------------------------------------------------------------------------- fine-tuning


def _write_pairs(folder, data, count):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(data.images[i]).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(data.captions[i])


def test_finetune_data_problems_are_reported_per_file(tmp_path, data):
    from dalle_core.train.finetune import FinetuneDataError, collect_pairs

    folder = tmp_path / "pairs"
    _write_pairs(folder, data, 3)
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "broken.txt").write_text("a red circle")
    (folder / "img_nocap.png").write_bytes((folder / "img0.png").read_bytes())
    (folder / "blank.png").write_bytes((folder / "img0.png").read_bytes())
    (folder / "blank.txt").write_text("   \n")
    (folder / "notes.md").write_text("ignored: not an image")
    pairs = collect_pairs(folder, 16)
    assert pairs.images.shape == (3, 16, 16, 3) and len(pairs.captions) == 3
    reasons = dict(pairs.skipped)
    assert set(reasons) == {"broken.png", "img_nocap.png", "blank.png"}
    assert "unreadable image" in reasons["broken.png"]
    assert "caption" in reasons["img_nocap.png"] and "caption" in reasons["blank.png"]

    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        json.dumps({"image": "pairs/img0.png", "caption": "a red circle"}) + "\n"
        + "{not json\n"
        + json.dumps({"image": "pairs/missing.png", "caption": "x"}) + "\n"
        + json.dumps({"caption": "no image"}) + "\n"
    )
    pairs = collect_pairs(jsonl, 16)
    assert len(pairs.captions) == 1
    reasons = dict(pairs.skipped)
    assert any("JSON" in r for r in reasons.values())
    assert reasons["pairs/missing.png"] == "image file not found"
    assert any("no 'image'" in r for r in reasons.values())

    (tmp_path / "empty").mkdir()
    with pytest.raises(FinetuneDataError, match="no images"):
        collect_pairs(tmp_path / "empty", 16)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"garbage")
    (only_bad / "x.txt").write_text("a blue square")
    with pytest.raises(FinetuneDataError, match="no usable"):
        collect_pairs(only_bad, 16)
    with pytest.raises(FinetuneDataError, match="does not exist"):
        collect_pairs(tmp_path / "nowhere", 16)


def test_finetune_lowers_loss_on_new_pairs(tmp_path, data, tokenizer):
    from dalle_core.checkpoints.bart import save_dalle_bart
    from dalle_core.checkpoints.vqgan import save_vqgan
    from dalle_core.models.bart import init_params
    from dalle_core.models.vqgan import init_vqgan_params
    from dalle_core.train.finetune import finetune

    base = tmp_path / "base"
    save_vqgan(base / "vqgan", VQ, init_vqgan_params(VQ, jax.random.PRNGKey(0)))
    save_dalle_bart(base / "dalle", BART, init_params(BART, jax.random.PRNGKey(0)), tokenizer=tokenizer)
    _write_pairs(tmp_path / "new", data, 8)
    report = finetune(tmp_path / "new", base, tmp_path / "out", freeze_layers=1, steps=12, batch_size=8, lr=1e-2, warmup=1)
    assert report["pairs"] == 8 and report["skipped"] == []
    assert report["loss_after"] < report["loss_before"] - 0.2
    # freeze_layers=1: embeddings and layer 0 of both stacks unchanged, the rest trained
    from dalle_core.checkpoints.bart import load_dalle_bart

    _, old = load_dalle_bart(base / "dalle")
    _, new = load_dalle_bart(tmp_path / "out" / "dalle")
    for stack in ("encoder", "decoder"):
        np.testing.assert_array_equal(old["model"][stack]["embed_tokens"]["embedding"],
                                      new["model"][stack]["embed_tokens"]["embedding"])
        pairs = list(zip(jax.tree_util.tree_leaves(old["model"][stack]["layers"]),
                         jax.tree_util.tree_leaves(new["model"][stack]["layers"]), strict=True))
        assert all(np.array_equal(np.asarray(a)[0], np.asarray(b)[0]) for a, b in pairs)
        assert any(not np.array_equal(np.asarray(a)[1], np.asarray(b)[1]) for a, b in pairs)
    assert not np.array_equal(old["lm_head"]["kernel"], new["lm_head"]["kernel"])
    assert (tmp_path / "out" / "dalle" / "flax_model.msgpack").exists()
    assert (tmp_path / "out" / "vqgan" / "config.json").exists()
    assert json.loads((tmp_path / "out" / "finetune_report.json").read_text())["pairs"] == 8
    with pytest.raises(ValueError, match="freeze_layers"):
        finetune(tmp_path / "new", base, tmp_path / "out2", freeze_layers=5, steps=1)


def test_edge_mask_marks_the_outline_of_a_shape():
    from dalle_core.train.vqgan import edge_mask

    sc = S.Scene((S.Obj("red", "square", 32.0, 32.0, 20),))
    img = S.render(sc).astype(np.float32)[None] / 255.0
    edge = np.asarray(edge_mask(img))[0, :, :, 0]
    ink = img[0].min(-1) < 0.6
    # every marked pixel touches the square's border: inside and outside interiors stay unmarked
    assert edge[32, 32] == 0 and edge[2, 2] == 0
    ys, xs = np.nonzero(ink)
    assert edge[ys.min(), 32] == 1 and edge[ys.min() - 1, 32] == 1 and edge[ys.min() + 2, 32] == 0
    side = int(np.sqrt(ink.sum()))  # 20: rings one pixel inside and one outside the border
    assert edge.sum() == ((side + 2) ** 2 - side**2) + (side**2 - (side - 2) ** 2)


def test_decode_codes_decodes_repeated_rows_once_and_keeps_the_order():
    from dalle_core.models.vqgan import init_vqgan_params
    from dalle_core.train.vqgan import decode_codes

    params = init_vqgan_params(VQ, jax.random.PRNGKey(4))
    rows = np.random.default_rng(0).integers(VQ.n_embed, size=(3, VQ.grid_size**2))
    codes = rows[[2, 0, 2, 1, 0]]
    one_by_one = np.concatenate([decode_codes(VQ, params, r[None]) for r in codes])
    np.testing.assert_array_equal(decode_codes(VQ, params, codes), one_by_one)
    assert not np.array_equal(one_by_one[0], one_by_one[1])


def test_embedded_presets_load_and_the_shipped_one_matches_the_defaults():
    from pathlib import Path

    from dalle_core.train.bart import BartTrainConfig
    from dalle_core.train.clip import CLIPTrainConfig, CLIPTuneConfig
    from dalle_core.train.embedded import EmbeddedConfig, load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    shipped, default = load_config(configs / "embedded.yaml"), EmbeddedConfig()
    # the preset and the code's defaults train the same model (checkpoint cadence aside)
    blank = {"bart": {}, "clip": {}, "clip_tune": {}}
    assert dataclasses.replace(shipped, **blank) == dataclasses.replace(default, **blank)
    for name, cls in (("bart", BartTrainConfig), ("clip", CLIPTrainConfig)):
        a, b = (dataclasses.replace(cls.from_dict(getattr(c, name)), ckpt_every=0) for c in (shipped, default))
        assert a == b, name
    a, b = (CLIPTuneConfig.from_dict(c.clip_tune) for c in (shipped, default))
    assert dataclasses.replace(a, train=dataclasses.replace(a.train, ckpt_every=0)) == dataclasses.replace(
        b, train=dataclasses.replace(b.train, ckpt_every=0))
    assert a.train.steps > 0 and a.train.hard_negatives == 0
    # both VQGAN stages weigh colour edges and recolour (the decoder stage unlearns held-out objects without it)
    assert (shipped.vqgan.edge_weight, shipped.vqgan.recolour) == (8.0, 0.5)
    assert (shipped.vqgan_decoder.edge_weight, shipped.vqgan_decoder.recolour) == (8.0, 0.5)
    assert shipped.vqgan_decoder.decoder_only and not shipped.vqgan.decoder_only
    # jittered renders, and a VQGAN stage long enough to tokenize them (small objects)
    assert (shipped.jitter, shipped.vqgan.steps) == (3, 4500)
    # CLIP learns to rank: renders of changed scenes and broken reconstructions in every batch
    clip = CLIPTrainConfig.from_dict(shipped.clip)
    assert (clip.image_negatives, clip.broken_negatives, clip.reconstructions) == (3, True, True)
    with pytest.raises(ValueError, match="unknown embedded-training key"):
        load_config(None, vqgan_steps=3)


def test_reconstruction_report_breaks_single_objects_down_by_size_and_shape(data):
    from dalle_core.models.vqgan import init_vqgan_params
    from dalle_core.train.vqgan import reconstruction_report

    params = init_vqgan_params(VQ, jax.random.PRNGKey(5))
    # the checker at the VQGAN's 16 px: render the scenes at that size
    images = np.stack([S.render(sc, size=VQ.resolution) for sc in data.scenes])
    report = reconstruction_report(VQ, params, images, data.scenes)
    singles = [sc for sc in data.scenes if sc.kind == "single"]
    assert sum(v["count"] for v in report["singles"].values()) == len(singles)
    assert set(report["singles"]) == {f"{sc.size or 'medium'} {sc.objects[0].shape}" for sc in singles}
    assert 0.0 <= report["colour_shape"] <= 1.0 and report["l1"] > 0.0
    # an untrained VQGAN draws none of them
    assert all(v["pass"] == 0.0 for v in report["singles"].values())


def test_snapshot_of_a_run_in_progress_loads_and_generates(tmp_path):
    """--snapshot turns a run's latest DalleBart checkpoint into a model folder the evaluation loads."""
    from pathlib import Path

    from dalle_core.checkpoints.vqgan import save_vqgan
    from dalle_core.config import get_variant
    from dalle_core.generator import Generator
    from dalle_core.models.bart import init_params
    from dalle_core.models.vqgan import init_vqgan_params
    from dalle_core.text import TextTokenizer
    from dalle_core.train.embedded import snapshot
    from dalle_core.train.loop import save_state

    tiny = get_variant("tiny")
    embedded = Path(__file__).resolve().parents[1] / "dalle_core" / "embedded"
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="not a run"):
        snapshot(run, tmp_path / "snap")
    TextTokenizer.from_folder(embedded / "dalle", max_length=tiny.bart.max_text_length).save(run / "tokenizer" / "dalle")
    save_vqgan(run / "model" / "vqgan", tiny.vqgan, init_vqgan_params(tiny.vqgan, jax.random.PRNGKey(0)))
    params = init_params(tiny.bart, jax.random.PRNGKey(1))
    save_state(run / "bart_run", {"params": params, "opt_state": {}, "step": 700})

    dest = snapshot(run, tmp_path / "snap")
    assert json.loads((dest / "dalle" / "training.json").read_text())["step"] == 700
    gen = Generator.from_folder(dest)
    assert gen.has_clip  # the shipped CLIP stands in until the run exports its own
    tokens = gen.sample_tokens(["a red circle"], 2, 0)
    assert tokens.shape == (1, 2, tiny.bart.grid_size, tiny.bart.grid_size)


def test_vqgan_training_recolours_batches_when_asked(tmp_path, data, monkeypatch):
    from dalle_core.train.vqgan import VQGANTrainConfig, train_vqgan

    calls = []
    real = S.recolour
    monkeypatch.setattr(S, "recolour", lambda batch, rng, p: calls.append(p) or real(batch, rng, p))
    tcfg = VQGANTrainConfig(steps=2, batch_size=4, warmup=1, crop=8, full_res_fraction=0.0, restart_every=0)
    train_vqgan(VQ, _small_images(data.images), tmp_path / "plain", tcfg)
    assert calls == []
    train_vqgan(VQ, _small_images(data.images), tmp_path / "recoloured", dataclasses.replace(tcfg, recolour=0.5))
    assert calls == [0.5, 0.5]  # once per step


def test_token_coverage_finds_the_images_that_need_codes_training_never_produced(data):
    from dalle_core.models.vqgan import init_vqgan_params
    from dalle_core.train.vqgan import encode_images, token_coverage

    params = init_vqgan_params(VQ, jax.random.PRNGKey(5))
    images = np.stack([S.render(sc, size=VQ.resolution) for sc in data.scenes])
    same = token_coverage(VQ, params, images, images, data.scenes)
    assert all(g["needs_unseen"] == 0.0 and g["unseen_codes"] == 0 for g in same["groups"].values())
    assert sum(g["count"] for g in same["groups"].values()) == len(images)
    assert same["train_codes"] == len(np.unique(encode_images(VQ, params, images)))
    # trained on blank images only, every image with an object needs codes it never saw
    blank = np.full((4, VQ.resolution, VQ.resolution, 3), 255, np.uint8)
    white = token_coverage(VQ, params, blank, images, data.scenes)
    blank_codes = np.unique(encode_images(VQ, params, blank))
    assert white["train_codes"] == len(blank_codes)
    expect = np.mean([not np.isin(row, blank_codes).all() for row in encode_images(VQ, params, images)])
    got = np.average([g["needs_unseen"] for g in white["groups"].values()],
                     weights=[g["count"] for g in white["groups"].values()])
    assert got == pytest.approx(expect) and got > 0.5
