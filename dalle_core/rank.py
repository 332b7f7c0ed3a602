"""CLIP ranking of generated candidates against their prompt.

Pure, jittable functions (``clip_preprocess``, ``clip_text_embeddings``, ``clip_image_embeddings``,
``clip_scores``) take the config as a static argument; ``Ranker`` holds params, tokenizer and the
compiled functions for the generator. By default the Ranker scores each image in five views (as it
is, and moved 3/8 of a CLIP patch left, right, up and down) and averages the cosines: a single view
puts a small object's edges at one offset inside the patch grid, and the averaged score separates
near misses (a rounded square for "a circle") from right images better (embedded model card,
"Ranking"). A prompt holding a size word ("a small purple square") is also scored without it ("a
purple square", ``prompt_views``) and the two cosines are averaged: the embedded CLIP never saw
the held-out size x colour x shape triples, and its two readings err on different samples
(embedded model card, "Ranking against the prompt without its size word"). The tokenizer comes
from the checkpoint folder: a ``tokenizer.json`` (read with ``tokenizers``) or CLIP's
``vocab.json`` + ``merges.txt`` (built by transformers' ``CLIPTokenizer``), padded and truncated
to ``max_position_embeddings``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dalle_core.checkpoints import CheckpointError, resolve_source
from dalle_core.config import CLIPConfig
from dalle_core.models.clip import CLIPModel
from dalle_core.text import tolerate_unknowns

log = logging.getLogger(__name__)

# OpenAI CLIP's image normalisation (CLIPImageProcessor's image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Ranker's default view shift, as a fraction of CLIP's patch size (3 of 8 pixels for the embedded CLIP).
VIEW_SHIFT = 0.375
# Ranker's default drop words: a prompt holding any of them is also scored without them.
DROP_WORDS: tuple[str, ...] = ("small", "little", "tiny", "large", "big")
_PUNCT = ",.;:!?"


# ------------------------------------------------------------------------------------ tokenizer


class ClipTokenizer:
    """Batch tokenizer returning fixed-length ``(input_ids, attention_mask)`` int32 arrays [N, L]."""

    def __init__(self, backend, max_length: int):
        """``backend`` is a ``tokenizers.Tokenizer`` whose post-processor adds BOS/EOS."""
        backend = tolerate_unknowns(backend)
        self.backend = backend
        self.max_length = max_length
        pad_token = _pad_token(backend)
        pad_id = backend.token_to_id(pad_token)
        # Truncation keeps room for the BOS/EOS the post-processor adds, so EOS always survives
        # (the text tower pools there).
        backend.enable_truncation(max_length=max_length)
        backend.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        encs = self.backend.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encs], np.int32).reshape(len(encs), self.max_length)
        mask = np.asarray([e.attention_mask for e in encs], np.int32).reshape(ids.shape)
        return ids, mask


def _pad_token(backend) -> str:
    # CLIP pads with its EOS token; the tokenizer files may name another pad token.
    for token in ("<|endoftext|>", "<pad>", "[PAD]"):
        if backend.token_to_id(token) is not None:
            return token
    raise CheckpointError("CLIP tokenizer has no <|endoftext|> (or <pad>) token to pad with")


def load_clip_tokenizer(folder: str | os.PathLike, max_length: int | None = None) -> ClipTokenizer:
    """CLIP's BPE tokenizer from a checkpoint folder (``tokenizer.json``, else ``vocab.json`` + ``merges.txt``).

    ``max_length`` defaults to the folder's ``config.json`` ``text_config.max_position_embeddings``
    (77 for OpenAI CLIP).
    """
    folder = Path(folder)
    if max_length is None:
        max_length = _max_length_from_config(folder)
    if (folder / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:
            raise CheckpointError(f"{folder / 'tokenizer.json'} is not a valid tokenizers file ({err})") from err
    elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        from transformers import CLIPTokenizer

        backend = CLIPTokenizer.from_pretrained(str(folder)).backend_tokenizer
    else:
        raise CheckpointError(
            f"{folder}: no CLIP tokenizer (expected tokenizer.json, or vocab.json and merges.txt)"
        )
    return ClipTokenizer(backend, max_length)


def _max_length_from_config(folder: Path) -> int:
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
        text = raw.get("text_config") or raw.get("text_config_dict") or {}
        return int(text.get("max_position_embeddings") or 77)
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read max_position_embeddings ({err})") from err


# ------------------------------------------------------------------------------ pure functions


def clip_preprocess(images: jax.Array, cfg: CLIPConfig) -> jax.Array:
    """uint8 images [N, H, W, 3] → CLIP input float32 [N, S, S, 3] (S = ``cfg.vision.image_size``).

    As CLIPImageProcessor: bicubic resize of the shorter side to S, centre crop, scale to [0, 1],
    normalise with CLIP's mean/std. Square inputs (our candidates) skip the crop. Shapes are
    static, so this jits.
    """
    n, h, w, _ = images.shape
    s = cfg.vision.image_size
    scale = s / min(h, w)
    rh, rw = max(s, round(h * scale)), max(s, round(w * scale))
    x = images.astype(jnp.float32) / 255.0
    if (rh, rw) != (h, w):
        x = jax.image.resize(x, (n, rh, rw, x.shape[-1]), method="bicubic", antialias=True)
        x = jnp.clip(x, 0.0, 1.0)  # bicubic overshoots; PIL's uint8 output is clipped too
    top, left = (rh - s) // 2, (rw - s) // 2
    x = x[:, top : top + s, left : left + s]
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clip_text_embeddings(
    params, cfg: CLIPConfig, input_ids: jax.Array, attention_mask: jax.Array, dtype=jnp.float32
) -> jax.Array:
    """ids/mask int [N, L] → L2-normalised text embeddings float32 [N, projection_dim]."""
    feats = CLIPModel(cfg, dtype).apply(
        {"params": params}, input_ids, attention_mask, method="get_text_features"
    )
    return _normalize(feats)


def _pixel_embeddings(params, cfg: CLIPConfig, pixels: jax.Array, dtype) -> jax.Array:
    """Preprocessed pixels [N, S, S, 3] → L2-normalised image embeddings [N, projection_dim]."""
    feats = CLIPModel(cfg, dtype).apply({"params": params}, pixels, method="get_image_features")
    return _normalize(feats)


def clip_image_embeddings(params, cfg: CLIPConfig, images_uint8: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 images [N, H, W, 3] → L2-normalised image embeddings float32 [N, projection_dim]."""
    return _pixel_embeddings(params, cfg, clip_preprocess(images_uint8, cfg), dtype)


def view_offsets(cfg: CLIPConfig, shift: float) -> tuple[tuple[int, int], ...]:
    """(dy, dx) CLIP-input pixel offsets of the scoring views: (0, 0) alone when ``shift`` rounds to
    no pixel, else also ± ``shift`` × patch size along each axis (five views)."""
    if shift < 0:
        raise ValueError(f"view shift must be >= 0, got {shift}")
    s = round(shift * cfg.vision.patch_size)
    if s == 0:
        return ((0, 0),)
    if s >= cfg.vision.image_size:
        raise ValueError(f"view shift {shift} is {s} pixels, not less than the image size {cfg.vision.image_size}")
    return ((0, 0), (0, -s), (0, s), (-s, 0), (s, 0))


def prompt_views(text: str, drop_words: Sequence[str] = DROP_WORDS) -> tuple[str, ...]:
    """The texts a prompt is scored against: the prompt, and, when it holds any of ``drop_words``
    (whole words, any case, trailing punctuation ignored), the prompt without them, its article
    fixed ("a large orange triangle" → "an orange triangle")."""
    drop = {w.lower() for w in drop_words}
    words = text.split()
    kept: list[str] = []
    articles: list[int] = []  # kept "a"/"an" whose next word was dropped
    for word in words:
        if word.lower().rstrip(_PUNCT) in drop:
            if kept and kept[-1].lower() in ("a", "an"):
                articles.append(len(kept) - 1)
            continue
        kept.append(word)
    if len(kept) == len(words) or not kept:
        return (text,)
    for i in articles:
        if i + 1 < len(kept):
            article = "an" if kept[i + 1][0].lower() in "aeiou" else "a"
            kept[i] = article.capitalize() if kept[i][0].isupper() else article
    return (text, " ".join(kept))


def _shifted(pixels: jax.Array, dy: int, dx: int) -> jax.Array:
    """[N, S, S, C] moved by (dy, dx) pixels, the edge rows/columns repeated into the gap."""
    if dy == dx == 0:
        return pixels
    p = max(abs(dy), abs(dx))
    s = pixels.shape[1]
    padded = jnp.pad(pixels, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    return padded[:, p - dy : p - dy + s, p - dx : p - dx + s]


def clip_scores(
    params,
    cfg: CLIPConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    images_uint8: jax.Array,
    text_index: jax.Array,
    dtype=jnp.float32,
    offsets: Sequence[tuple[int, int]] = ((0, 0),),
    text_weights: jax.Array | None = None,
) -> jax.Array:
    """CLIP score of image i against text ``text_index[i]``: cosine similarity × exp(logit_scale).

    ids/mask int [T, L]; images uint8 [N, H, W, 3]; text_index int [N] in [0, T) → float32 [N].
    Each text is encoded once however many images refer to it. ``offsets`` (static; see
    ``view_offsets``): the image is encoded once per (dy, dx) shift of its CLIP input and the
    cosines are averaged; the default is the plain single view. ``text_weights`` float [T', T]:
    image i is scored against row ``text_index[i]`` of ``text_weights`` @ the T text embeddings
    (rows averaging several texts average their cosines; ``prompt_views``); None = identity.
    """
    text = clip_text_embeddings(params, cfg, input_ids, attention_mask, dtype)
    if text_weights is not None:
        text = jnp.asarray(text_weights, text.dtype) @ text
    text = text[text_index]
    pixels = clip_preprocess(images_uint8, cfg)
    views = jnp.concatenate([_shifted(pixels, dy, dx) for dy, dx in offsets])
    image = _pixel_embeddings(params, cfg, views, dtype).reshape((len(offsets), pixels.shape[0], -1))
    cos = jnp.mean(jnp.sum(image * text[None], axis=-1), axis=0)
    return cos * jnp.exp(jnp.asarray(params["logit_scale"], jnp.float32))


# --------------------------------------------------------------------------------------- Ranker


class Ranker:
    """Params + tokenizer + compiled scoring, loaded once and reused for every prompt.

    >>> ranker = Ranker.from_pretrained("openai/clip-vit-base-patch32")   # doctest: +SKIP
    >>> order, scores = ranker.rank(images_uint8, "a lighthouse at dusk")  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: CLIPConfig,
        params,
        tokenizer: ClipTokenizer,
        dtype=jnp.float32,
        view_shift: float = VIEW_SHIFT,
        drop_words: Sequence[str] = DROP_WORDS,
    ):
        """``view_shift``: the scoring views' shift as a fraction of a CLIP patch (``view_offsets``);
        0 scores the plain image alone. ``drop_words``: a prompt holding any of them is also
        scored without them and the cosines averaged (``prompt_views``); () scores the prompt alone."""
        if tokenizer.max_length > cfg.text.max_position_embeddings:
            raise ValueError(
                f"tokenizer pads to {tokenizer.max_length} tokens but CLIP has only "
                f"{cfg.text.max_position_embeddings} positions"
            )
        self.cfg, self.params, self.tokenizer, self.dtype = cfg, params, tokenizer, dtype
        self.offsets = view_offsets(cfg, view_shift)
        self.view_shift, self.drop_words = view_shift, tuple(drop_words)
        self._scores = jax.jit(partial(clip_scores, cfg=cfg, dtype=dtype, offsets=self.offsets))
        self._text = jax.jit(partial(clip_text_embeddings, cfg=cfg, dtype=dtype))

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        dtype=jnp.float32,
        view_shift: float = VIEW_SHIFT,
        drop_words: Sequence[str] = DROP_WORDS,
    ) -> Ranker:
        """Load CLIP weights, config and tokenizer from one folder or hub id."""
        from dalle_core.checkpoints.clip import load_clip

        folder = resolve_source(source)
        cfg, params = load_clip(folder)
        tokenizer = load_clip_tokenizer(folder, cfg.text.max_position_embeddings)
        return cls(cfg, params, tokenizer, dtype, view_shift, drop_words)

    def with_view_shift(self, view_shift: float) -> Ranker:
        """The same CLIP scoring with other views (``view_offsets``; 0 = the plain image alone)."""
        return type(self)(self.cfg, self.params, self.tokenizer, self.dtype, view_shift, self.drop_words)

    def with_drop_words(self, drop_words: Sequence[str]) -> Ranker:
        """The same CLIP scoring with other drop words (``prompt_views``; () = the prompt alone)."""
        return type(self)(self.cfg, self.params, self.tokenizer, self.dtype, self.view_shift, drop_words)

    def text_embeddings(self, texts: str | Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings float32 [T, projection_dim]."""
        ids, mask = self.tokenizer(texts)
        return np.asarray(self._text(self.params, input_ids=ids, attention_mask=mask))

    def scores(
        self,
        images_uint8: np.ndarray,
        texts: str | Sequence[str],
        text_index: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 [N] scores of images uint8 [N, H, W, 3] against ``texts[text_index[i]]``.

        One text scores every image; otherwise pass ``text_index`` (defaults to image i ↔ text i).
        A text holding drop words is scored as the mean of its ``prompt_views``.
        """
        images = np.asarray(images_uint8)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}"
            )
        texts = [texts] if isinstance(texts, str) else list(texts)
        if text_index is None:
            text_index = np.zeros(len(images), np.int32) if len(texts) == 1 else np.arange(len(images))
        text_index = np.asarray(text_index, np.int32)
        if text_index.shape != (len(images),) or text_index.min() < 0 or text_index.max() >= len(texts):
            raise ValueError(
                f"text_index must hold one index in [0, {len(texts)}) per image ({len(images)} images)"
            )
        views = [prompt_views(t, self.drop_words) for t in texts]
        weights = None
        if any(len(v) > 1 for v in views):
            weights = np.zeros((len(texts), sum(map(len, views))), np.float32)
            start = 0
            for row, v in enumerate(views):
                weights[row, start : start + len(v)] = 1.0 / len(v)
                start += len(v)
        ids, mask = self.tokenizer([t for v in views for t in v])
        out = self._scores(
            self.params, input_ids=ids, attention_mask=mask, images_uint8=images, text_index=text_index,
            text_weights=weights,
        )
        return np.asarray(out)

    def rank(self, images_uint8: np.ndarray, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(order best-first int [N], scores float32 [N]) of images against one text."""
        scores = self.scores(images_uint8, text)
        return np.argsort(-scores, kind="stable"), scores
