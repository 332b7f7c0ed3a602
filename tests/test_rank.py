"""CLIP ranking: tokenizer loading, preprocessing, and scores on a hand-crafted colour CLIP.

The crafted model: token embeddings of "red"/"blue" and the patch embedding both map a colour to
the same direction ``[v, -v]`` (v = CLIP-normalised RGB); attention is uniform (q = k = 0) with
identity values, MLPs are zero and projections are identities. So a solid red image and the text
"red" get the same embedding direction and ranking must put the matching image first.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dalle_core.checkpoints import CheckpointError, flatten, unflatten
from dalle_core.checkpoints.clip import save_clip
from dalle_core.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from dalle_core.models.clip import clip_param_shapes
from dalle_core.rank import (
    CLIP_MEAN,
    CLIP_STD,
    Ranker,
    clip_preprocess,
    clip_scores,
    clip_text_embeddings,
    load_clip_tokenizer,
    prompt_views,
    view_offsets,
)

MERGES = [("r", "e"), ("re", "d</w>"), ("b", "l"), ("bl", "u"), ("blu", "e</w>")]


def _vocab() -> dict[str, int]:
    """A CLIP-style byte-level BPE vocab: letters, word-final letters, merges, then BOS and EOS last."""
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # highest id, as in OpenAI CLIP (49407)
    return vocab


VOCAB = _vocab()
CFG = CLIPConfig(
    text=CLIPTextConfig(
        vocab_size=len(VOCAB),
        hidden_size=6,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=8,
        eos_token_id=2,  # legacy rule: pool at argmax(ids), i.e. at <|endoftext|>
    ),
    vision=CLIPVisionConfig(
        image_size=8, patch_size=4, hidden_size=6, intermediate_size=4, num_hidden_layers=1,
        num_attention_heads=1,
    ),
    projection_dim=6,
    logit_scale_init=float(np.log(10.0)),
)
RED, BLUE, GREEN = (230, 20, 30), (10, 40, 220), (20, 200, 40)


def color_direction(rgb) -> np.ndarray:
    v = (np.asarray(rgb) / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    return np.concatenate([v, -v]).astype(np.float32)  # mean zero, so LayerNorm keeps its direction


def crafted_params() -> dict:
    flat = {k: np.zeros(v.shape, np.float32) for k, v in flatten(clip_param_shapes(CFG)).items()}
    for k in flat:
        if k.endswith("/scale"):
            flat[k][:] = 1.0
    eye = np.eye(6, dtype=np.float32)
    for tower in ("text_model", "vision_model"):
        flat[f"{tower}/encoder/layers/0/self_attn/v_proj/kernel"] = eye
        flat[f"{tower}/encoder/layers/0/self_attn/out_proj/kernel"] = eye
    tok = flat["text_model/embeddings/token_embedding/embedding"]
    tok[VOCAB["red</w>"]] = color_direction(RED)
    tok[VOCAB["blue</w>"]] = color_direction(BLUE)
    patch = flat["vision_model/embeddings/patch_embedding/kernel"]  # [4, 4, 3, 6] HWIO
    for c in range(3):
        patch[:, :, c, c] = 1 / 16  # mean of the channel over the patch ...
        patch[:, :, c, c + 3] = -1 / 16  # ... and its negation
    flat["text_projection/kernel"] = eye
    flat["visual_projection/kernel"] = eye
    flat["logit_scale"] = np.array(CFG.logit_scale_init, np.float32)
    return unflatten(flat)


def solid(rgb, size=16) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (size, size, 3)).copy()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A full CLIP folder: config + safetensors + vocab.json/merges.txt."""
    folder = tmp_path_factory.mktemp("clip_rank")
    save_clip(folder, CFG, crafted_params())
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return folder


@pytest.fixture(scope="module")
def ranker(checkpoint):
    return Ranker.from_pretrained(checkpoint)


def test_tokenizer_from_vocab_and_merges(checkpoint):
    tok = load_clip_tokenizer(checkpoint)
    assert tok.max_length == 8  # from config.json's text_config
    ids, mask = tok(["a red cat", "blue"])
    bos, eos = VOCAB["<|startoftext|>"], VOCAB["<|endoftext|>"]
    assert ids.dtype == np.int32 and ids.shape == (2, 8) and mask.shape == (2, 8)
    want = [bos, VOCAB["a</w>"], VOCAB["red</w>"], VOCAB["c"], VOCAB["a"], VOCAB["t</w>"], eos, eos]
    assert ids[0].tolist() == want and mask[0].tolist() == [1] * 7 + [0]
    assert ids[1].tolist() == [bos, VOCAB["blue</w>"]] + [eos] * 6
    assert mask[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    # long text: truncated to 8 with the EOS kept last
    ids, mask = tok("red blue red blue red blue red blue red")
    assert ids[0, 0] == bos and ids[0, -1] == eos and mask.sum() == 8


def test_tokenizer_json_gives_the_same_ids(checkpoint, tmp_path):
    slow = load_clip_tokenizer(checkpoint)
    slow.backend.save(str(tmp_path / "tokenizer.json"))
    fast = load_clip_tokenizer(tmp_path, max_length=8)
    texts = ["a red cat", "Blue  BLUE", "zzz"]
    for a, b in zip(slow(texts), fast(texts), strict=True):
        np.testing.assert_array_equal(a, b)


UNSEEN = ["an icon of a fox", "sushi on black", "illustration: droplet", "寿司 🍣 on navy",
          "\x00\x00\x00", "café 1234 ½"]
EMBEDDED_CLIP = Path(__file__).resolve().parents[1] / "dalle_core" / "embedded" / "clip"


def _layouts(checkpoint, tmp_path):
    """Every tokenizer layout we read: CLIP's vocab.json + merges.txt, a tokenizer.json, one
    whose model lacks its unknown token (what a small trained vocabulary writes), and the
    embedded model's shipped folder."""
    json_dir, no_unk = tmp_path / "json", tmp_path / "no_unk"
    json_dir.mkdir(), no_unk.mkdir()
    load_clip_tokenizer(checkpoint).backend.save(str(json_dir / "tokenizer.json"))
    state = json.loads((json_dir / "tokenizer.json").read_text())
    del state["model"]["vocab"]["<|endoftext|>"]
    state["added_tokens"].append({"id": VOCAB["<|endoftext|>"], "content": "<|endoftext|>",
                                  "single_word": False, "lstrip": False, "rstrip": False,
                                  "normalized": False, "special": True})
    (no_unk / "tokenizer.json").write_text(json.dumps(state))
    return {"vocab+merges": load_clip_tokenizer(checkpoint),
            "tokenizer.json": load_clip_tokenizer(json_dir, max_length=8),
            "unk not in vocab": load_clip_tokenizer(no_unk, max_length=8),
            "embedded": load_clip_tokenizer(EMBEDDED_CLIP)}


def test_unseen_characters_are_dropped_never_fatal(checkpoint, tmp_path):
    for name, tok in _layouts(checkpoint, tmp_path).items():
        eos = tok.backend.token_to_id("<|endoftext|>")
        ids, mask = tok(UNSEEN)
        assert ids.shape == (len(UNSEEN), tok.max_length), name
        for row, m in zip(ids, mask, strict=True):
            n = int(m.sum())
            # one end-of-text, after the text: an unseen character never cuts the prompt short
            assert row[n - 1] == eos and (row[1:n - 1] != eos).all(), (name, row)
    # Known words keep their ids around the dropped character.
    tok = load_clip_tokenizer(checkpoint)
    assert tok(["red 7 blue"])[0][0, :4].tolist() == [
        VOCAB["<|startoftext|>"], VOCAB["red</w>"], VOCAB["blue</w>"], VOCAB["<|endoftext|>"]]


def test_embedded_ranker_scores_prompts_with_unseen_characters():
    ranker = Ranker.from_pretrained(EMBEDDED_CLIP)
    size = ranker.cfg.vision.image_size
    images = np.zeros((2, size, size, 3), np.uint8)
    scores = ranker.scores(images, "an icon of a fox on black")
    assert np.isfinite(np.asarray(scores)).all()


def test_tokenizer_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="no CLIP tokenizer"):
        load_clip_tokenizer(tmp_path, max_length=8)


def test_preprocess_normalises_and_center_crops():
    img = np.zeros((1, 8, 16, 3), np.uint8)
    img[:, :, 4:12] = 255  # white centre, black sides: the 8×8 centre crop is all white
    out = np.asarray(clip_preprocess(jnp.asarray(img), CFG))
    assert out.shape == (1, 8, 8, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to((1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), out.shape), rtol=1e-6)


def test_preprocess_resize_matches_pil_bicubic():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((64, 64), Image.BICUBIC))
    ours = np.asarray(clip_preprocess(jnp.asarray(img[None]), CFG))[0]
    pil = np.asarray(Image.fromarray(img).resize((8, 8), Image.BICUBIC)).astype(np.float32) / 255
    ours_uint8_units = (ours * np.array(CLIP_STD) + np.array(CLIP_MEAN)) * 255
    # PIL rounds to uint8, so agreement is to about one level
    assert np.abs(ours_uint8_units - pil * 255).max() < 1.5


def test_matching_image_ranks_first(ranker):
    images = np.stack([solid(RED), solid(BLUE), solid(GREEN)])
    order, scores = ranker.rank(images, "red")
    assert order[0] == 0 and scores.dtype == np.float32
    assert scores[0] == pytest.approx(10.0, rel=1e-4)  # cos 1 × exp(logit_scale)
    order, scores = ranker.rank(images, "a blue")
    assert order[0] == 1 and scores[1] > scores[0] + 5


def test_scores_pair_each_image_with_its_text(ranker):
    images = np.stack([solid(RED), solid(BLUE), solid(BLUE), solid(RED)])
    scores = ranker.scores(images, ["red", "blue"], text_index=[0, 1, 0, 1])
    assert scores[0] > scores[2] and scores[1] > scores[3]
    np.testing.assert_allclose(scores[[0, 1]], 10.0, rtol=1e-4)
    # the pure function agrees with the Ranker
    ids, mask = ranker.tokenizer(["red", "blue"])
    direct = jax.jit(clip_scores, static_argnums=1)(
        ranker.params, CFG, ids, mask, jnp.asarray(images), jnp.asarray([0, 1, 0, 1])
    )
    np.testing.assert_allclose(direct, scores, rtol=1e-5)


def test_text_embeddings_are_unit_norm(ranker):
    emb = ranker.text_embeddings(["red", "blue", "a red cat"])
    assert emb.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    ids, mask = ranker.tokenizer(["red"])
    direct = jax.jit(clip_text_embeddings, static_argnums=1)(ranker.params, CFG, ids, mask)
    np.testing.assert_allclose(direct[0], emb[0], rtol=1e-5)
    red = color_direction(RED)
    np.testing.assert_allclose(emb[0], red / np.linalg.norm(red), atol=1e-5)


def test_bad_inputs_are_clear_errors(ranker):
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\]"):
        ranker.scores(np.zeros((2, 8, 8, 3), np.float32), "red")
    with pytest.raises(ValueError, match="text_index"):
        ranker.scores(np.stack([solid(RED)] * 2), ["red", "blue"], text_index=[0, 2])


def test_view_offsets():
    assert view_offsets(CFG, 0) == ((0, 0),) and view_offsets(CFG, 0.1) == ((0, 0),)  # rounds to no pixel
    assert view_offsets(CFG, 0.375) == ((0, 0), (0, -2), (0, 2), (-2, 0), (2, 0))  # 1.5 of 4 px rounds to 2
    assert view_offsets(CFG, 1.0) == ((0, 0), (0, -4), (0, 4), (-4, 0), (4, 0))
    with pytest.raises(ValueError, match=">= 0"):
        view_offsets(CFG, -0.5)
    with pytest.raises(ValueError, match="image size"):
        view_offsets(CFG, 2.0)  # 8 px of an 8 px input


def test_views_average_the_scores_of_moved_images(checkpoint, ranker):
    """The default Ranker scores five views; each is the image moved with its edges repeated."""
    plain = Ranker.from_pretrained(checkpoint, view_shift=0)
    assert plain.offsets == ((0, 0),) and len(ranker.offsets) == 5
    assert ranker.with_view_shift(0).offsets == plain.offsets

    def moved(x, dy, dx):  # content moves down dy and right dx pixels
        p = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
        return p[:, 2 - dy : 10 - dy, 2 - dx : 10 - dx]

    marker = np.zeros((1, 8, 8, 3), np.uint8)
    marker[0, 3, 3] = 255
    assert moved(marker, 2, -2)[0, 5, 1].tolist() == [255, 255, 255]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)  # CLIP's input size: no resize
    got = ranker.scores(images, "red")
    want = np.mean([plain.scores(moved(images, dy, dx), "red") for dy, dx in ranker.offsets], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.abs(got - plain.scores(images, "red")).max() > 1e-2  # the views do change the score
    # a solid image is the same in every view
    np.testing.assert_allclose(ranker.scores(solid(RED, 8)[None], "red"), plain.scores(solid(RED, 8)[None], "red"), rtol=1e-5)


def test_prompt_views_drop_size_words_and_fix_the_article():
    assert prompt_views("a small purple square") == ("a small purple square", "a purple square")
    assert prompt_views("a large orange triangle") == ("a large orange triangle", "an orange triangle")
    assert prompt_views("An big, Orange circle on the left") == ("An big, Orange circle on the left", "An Orange circle on the left")
    assert prompt_views("a tiny apple on a little table")[1] == "an apple on a table"
    # nothing to drop, or nothing left: the prompt alone
    assert prompt_views("a red circle") == ("a red circle",)
    assert prompt_views("small") == ("small",)
    assert prompt_views("smallest red circle") == ("smallest red circle",)  # whole words only
    assert prompt_views("a small red circle", ()) == ("a small red circle",)
    assert prompt_views("a red circle", ("red",)) == ("a red circle", "a circle")


def test_drop_words_average_the_prompt_with_and_without_them(checkpoint):
    """A prompt holding a drop word scores the mean of its two readings; others score as before."""
    plain = Ranker.from_pretrained(checkpoint, view_shift=0, drop_words=())
    ranker = plain.with_drop_words(("blue",))
    assert ranker.drop_words == ("blue",) and ranker.with_view_shift(0.375).drop_words == ("blue",)
    images = np.stack([solid(RED, 8), solid(BLUE, 8), solid(GREEN, 8)])
    got = ranker.scores(images, ["red blue", "red"], text_index=[0, 1, 0])
    both = plain.scores(images, "red blue")
    without = plain.scores(images, "red")
    np.testing.assert_allclose(got[[0, 2]], (both[[0, 2]] + without[[0, 2]]) / 2, rtol=1e-5)
    np.testing.assert_allclose(got[1], without[1], rtol=1e-5)
    assert abs(got[0] - both[0]) > 0.1  # the second reading does change the score
    # a batch without drop words is scored exactly as without the option
    np.testing.assert_allclose(ranker.scores(images, "red"), without, rtol=1e-6)
