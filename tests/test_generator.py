"""Generator on a small random model saved to disk in the real formats (no downloads)."""

from __future__ import annotations

import json
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle_core import Candidate, Generator, ModelInfo, SamplingSettings
from dalle_core.checkpoints import CheckpointError
from dalle_core.checkpoints.bart import save_dalle_bart
from dalle_core.config import BartConfig, CLIPConfig, CLIPTextConfig, CLIPVisionConfig, VQGANConfig
from dalle_core.models.bart import DalleBart, init_params
from dalle_core.sampling import LogitSettings, process_logits, super_condition
from dalle_core.text import build_fallback_tokenizer

BART = BartConfig(
    d_model=32,
    encoder_layers=1,
    decoder_layers=2,
    attention_heads=4,
    glu_dim=48,
    text_vocab_size=400,
    image_vocab_size=64,
    max_text_length=16,
    image_length=16,
)
# 32 px, f8 → 4×4 = 16 tokens
VQ = VQGANConfig(
    ch=8,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    resolution=32,
    z_channels=8,
    embed_dim=8,
    n_embed=64,
    num_groups=4,
)


def _fill(shapes, seed):
    """Random params for a shape tree (normal kernels, unit scales): quick, no compile."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return jnp.ones(x.shape, x.dtype)
        if "bias" in name:
            return jnp.zeros(x.shape, x.dtype)
        return jnp.asarray(rng.standard_normal(x.shape, np.float32) * 0.2)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def _save_clip(folder):
    """A random tiny CLIP with a letter-level CLIP BPE vocabulary (vocab.json + merges.txt)."""
    from dalle_core.checkpoints.clip import save_clip
    from dalle_core.models.clip import clip_param_shapes

    vocab = {
        c + s: i
        for i, (s, c) in enumerate((s, c) for s in ("", "</w>") for c in string.ascii_lowercase)
    }
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    cfg = CLIPConfig(
        text=CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            eos_token_id=2,
        ),
        vision=CLIPVisionConfig(
            image_size=16,
            patch_size=8,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=8,
    )
    params = _fill(clip_param_shapes(cfg), 2)
    params["logit_scale"] = jnp.asarray(cfg.logit_scale_init, jnp.float32)
    save_clip(folder, cfg, params)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from dalle_core.checkpoints.vqgan import save_vqgan
    from dalle_core.models.vqgan import vqgan_param_shapes

    root = tmp_path_factory.mktemp("model")
    # larger init than the default so that prompts visibly change the logits of a tiny model
    params = init_params(BART, jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda x: x * 10 if x.ndim >= 2 else x, params)
    save_dalle_bart(
        root / "dalle",
        BART,
        params,
        tokenizer=build_fallback_tokenizer(400, max_length=BART.max_text_length),
    )
    save_vqgan(root / "vqgan", VQ, _fill(vqgan_param_shapes(VQ), 1))
    _save_clip(root / "clip")
    return root


@pytest.fixture(scope="module")
def gen(folder):
    return Generator.from_folder(folder, name="test-model")


PROMPTS = ["a red fox in the snow", "a blue robot"]
# one compiled sampler per (guided or not) for most tests: same top_k everywhere
PLAIN = SamplingSettings(condition_scale=1.0, top_k=8)
GUIDED = SamplingSettings(condition_scale=3.0, top_k=8)


def test_info_and_variant(gen, folder):
    assert gen.info == ModelInfo(
        name="test-model",
        variant="custom",
        checkpoint=str(folder / "dalle"),
        random_init=False,
        dtype="float32",
    )
    assert gen.variant.bart == BART and gen.variant.vqgan == VQ and gen.has_clip
    emb = gen.embed_text(["red", "a blue robot", "fox"])
    assert emb.shape == (3, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
    no_clip = Generator.from_pretrained(folder / "dalle", folder / "vqgan")
    assert no_clip.score(PROMPTS, np.zeros((2, 1, 32, 32, 3), np.uint8)) is None
    assert no_clip.embed_text(["red"]) is None and no_clip.info.name == str(folder / "dalle")


def test_same_seed_same_tokens(gen):
    a = gen.sample_tokens(PROMPTS, n=2, seed=7, settings=GUIDED)
    assert a.shape == (2, 2, 4, 4) and a.dtype == np.int32
    assert a.min() >= 0 and a.max() < VQ.n_embed
    np.testing.assert_array_equal(a, gen.sample_tokens(PROMPTS, n=2, seed=7, settings=GUIDED))
    assert not np.array_equal(a, gen.sample_tokens(PROMPTS, n=2, seed=8, settings=GUIDED))
    # progress chunks run the same steps, so they change nothing
    calls = []
    b = gen.sample_tokens(
        PROMPTS, n=2, seed=7, settings=GUIDED, progress=lambda d, t: calls.append((d, t))
    )
    np.testing.assert_array_equal(a, b)
    assert calls[-1] == (16, 16) and len(calls) == 16


@pytest.fixture(scope="module")
def teacher_forced(folder):
    """Logits of the saved model over a given image-token sequence, straight from the module."""
    from dalle_core.checkpoints.bart import load_dalle_bart

    cfg, params = load_dalle_bart(folder / "dalle")
    return jax.jit(lambda ids, mask, dec: DalleBart(cfg).apply({"params": params}, ids, mask, dec))


@pytest.mark.parametrize(
    "scale,negative",
    [
        (PLAIN.condition_scale, None),
        (GUIDED.condition_scale, None),
        (GUIDED.condition_scale, "blurry, dark"),
    ],
)
def test_tokens_follow_the_teacher_forced_distribution(gen, teacher_forced, scale, negative):
    """Each sampled token is the draw the sampler's key schedule makes from the logits that a
    teacher-forced pass over the sampled sequence gives (cond only at scale 1, else
    ``uncond + scale·(cond − uncond)`` with the empty or negative prompt as uncond)."""
    n, seed = 2, 11
    settings = PLAIN if scale == 1.0 else GUIDED
    tokens = gen.sample_tokens(PROMPTS, n=n, seed=seed, settings=settings, negative_prompt=negative)
    flat = tokens.reshape(len(PROMPTS) * n, -1)
    dec_in = np.concatenate([np.full((len(flat), 1), BART.image_bos_id), flat[:, :-1]], 1).astype(
        np.int32
    )

    def logits_for(texts, normalize=None):
        t = gen.tokenizer(texts, normalize=normalize)
        ids, mask = (
            np.repeat(t[k], len(flat) // len(texts), axis=0)
            for k in ("input_ids", "attention_mask")
        )
        return teacher_forced(ids, mask, dec_in)

    cond = logits_for(PROMPTS)
    if scale == 1.0:
        logits = cond
    else:
        uncond = logits_for([negative]) if negative else logits_for([""], normalize=False)
        logits = super_condition(cond, uncond, scale)
    ls = LogitSettings.create(top_k=8, num_valid=VQ.n_embed)
    key = jax.random.PRNGKey(seed)
    want = [
        jax.random.categorical(jax.random.fold_in(key, t), process_logits(logits[:, t], ls))
        for t in range(BART.image_length)
    ]
    np.testing.assert_array_equal(flat, np.stack(want, 1))


def test_condition_scale_changes_tokens(gen):
    plain = gen.sample_tokens(PROMPTS, n=2, seed=3, settings=PLAIN)
    guided = gen.sample_tokens(PROMPTS, n=2, seed=3, settings=GUIDED)
    negative = gen.sample_tokens(
        PROMPTS, n=2, seed=3, settings=GUIDED, negative_prompt="blurry, dark"
    )
    assert not np.array_equal(plain, guided) and not np.array_equal(guided, negative)


def test_forced_tokens_are_kept(gen):
    rng = np.random.default_rng(0)
    forced = rng.integers(0, VQ.n_embed, (2, 4, 4)).astype(np.int32)
    keep = np.zeros((2, 4, 4), bool)
    keep[0, :2] = True  # top half of the first prompt's images (outpainting-style)
    keep[1] = True  # everything for the second prompt
    out = gen.sample_tokens(
        PROMPTS, n=2, seed=1, settings=GUIDED, forced_tokens=forced, forced_mask=keep
    )
    for j in range(2):
        np.testing.assert_array_equal(out[0, j][keep[0]], forced[0][keep[0]])
        np.testing.assert_array_equal(out[1, j], forced[1])
    with pytest.raises(ValueError, match="forced_tokens has shape"):
        gen.sample_tokens(
            PROMPTS, n=1, seed=1, forced_tokens=np.zeros((2, 5)), forced_mask=np.zeros((2, 5))
        )
    with pytest.raises(ValueError, match="VQGAN codes"):
        gen.sample_tokens(PROMPTS, n=1, seed=1, forced_tokens=forced + 100, forced_mask=keep)


def test_decode_encode_and_generate(gen):
    tokens = gen.sample_tokens(PROMPTS, n=2, seed=0, settings=GUIDED)
    images = gen.decode(tokens)
    assert images.shape == (2, 2, 32, 32, 3) and images.dtype == np.uint8
    codes = gen.encode(images.reshape(4, 32, 32, 3))
    assert codes.shape == (4, 4, 4) and codes.dtype == np.int32
    # non-square uploads at another size are cropped and resized first
    assert gen.encode(np.zeros((4, 48, 40, 3), np.uint8)).shape == (4, 4, 4)
    with pytest.raises(ValueError, match="tokens must end in"):
        gen.decode(np.zeros((2, 5, 5), np.int32))
    result = gen.generate(PROMPTS, n=2, seed=0, settings=GUIDED)
    assert [len(r) for r in result] == [2, 2]
    c = result[1][0]
    assert isinstance(c, Candidate) and c.image.shape == (32, 32, 3) and c.prompt_index == 1
    # ranked best first by CLIP; the candidates are the sampled ones, reordered
    scores = gen.score(PROMPTS, images)
    assert scores.shape == (2, 2) and scores.dtype == np.float32
    for i in range(2):
        got = [x.score for x in result[i]]
        assert got == sorted(got, reverse=True)
        np.testing.assert_allclose(sorted(got), np.sort(scores[i]), rtol=1e-5)
        order = [x.sample_index for x in result[i]]
        np.testing.assert_array_equal(np.stack([x.tokens for x in result[i]]), tokens[i][order])
        np.testing.assert_array_equal(np.stack([x.image for x in result[i]]), images[i][order])


def test_bad_inputs(gen, tmp_path):
    with pytest.raises(TypeError, match="list of strings"):
        gen.sample_tokens("a fox", n=1, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        gen.sample_tokens(PROMPTS, n=0, seed=0)
    with pytest.raises(CheckpointError, match="missing subfolder"):
        Generator.from_folder(tmp_path)


def test_random_init_generator():
    from dalle_core.config import get_variant

    g = Generator.random("tiny", seed=1)
    assert g.info.random_init and g.info.checkpoint == "random-init" and g.info.variant == "tiny"
    assert g.variant.bart == get_variant("tiny").bart and not g.has_clip
    assert g.tokenizer.max_length == g.variant.bart.max_text_length
    assert g.tokenizer.vocab_size <= g.variant.bart.text_vocab_size


def test_tokenizer_must_fit_the_embedding(gen):
    from dalle_core.config import replace

    small = replace(gen.variant, bart=replace(BART, text_vocab_size=gen.tokenizer.vocab_size - 1))
    with pytest.raises(CheckpointError, match="tokenizer has"):
        Generator(small, gen._bart_params, gen._vqgan_params, gen.tokenizer, gen.info)
