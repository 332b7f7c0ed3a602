"""The Generator: load DalleBart + VQGAN (+ CLIP) once, compile once, turn prompts into images.

Flows, the HTTP service and the CLI only talk to this class (and the plain types in
``dalle_core.types``). Everything expensive happens at construction or on the first call of a
given shape; later calls reuse the compiled functions (``jax.jit`` caches them by static args and
shapes).

Batch layout inside: P prompts × n samples = B rows, prompt-major. With super conditioning the
decoder runs 2B rows in one batch, ``[cond rows; uncond rows]``, where the unconditional rows
come from the empty prompt (dalle-mini's choice) or from a negative prompt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dalle_core.checkpoints import CheckpointError
from dalle_core.checkpoints.bart import load_dalle_bart, load_dalle_bart_tokenizer
from dalle_core.config import (
    VARIANTS,
    BartConfig,
    ModelVariant,
    get_variant,
)
from dalle_core.models.bart import CrossKV, DalleBart, init_kv_cache, init_params, unscan_params
from dalle_core.sampling import (
    LogitSettings,
    SampleState,
    init_state,
    sample_steps,
    super_condition,
)
from dalle_core.text import SPECIAL_TOKENS, TextTokenizer, build_fallback_tokenizer
from dalle_core.types import Candidate, ModelInfo, SamplingSettings

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]

_DEFAULT_SETTINGS = SamplingSettings()  # frozen, so one shared default is safe
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Progress is reported in at most this many chunks (one compiled chunk function serves them all).
_PROGRESS_CHUNKS = 16
# VQGAN runs on at most this many images at a time (memory at 256×256), padded to a power of two.
_DECODE_BATCH = 8


def _dtype(name: str | Any):
    if isinstance(name, str):
        try:
            return _DTYPES[name]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None
    return jnp.dtype(name).type


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def _variant_name(bart: BartConfig) -> str:
    """The table entry whose architecture matches (text options and init aside), else ``custom``."""
    ignore = {"normalize_text": True, "init_std": 0.02, "pad_token_id": 1}
    for name, variant in VARIANTS.items():
        a = {**bart.__dict__, **ignore}
        b = {**variant.bart.__dict__, **ignore}
        if a == b:
            return name
    return "custom"


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Generator:
    """Text → image tokens → pixels, ranked by CLIP when a CLIP model is loaded.

    Build with :meth:`from_folder`, :meth:`from_pretrained` or :meth:`random`. Thread use: one
    generation at a time (the service serialises calls on one worker thread).
    """

    def __init__(
        self,
        variant: ModelVariant,
        bart_params: dict,
        vqgan_params: dict,
        tokenizer: TextTokenizer,
        info: ModelInfo,
        clip=None,
        jit: bool = True,
    ):
        """Prefer the constructors. ``clip`` is a ``dalle_core.rank.Ranker`` (or None).

        ``jit=False`` runs everything eagerly (debugging only: slow).
        """
        from dalle_core.models.vqgan import VQModel

        self.variant = variant
        self.info = info
        self.tokenizer = tokenizer
        self._clip = clip
        cfg = variant.bart
        # mini's embedding has 50264 rows while BART's tokenizer also holds <mask> (id 50264); a
        # special token that normalized text never produces may stick out, nothing else may
        beyond = [
            tokenizer.id_to_token(i) for i in range(cfg.text_vocab_size, tokenizer.vocab_size)
        ]
        if any(t not in SPECIAL_TOKENS for t in beyond):
            raise CheckpointError(
                f"tokenizer has {tokenizer.vocab_size} tokens but DalleBart's text embedding has "
                f"{cfg.text_vocab_size} rows; use the tokenizer saved with this checkpoint"
            )
        if tokenizer.max_length != cfg.max_text_length:
            raise CheckpointError(
                f"tokenizer pads to {tokenizer.max_length} but DalleBart expects {cfg.max_text_length}"
            )
        if variant.vqgan.grid_size**2 != cfg.image_length:
            raise CheckpointError(
                f"VQGAN makes {variant.vqgan.grid_size}x{variant.vqgan.grid_size} tokens but DalleBart "
                f"samples {cfg.image_length}; the two checkpoints do not belong together"
            )
        self.dtype = _dtype(variant.dtype)
        # sampling runs over per-layer weights and caches (see DecoderLayers): unscan once here
        self._bart = DalleBart(cfg, dtype=self.dtype, scan_layers=False)
        self._vqgan = VQModel(variant.vqgan)
        # only the first n_embed logits are VQGAN codes (BOS and mega's padding rows are not)
        self.num_valid_tokens = min(variant.vqgan.n_embed, cfg.image_vocab_size)
        self._mesh = self._make_mesh()
        self._bart_params = self._replicate(unscan_params(bart_params))
        self._vqgan_params = self._replicate(vqgan_params)

        wrap = jax.jit if jit else (lambda f, **_: f)
        self._prepare_fn = wrap(self._prepare, static_argnames=("guided",))
        self._steps_fn = wrap(
            self._run_steps, static_argnames=("num_steps", "guided"), donate_argnames=("state",)
        )
        self._decode_fn = wrap(self._decode_codes)
        self._decode_grid_fn = wrap(self._decode_code_grid)
        self._encode_fn = wrap(self._encode_pixels)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, dtype: str = "float32", name: str | None = None
    ) -> Generator:
        """A folder with ``dalle/``, ``vqgan/`` and optionally ``clip/`` checkpoint subfolders."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"model folder {path} does not exist")
        missing = [p for p in ("dalle", "vqgan") if not (path / p).is_dir()]
        if missing:
            raise CheckpointError(
                f"{path}: missing subfolder {', '.join(missing)} (expected dalle/, vqgan/, clip/)"
            )
        clip = path / "clip" if (path / "clip").is_dir() else None
        return cls.from_pretrained(
            path / "dalle", path / "vqgan", clip, dtype=dtype, name=name or path.name
        )

    @classmethod
    def from_pretrained(
        cls,
        dalle: str | os.PathLike,
        vqgan: str | os.PathLike,
        clip: str | os.PathLike | None = None,
        dtype: str = "float32",
        name: str | None = None,
    ) -> Generator:
        """Local folders or Hugging Face hub ids (``dalle-mini/dalle-mini``, ...)."""
        from dalle_core.checkpoints.vqgan import load_vqgan

        compute = _dtype(dtype)
        bart_cfg, bart_params = load_dalle_bart(dalle, dtype=compute)
        tokenizer = load_dalle_bart_tokenizer(dalle)
        vq_cfg, vq_params = load_vqgan(vqgan)
        clip_obj, clip_cfg = None, None
        if clip is not None:
            clip_obj = cls._load_clip(clip)
            clip_cfg = clip_obj.cfg
        variant_name = _variant_name(bart_cfg)
        base = VARIANTS.get(variant_name, VARIANTS["mini"])
        variant = ModelVariant(
            name=variant_name,
            bart=bart_cfg,
            vqgan=vq_cfg,
            clip=clip_cfg or base.clip,
            dtype=_dtype_name(compute),
        )
        info = ModelInfo(
            name=name or str(dalle),
            variant=variant_name,
            checkpoint=str(dalle),
            random_init=False,
            dtype=_dtype_name(compute),
        )
        log.info(
            "generator %s: %s DalleBart, VQGAN %dpx, CLIP %s",
            info.name,
            variant_name,
            vq_cfg.resolution,
            "yes" if clip_obj else "no",
        )
        return cls(variant, bart_params, vq_params, tokenizer, info, clip=clip_obj)

    @staticmethod
    def _load_clip(source):
        from dalle_core.rank import Ranker

        return Ranker.from_pretrained(source)

    @classmethod
    def random(cls, variant: str = "tiny", seed: int = 0, dtype: str | None = None) -> Generator:
        """Random weights (``info.random_init``) and a fallback tokenizer: for tests and smoke runs."""
        from dalle_core.models.vqgan import vqgan_param_shapes

        base = get_variant(variant)
        compute = _dtype(dtype or base.dtype)
        base = ModelVariant(base.name, base.bart, base.vqgan, base.clip, dtype=_dtype_name(compute))
        k_bart, k_vq = jax.random.split(jax.random.PRNGKey(seed))
        bart_params = jax.tree_util.tree_map(
            lambda x: x.astype(compute), init_params(base.bart, k_bart)
        )
        # drawn from the traced shapes (no compiled init): a random VQGAN is noise either way
        vq_params = _fan_in_random(vqgan_param_shapes(base.vqgan), k_vq)
        tokenizer = build_fallback_tokenizer(
            min(base.bart.text_vocab_size, 1024), max_length=base.bart.max_text_length
        )
        info = ModelInfo(
            name=f"random-{variant}",
            variant=variant,
            checkpoint="random-init",
            random_init=True,
            dtype=_dtype_name(compute),
        )
        return cls(base, bart_params, vq_params, tokenizer, info)

    # ------------------------------------------------------------------ devices

    def _make_mesh(self):
        devices = jax.local_devices()
        if len(devices) < 2:
            return None
        return jax.sharding.Mesh(np.array(devices), ("data",))

    def _replicate(self, tree):
        if self._mesh is None:
            return tree
        spec = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())
        return jax.device_put(tree, spec)

    def _shard_rows(self, x: np.ndarray):
        """Split the batch axis over local devices when it divides evenly (else keep it whole)."""
        if self._mesh is None or x.shape[0] % self._mesh.size:
            return jnp.asarray(x)
        spec = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec("data"))
        return jax.device_put(x, spec)

    # ------------------------------------------------------------------ pure pieces (jitted)

    def _prepare(self, params, ids, mask, rng, *, guided: bool):
        """Encode text rows, project cross K/V once, and build the initial loop state.

        ids, mask: int32 [R, T_text] with R = 2B when guided (cond rows then uncond rows), else B.
        """
        enc = self._bart.apply({"params": params}, ids, mask, method=DalleBart.encode)
        cross = self._bart.apply({"params": params}, enc, method=DalleBart.cross_kv)
        rows = ids.shape[0]
        batch = rows // 2 if guided else rows
        cfg = self.variant.bart
        cache = init_kv_cache(cfg, rows, self.dtype, per_layer=True)
        state = init_state(cache, rng, batch, cfg.image_length, cfg.image_bos_id)
        return cross, state

    def _step_fn(self, params, cross: CrossKV, mask, scale, guided: bool):
        def step(token, index, cache):
            fed = jnp.concatenate([token, token]) if guided else token
            logits, cache = self._bart.apply(
                {"params": params},
                fed[:, None],
                index,
                cache,
                cross,
                mask,
                method=DalleBart.decode_step,
            )
            logits = logits[:, 0].astype(jnp.float32)
            if guided:
                b = token.shape[0]
                logits = super_condition(logits[:b], logits[b:], scale)
            return logits, cache

        return step

    def _run_steps(
        self,
        params,
        cross,
        mask,
        state: SampleState,
        settings: LogitSettings,
        scale,
        forced_tokens,
        forced_mask,
        *,
        num_steps: int,
        guided: bool,
    ) -> SampleState:
        step = self._step_fn(params, cross, mask, scale, guided)
        return sample_steps(step, state, num_steps, settings, forced_tokens, forced_mask)

    def _decode_codes(self, params, codes):
        """codes int32 [B, grid²] → uint8 [B, H, W, 3]."""
        g = self.variant.vqgan.grid_size
        return self._decode_code_grid(params, codes.reshape(codes.shape[0], g, g))

    def _decode_code_grid(self, params, codes):
        """codes int32 [B, h, w] → uint8 [B, h·f, w·f, 3]."""
        z_q = self._vqgan.apply({"params": params}, codes, method="lookup_grid")
        pixels = self._vqgan.apply({"params": params}, z_q, method="decode")
        return jnp.round(jnp.clip(pixels, 0.0, 1.0) * 255.0).astype(jnp.uint8)

    def _encode_pixels(self, params, pixels):
        _, indices = self._vqgan.apply({"params": params}, pixels, method="encode")
        return indices.astype(jnp.int32)

    # ------------------------------------------------------------------ public API

    def _text_rows(self, prompts: Sequence[str], n: int, negative_prompt: str | None, guided: bool):
        cond = self.tokenizer(list(prompts))
        ids = np.repeat(cond["input_ids"], n, axis=0)
        mask = np.repeat(cond["attention_mask"], n, axis=0)
        if guided:
            if negative_prompt:
                un = self.tokenizer([negative_prompt])
            else:  # dalle-mini tokenizes the unconditional empty prompt raw: <s></s>
                un = self.tokenizer([""], normalize=False)
            ids = np.concatenate([ids, np.repeat(un["input_ids"], len(ids), axis=0)])
            mask = np.concatenate([mask, np.repeat(un["attention_mask"], len(mask), axis=0)])
        return ids, mask

    def _forced(self, forced_tokens, forced_mask, p: int, n: int):
        """Accept [P, L], [P, g, g], [P, n, L] or [P, n, g, g]; → int32/bool [P·n, L]."""
        if forced_tokens is None and forced_mask is None:
            return None, None
        if forced_tokens is None or forced_mask is None:
            raise ValueError("forced_tokens and forced_mask go together: pass both or neither")
        length = self.variant.bart.image_length
        out = []
        for name, arr, dtype in (
            ("forced_tokens", forced_tokens, np.int32),
            ("forced_mask", forced_mask, bool),
        ):
            arr = np.asarray(arr)
            if arr.shape[0] != p:
                raise ValueError(f"{name} has {arr.shape[0]} rows for {p} prompts")
            flat = arr.reshape(p, -1)
            if flat.shape[1] == length:
                arr = np.repeat(flat[:, None], n, axis=1)
            elif flat.shape[1] == n * length:
                arr = flat.reshape(p, n, length)
            else:
                raise ValueError(
                    f"{name} has shape {arr.shape}; expected [P, {length}] or [P, n, {length}] "
                    f"(or with the last axis as {self.variant.bart.grid_size}x{self.variant.bart.grid_size})"
                )
            out.append(arr.reshape(p * n, length).astype(dtype))
        tokens, mask = out
        if mask.any() and (tokens[mask].min() < 0 or tokens[mask].max() >= self.num_valid_tokens):
            raise ValueError(f"forced tokens must be VQGAN codes in [0, {self.num_valid_tokens})")
        return tokens, mask

    def sample_tokens(
        self,
        prompts: Sequence[str],
        n: int,
        seed: int,
        settings: SamplingSettings = _DEFAULT_SETTINGS,
        negative_prompt: str | None = None,
        forced_tokens=None,
        forced_mask=None,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Sample image tokens → int32 [P, n, grid, grid]. Same seed and inputs → same tokens.

        condition_scale 1 skips the unconditional rows (plain conditional sampling). ``progress``
        is called as ``progress(done_tokens, total_tokens)`` every few tokens; without it the
        whole decode is one compiled scan.
        """
        if isinstance(prompts, str) or not len(prompts):
            raise TypeError("prompts must be a non-empty list of strings")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        cfg = self.variant.bart
        p = len(prompts)
        guided = float(settings.condition_scale) != 1.0
        logit_settings = LogitSettings.create(
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            num_valid=self.num_valid_tokens,
        )
        ftok, fmask = self._forced(forced_tokens, forced_mask, p, n)
        ids, mask = self._text_rows(prompts, n, negative_prompt, guided)
        ids, mask = self._shard_rows(ids), self._shard_rows(mask)
        if ftok is not None:
            ftok, fmask = self._shard_rows(ftok), self._shard_rows(fmask)
        rng = jax.random.PRNGKey(int(seed) & 0xFFFFFFFF)
        scale = jnp.float32(settings.condition_scale)

        cross, state = self._prepare_fn(self._bart_params, ids, mask, rng, guided=guided)
        total = cfg.image_length
        chunks = 1
        if progress is not None:
            chunks = max(k for k in range(1, _PROGRESS_CHUNKS + 1) if total % k == 0)
        for _ in range(chunks):
            state = self._steps_fn(
                self._bart_params,
                cross,
                mask,
                state,
                logit_settings,
                scale,
                ftok,
                fmask,
                num_steps=total // chunks,
                guided=guided,
            )
            if progress is not None:
                progress(int(state.index), total)  # int() waits for the chunk: honest progress
        tokens = np.asarray(state.tokens)
        return tokens.reshape(p, n, cfg.grid_size, cfg.grid_size)

    def decode(self, tokens) -> np.ndarray:
        """VQGAN codes int [..., grid, grid] → uint8 pixels [..., H, W, 3] (fp32 VQGAN)."""
        tokens = np.asarray(tokens)
        g = self.variant.vqgan.grid_size
        if tokens.ndim < 2 or tokens.shape[-2:] != (g, g):
            raise ValueError(f"tokens must end in ({g}, {g}), got shape {tokens.shape}")
        lead = tokens.shape[:-2]
        flat = self._check_codes(tokens.reshape(-1, g * g))
        res = self.variant.vqgan.resolution
        out = _batched(self._decode_fn, self._vqgan_params, flat)
        return out.reshape(lead + (res, res, 3))

    def decode_grid(self, tokens) -> np.ndarray:
        """VQGAN codes int [h, w] of any size → uint8 pixels [h·f, w·f, 3] (outpainting's wide
        grids; the VQGAN is convolutional, so the grid is decoded whole). Compiled per shape."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be a 2-D grid [h, w], got shape {tokens.shape}")
        tokens = self._check_codes(tokens)
        return np.asarray(self._decode_grid_fn(self._vqgan_params, tokens[None]))[0]

    def _check_codes(self, tokens: np.ndarray) -> np.ndarray:
        """Refuse ids outside the VQGAN codebook; → int32."""
        n_embed = self.variant.vqgan.n_embed
        if tokens.size and (tokens.min() < 0 or tokens.max() >= n_embed):
            raise ValueError(f"tokens must be VQGAN codes in [0, {n_embed})")
        return tokens.astype(np.int32)

    def encode(self, images) -> np.ndarray:
        """uint8 images [B, H, W, 3] → VQGAN codes int32 [B, grid, grid].

        Images that are not at the VQGAN resolution are centre-cropped to a square and resized
        (bicubic).
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [B, H, W, 3], got shape {images.shape}")
        res = self.variant.vqgan.resolution
        pixels = np.stack([_fit(im, res) for im in images]).astype(np.float32) / 255.0
        g = self.variant.vqgan.grid_size
        return _batched(self._encode_fn, self._vqgan_params, pixels).reshape(len(images), g, g)

    def score(self, prompts: Sequence[str], images) -> np.ndarray | None:
        """CLIP score of each image against its prompt: images uint8 [P, n, H, W, 3] → float32 [P, n].

        None when no CLIP model is loaded.
        """
        if self._clip is None:
            return None
        images = np.asarray(images)
        if images.ndim != 5 or images.shape[0] != len(prompts):
            raise ValueError(
                f"images must be [P={len(prompts)}, n, H, W, 3], got shape {images.shape}"
            )
        p, n = images.shape[:2]
        flat = images.reshape((p * n,) + images.shape[2:]).astype(np.uint8)
        text_index = np.repeat(np.arange(p, dtype=np.int32), n)
        return np.asarray(self._clip.scores(flat, list(prompts), text_index), np.float32).reshape(
            p, n
        )

    def embed_text(self, texts: Sequence[str]) -> np.ndarray | None:
        """L2-normalised CLIP text embeddings float32 [N, D]; None when no CLIP model is loaded."""
        if self._clip is None:
            return None
        return np.asarray(self._clip.text_embeddings(list(texts)), np.float32)

    @property
    def has_clip(self) -> bool:
        return self._clip is not None

    @property
    def clip_views(self) -> int | None:
        """How many views of each image CLIP scores (``set_clip_view_shift``); None without CLIP."""
        return None if self._clip is None else len(self._clip.offsets)

    def set_clip_view_shift(self, view_shift: float) -> None:
        """Score with other CLIP views (``dalle_core.rank.view_offsets``; 0 = the plain image alone,
        the default shifts by 3/8 of a patch); nothing to do without CLIP."""
        if self._clip is not None:
            self._clip = self._clip.with_view_shift(view_shift)

    @property
    def clip_drop_words(self) -> tuple[str, ...] | None:
        """Words whose prompts CLIP also scores without them (``set_clip_drop_words``); None without CLIP."""
        return None if self._clip is None else self._clip.drop_words

    def set_clip_drop_words(self, drop_words: Sequence[str]) -> None:
        """Score prompts that hold any of ``drop_words`` also without them, averaged
        (``dalle_core.rank.prompt_views``; () = the prompt alone, the default drops size words);
        nothing to do without CLIP."""
        if self._clip is not None:
            self._clip = self._clip.with_drop_words(drop_words)

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 4,
        seed: int = 0,
        settings: SamplingSettings = _DEFAULT_SETTINGS,
        negative_prompt: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[list[Candidate]]:
        """Sample, decode and rank: per prompt, ``n`` candidates best first (by CLIP score when
        CLIP is loaded, else in sampling order)."""
        tokens = self.sample_tokens(prompts, n, seed, settings, negative_prompt, progress=progress)
        images = self.decode(tokens)
        scores = self.score(prompts, images)
        out = []
        for i in range(len(prompts)):
            cands = [
                Candidate(
                    image=images[i, j],
                    tokens=tokens[i, j],
                    score=None if scores is None else float(scores[i, j]),
                    prompt_index=i,
                    sample_index=j,
                )
                for j in range(n)
            ]
            if scores is not None:
                cands.sort(key=lambda c: -c.score)
            out.append(cands)
        return out


def _fan_in_random(shapes, rng: jax.Array) -> dict:
    """Random params for a shape tree: kernels/embeddings ~ N(0, 1/fan_in), scales 1, biases 0."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    seed = np.asarray(jax.random.key_data(rng)).astype(np.uint32)
    gen = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            out.append(jnp.ones(leaf.shape, jnp.float32))
        elif name.endswith("['bias']") or len(leaf.shape) < 2:
            out.append(jnp.zeros(leaf.shape, jnp.float32))
        else:
            fan_in = int(np.prod(leaf.shape[:-1]))
            out.append(jnp.asarray(gen.standard_normal(leaf.shape, np.float32) / np.sqrt(fan_in)))
    return jax.tree_util.tree_unflatten(treedef, out)


def _batched(fn, params, x: np.ndarray) -> np.ndarray:
    """Run ``fn(params, chunk)`` over fixed-size chunks (last one padded): few compiles, bounded memory."""
    batch = min(_DECODE_BATCH, _pow2_at_least(max(1, len(x))))
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        outs.append(np.asarray(fn(params, chunk))[: batch - pad])
    return np.concatenate(outs)


def _fit(image: np.ndarray, res: int) -> np.ndarray:
    """uint8 [H, W, 3] → [res, res, 3]: centre square crop, bicubic resize."""
    h, w = image.shape[:2]
    if (h, w) == (res, res):
        return image
    from PIL import Image

    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.asarray(image, np.uint8)[top : top + side, left : left + side])
    return np.asarray(crop.resize((res, res), Image.BICUBIC))
