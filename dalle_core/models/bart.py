"""DalleBart: the seq2seq transformer that maps text tokens to VQGAN image tokens.

Pure Flax, no I/O. The parameter tree is the one dalle-mini publishes (``flax_model.msgpack``)::

    model/encoder/embed_tokens/embedding                 [text_vocab, d]
    model/encoder/embed_positions/embedding              [max_text_length, d]
    model/encoder/layernorm_embedding/{scale,bias}
    model/encoder/layers/FlaxBartEncoderLayers/...       every leaf has a leading layer axis
    model/encoder/final_ln/bias
    model/decoder/embed_tokens/embedding                 [image_vocab + 1, d]  (+1: BOS)
    model/decoder/embed_positions/embedding              [image_length, d]
    model/decoder/layernorm_embedding/{scale,bias}
    model/decoder/layers/FlaxBartDecoderLayers/...
    model/decoder/final_ln/bias
    lm_head/kernel                                       [d, image_vocab + 1]

Inside a layer (NormFormer, dalle-mini's ``FlaxBart{Encoder,Decoder}Layer``): ``LayerNorm_0``
(pre, bias only) → ``FlaxBartAttention_0`` → ``LayerNorm_1`` (post, scale and bias); the decoder
adds ``LayerNorm_2`` → ``FlaxBartAttention_1`` (cross) → ``LayerNorm_3``; then ``GLU_0`` with
``LayerNorm_0`` (bias only), ``Dense_0``/``Dense_1`` (gelu gate), ``LayerNorm_1`` (bias only),
``Dense_2``. dalle-mini builds the pre-LNs and both GLU LNs with ``use_scale=force_ln_scale``,
which is False in every published config, so those carry no ``scale``. No biases in any Dense.

Decoding modes of the decoder:

* teacher-forced over a whole sequence (training, tests): :meth:`DalleBart.__call__`,
  :meth:`DalleBart.decode`;
* incremental with a preallocated self-attention cache: :meth:`DalleBart.cross_kv` projects the
  encoder states into per-layer cross-attention keys/values once per prompt, and
  :meth:`DalleBart.decode_step` runs one (or a few) positions, writing its keys/values into the
  cache with ``lax.dynamic_update_slice``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dalle_core.config import BartConfig

Dtype = Any

# Masked attention logits; finite so that a fully masked row cannot produce NaNs.
_MASK_VALUE = -1e9


@flax.struct.dataclass
class KVCache:
    """Self-attention keys/values of every decoder layer.

    k, v: [layers, batch, heads, image_length, head_dim] in the compute dtype (heads before
    positions so that attention reads them without a transpose), or, for a model built with
    ``scan_layers=False``, tuples of one [batch, heads, image_length, head_dim] array per layer.
    Position ``t`` is written when the token at position ``t`` is fed to
    :meth:`DalleBart.decode_step`.
    """

    k: jax.Array
    v: jax.Array


@flax.struct.dataclass
class CrossKV:
    """Cross-attention keys/values of every decoder layer, from :meth:`DalleBart.cross_kv`.

    k, v: [layers, batch, heads, max_text_length, head_dim] (tuples of per-layer arrays with
    ``scan_layers=False``); computed once per prompt.
    """

    k: jax.Array
    v: jax.Array


def init_kv_cache(
    cfg: BartConfig, batch: int, dtype: Dtype = jnp.float32, per_layer: bool = False
) -> KVCache:
    """A zero cache for ``batch`` rows (positions not yet written are masked out anyway).

    ``per_layer``: one array per layer (for ``scan_layers=False`` models) instead of one stack.
    """
    head_dim = cfg.d_model // cfg.attention_heads
    shape = (batch, cfg.attention_heads, cfg.image_length, head_dim)
    if per_layer:
        def layers():
            return tuple(jnp.zeros(shape, dtype) for _ in range(cfg.decoder_layers))

        return KVCache(k=layers(), v=layers())
    shape = (cfg.decoder_layers, *shape)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


def _dense(features: int, cfg: BartConfig, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=False,
        dtype=dtype,
        kernel_init=nn.initializers.normal(cfg.init_std),
        name=name,
    )


def _layer_norm(cfg: BartConfig, dtype: Dtype, name: str, use_scale: bool = True) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.ln_eps, dtype=dtype, use_scale=use_scale, name=name)


def _text_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, T_text] 0/1 → boolean key mask [B, 1, 1, T_text] (broadcast over heads and queries)."""
    return (attention_mask > 0)[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention without biases (dalle-mini's ``FlaxBartAttention``)."""

    cfg: BartConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        d = self.cfg.d_model
        self.q_proj = _dense(d, self.cfg, self.dtype, "q_proj")
        self.k_proj = _dense(d, self.cfg, self.dtype, "k_proj")
        self.v_proj = _dense(d, self.cfg, self.dtype, "v_proj")
        self.out_proj = _dense(d, self.cfg, self.dtype, "out_proj")

    def _heads(self, x: jax.Array) -> jax.Array:
        heads = self.cfg.attention_heads
        return x.reshape(x.shape[:-1] + (heads, self.cfg.d_model // heads))

    def project_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [B, T, d] → keys, values [B, T, heads, head_dim]."""
        return self._heads(self.k_proj(x)), self._heads(self.v_proj(x))

    def __call__(
        self, x: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, heads_first: bool = False
    ) -> jax.Array:
        """x [B, Tq, d] attends to k, v [B, Tk, heads, head_dim] (or [B, heads, Tk, head_dim] with
        ``heads_first``, the cache layout); mask broadcasts to [B, heads, Tq, Tk]."""
        q = self._heads(self.q_proj(x))
        depth = q.shape[-1]
        kv = "bhkd" if heads_first else "bkhd"
        logits = jnp.einsum(f"bqhd,{kv}->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(depth)
        logits = jnp.where(mask, logits, _MASK_VALUE)
        # softmax in fp32 for bf16/fp16 compute; dalle-mini's default path is fp32 throughout
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum(f"bhqk,{kv}->bqhd", weights, v.astype(self.dtype))
        return self.out_proj(out.reshape(out.shape[:2] + (self.cfg.d_model,)))


class GLU(nn.Module):
    """``LN → gelu(Dense_0 x) * Dense_1 x → LN → Dense_2`` (both LNs bias only)."""

    cfg: BartConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dt = self.cfg, self.dtype
        x = _layer_norm(cfg, dt, "LayerNorm_0", use_scale=False)(x)
        gate = nn.gelu(_dense(cfg.glu_dim, cfg, dt, "Dense_0")(x), approximate=False)
        x = gate * _dense(cfg.glu_dim, cfg, dt, "Dense_1")(x)
        x = _layer_norm(cfg, dt, "LayerNorm_1", use_scale=False)(x)
        return _dense(cfg.d_model, cfg, dt, "Dense_2")(x)


class EncoderLayer(nn.Module):
    """One NormFormer encoder layer; scanned over the layer axis (carry = hidden states)."""

    cfg: BartConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, _: None, mask: jax.Array) -> tuple[jax.Array, None]:
        cfg, dt = self.cfg, self.dtype
        attn = Attention(cfg, dt, name="FlaxBartAttention_0")
        h = _layer_norm(cfg, dt, "LayerNorm_0", use_scale=False)(x)
        k, v = attn.project_kv(h)
        h = attn(h, k, v, mask)
        x = x + _layer_norm(cfg, dt, "LayerNorm_1")(h)
        x = x + GLU(cfg, dt, name="GLU_0")(x)
        return x, None


class DecoderLayer(nn.Module):
    """One NormFormer decoder layer, scanned over the layer axis (or called once per layer).

    ``mode`` picks what one scan step does:
      * ``"full"``: teacher-forced; carry x [B, T, d]; per-layer input None; broadcast
        (encoder_states, text_mask).
      * ``"step"``: carry (x [B, T, d] at positions ``index .. index+T-1``, the whole cache's
        k and v [layers, B, heads, S, head_dim]); per-layer input (cross_k, cross_v, layer id);
        broadcast (text_mask, index). Unscanned, the layer id is None and k, v are this layer's
        own [B, heads, S, head_dim] cache.
      * ``"cross_kv"``: carry encoder_states [B, T_text, d] (unchanged); per-layer output the
        cross-attention (k, v).
    """

    cfg: BartConfig
    dtype: Dtype = jnp.float32
    mode: str = "full"

    @nn.compact
    def __call__(self, x, xs, bcast):
        cfg, dt = self.cfg, self.dtype
        self_attn = Attention(cfg, dt, name="FlaxBartAttention_0")
        cross_attn = Attention(cfg, dt, name="FlaxBartAttention_1")
        if self.mode == "cross_kv":
            k, v = cross_attn.project_kv(x)
            return x, (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
        cache = None
        if self.mode == "step":
            x, cache = x[0], x[1:]
        # self-attention block
        h = _layer_norm(cfg, dt, "LayerNorm_0", use_scale=False)(x)
        k, v = self_attn.project_kv(h)
        steps = x.shape[1]
        if self.mode == "full":
            encoder_states, text_mask = bcast
            causal = jnp.tril(jnp.ones((steps, steps), bool))[None, None]
            cross_k, cross_v = cross_attn.project_kv(encoder_states)
        elif self.mode == "step":
            cross_k, cross_v, layer = xs
            text_mask, index = bcast
            # The whole cache rides in the carry and only this token's K/V is written, in place;
            # passing per-layer caches as scan inputs/outputs would copy all of it every step.
            all_k, all_v = cache
            new_k = k.transpose(0, 2, 1, 3).astype(all_k.dtype)  # [B, heads, T, head_dim]
            new_v = v.transpose(0, 2, 1, 3).astype(all_v.dtype)
            if layer is None:  # this layer's own cache array: attention reads it in place
                all_k = lax.dynamic_update_slice(all_k, new_k, (0, 0, index, 0))
                all_v = lax.dynamic_update_slice(all_v, new_v, (0, 0, index, 0))
                k, v = all_k, all_v
            else:
                all_k = lax.dynamic_update_slice(all_k, new_k[None], (layer, 0, 0, index, 0))
                all_v = lax.dynamic_update_slice(all_v, new_v[None], (layer, 0, 0, index, 0))
                k = lax.dynamic_index_in_dim(all_k, layer, keepdims=False)
                v = lax.dynamic_index_in_dim(all_v, layer, keepdims=False)
            cache = (all_k, all_v)
            # query at position index+i sees cache positions <= index+i (later ones are stale zeros)
            query_pos = index + jnp.arange(steps)
            causal = (jnp.arange(k.shape[2])[None, :] <= query_pos[:, None])[None, None]
        else:
            raise ValueError(
                f"unknown decoder mode {self.mode!r}; use 'full', 'step' or 'cross_kv'"
            )
        h = self_attn(h, k, v, causal, heads_first=self.mode == "step")
        x = x + _layer_norm(cfg, dt, "LayerNorm_1")(h)

        # cross-attention block
        h = _layer_norm(cfg, dt, "LayerNorm_2", use_scale=False)(x)
        h = cross_attn(h, cross_k, cross_v, text_mask, heads_first=self.mode == "step")
        x = x + _layer_norm(cfg, dt, "LayerNorm_3")(h)

        x = x + GLU(cfg, dt, name="GLU_0")(x)
        if self.mode == "step":
            return (x, *cache), None
        return x, None


def _scan(layer_cls, length: int, **kwargs):
    """``nn.scan`` over layers: params get a leading layer axis (dalle-mini's scanned layout)."""
    return nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast),
        length=length,
    )(**kwargs)


class EncoderLayers(nn.Module):
    """The encoder stack: one ``nn.scan`` (stacked params, dalle-mini's published layout) or,
    with ``scan_layers=False``, one ``FlaxBartEncoderLayer_{i}`` submodule per layer."""

    cfg: BartConfig
    dtype: Dtype = jnp.float32
    scan_layers: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, text_mask: jax.Array) -> jax.Array:
        if not self.scan_layers:
            for i in range(self.cfg.encoder_layers):
                x, _ = EncoderLayer(self.cfg, self.dtype, name=f"FlaxBartEncoderLayer_{i}")(x, None, text_mask)
            return x
        layers = _scan(
            EncoderLayer,
            self.cfg.encoder_layers,
            cfg=self.cfg,
            dtype=self.dtype,
            name="FlaxBartEncoderLayers",
        )
        x, _ = layers(x, None, text_mask)
        return x


class DecoderLayers(nn.Module):
    """The decoder stack, scanned or (``scan_layers=False``) one submodule per layer.

    Unscanned, the per-layer inputs and cache are tuples with one entry per layer. Incremental
    decoding is faster that way: a scanned step slices every layer's weights and cache out of
    their stacks, and XLA materialises those slices, copying all the weights on every token.
    """

    cfg: BartConfig
    dtype: Dtype = jnp.float32
    scan_layers: bool = True

    @nn.compact
    def __call__(self, x, xs, bcast, mode: str):
        if not self.scan_layers:
            return self._unrolled(x, xs, bcast, mode)
        layers = _scan(
            DecoderLayer,
            self.cfg.decoder_layers,
            cfg=self.cfg,
            dtype=self.dtype,
            mode=mode,
            name="FlaxBartDecoderLayers",
        )
        return layers(x, xs, bcast)

    def _unrolled(self, x, xs, bcast, mode: str):
        n = self.cfg.decoder_layers
        layers = [
            DecoderLayer(self.cfg, self.dtype, mode=mode, name=f"FlaxBartDecoderLayer_{i}")
            for i in range(n)
        ]
        if mode == "full":
            for layer in layers:
                x, _ = layer(x, None, bcast)
            return x, None
        if mode == "cross_kv":
            kv = [layer(x, None, None)[1] for layer in layers]
            return x, (tuple(k for k, _ in kv), tuple(v for _, v in kv))
        (x, ks, vs), (cross_k, cross_v, _) = x, xs
        new_k, new_v = [], []
        for i, layer in enumerate(layers):
            (x, k, v), _ = layer((x, ks[i], vs[i]), (cross_k[i], cross_v[i], None), bcast)
            new_k.append(k)
            new_v.append(v)
        return (x, tuple(new_k), tuple(new_v)), None


class Encoder(nn.Module):
    cfg: BartConfig
    dtype: Dtype = jnp.float32
    scan_layers: bool = True

    def setup(self):
        cfg, dt = self.cfg, self.dtype
        init = nn.initializers.normal(cfg.init_std)
        self.embed_tokens = nn.Embed(
            cfg.text_vocab_size, cfg.d_model, embedding_init=init, dtype=dt
        )
        self.embed_positions = nn.Embed(
            cfg.max_text_length, cfg.d_model, embedding_init=init, dtype=dt
        )
        self.layernorm_embedding = _layer_norm(cfg, dt, "layernorm_embedding")
        self.layers = EncoderLayers(cfg, dt, self.scan_layers)
        self.final_ln = _layer_norm(cfg, dt, "final_ln", use_scale=False)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """input_ids, attention_mask int [B, T_text] → encoder states [B, T_text, d] (compute dtype)."""
        positions = jnp.arange(input_ids.shape[1])
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)[None]
        x = self.layernorm_embedding(x)
        x = self.layers(x, _text_mask(attention_mask))
        return self.final_ln(x)


class Decoder(nn.Module):
    cfg: BartConfig
    dtype: Dtype = jnp.float32
    scan_layers: bool = True

    def setup(self):
        cfg, dt = self.cfg, self.dtype
        init = nn.initializers.normal(cfg.init_std)
        self.embed_tokens = nn.Embed(
            cfg.image_vocab_size + 1, cfg.d_model, embedding_init=init, dtype=dt
        )
        self.embed_positions = nn.Embed(
            cfg.image_length, cfg.d_model, embedding_init=init, dtype=dt
        )
        self.layernorm_embedding = _layer_norm(cfg, dt, "layernorm_embedding")
        self.layers = DecoderLayers(cfg, dt, self.scan_layers)
        self.final_ln = _layer_norm(cfg, dt, "final_ln", use_scale=False)

    def _embed(self, tokens: jax.Array, start: jax.Array | int) -> jax.Array:
        positions = start + jnp.arange(tokens.shape[1])
        x = self.embed_tokens(tokens) + self.embed_positions(positions)[None]
        return self.layernorm_embedding(x)

    def __call__(self, tokens, encoder_states, attention_mask):
        """Teacher-forced: tokens [B, T] (BOS first) → hidden [B, T, d]."""
        x = self._embed(tokens, 0)
        x, _ = self.layers(x, None, (encoder_states, _text_mask(attention_mask)), mode="full")
        return self.final_ln(x)

    def cross_kv(self, encoder_states: jax.Array) -> CrossKV:
        _, (k, v) = self.layers(encoder_states, None, None, mode="cross_kv")
        return CrossKV(k=k, v=v)

    def step(self, tokens, index, cache: KVCache, cross: CrossKV, attention_mask):
        x = self._embed(tokens, index)
        layer_ids = jnp.arange(self.cfg.decoder_layers) if self.scan_layers else None
        xs = (cross.k, cross.v, layer_ids)
        (x, k, v), _ = self.layers(
            (x, cache.k, cache.v), xs, (_text_mask(attention_mask), index), mode="step"
        )
        return self.final_ln(x), KVCache(k=k, v=v)


class BartModel(nn.Module):
    cfg: BartConfig
    dtype: Dtype = jnp.float32
    scan_layers: bool = True

    def setup(self):
        self.encoder = Encoder(self.cfg, self.dtype, self.scan_layers)
        self.decoder = Decoder(self.cfg, self.dtype, self.scan_layers)


class DalleBart(nn.Module):
    """Text tokens → logits over image tokens. ``dtype`` is the compute dtype; params stay as given.

    Logits have ``image_vocab_size + 1`` columns; only the first ``n_embed`` (VQGAN codebook size)
    are real image codes, so samplers mask the rest.
    """

    config: BartConfig
    dtype: Dtype = jnp.float32
    scan_layers: bool = True  # False: per-layer params (``FlaxBart*Layer_{i}``), for fast decoding

    def setup(self):
        self.model = BartModel(self.config, self.dtype, self.scan_layers)
        self.lm_head = _dense(self.config.image_vocab_size + 1, self.config, self.dtype, "lm_head")

    def __call__(self, input_ids, attention_mask, decoder_input_ids) -> jax.Array:
        """Teacher-forced forward pass (training, tests, ``init``).

        input_ids, attention_mask: int32 [B, max_text_length]; decoder_input_ids: int32 [B, T]
        with BOS at position 0 and T <= image_length. Returns logits [B, T, image_vocab_size + 1].
        """
        encoder_states = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, encoder_states, attention_mask)

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """int32 [B, T_text] → encoder states [B, T_text, d_model] (compute dtype)."""
        return self.model.encoder(input_ids, attention_mask)

    def decode(self, decoder_input_ids, encoder_states, attention_mask) -> jax.Array:
        """Teacher-forced decoder: [B, T] tokens → logits [B, T, image_vocab_size + 1]."""
        hidden = self.model.decoder(decoder_input_ids, encoder_states, attention_mask)
        return self.lm_head(hidden)

    def cross_kv(self, encoder_states: jax.Array) -> CrossKV:
        """Project encoder states [B, T_text, d] into every layer's cross-attention K/V, once."""
        return self.model.decoder.cross_kv(encoder_states)

    def decode_step(self, tokens, index, cache: KVCache, cross: CrossKV, attention_mask):
        """Incremental decoding.

        tokens: int32 [B, T] at positions ``index .. index+T-1`` (T is usually 1; the token at
            position 0 is BOS); index: int32 scalar (traced is fine).
        cache: :class:`KVCache` for B rows; cross: :class:`CrossKV` for B rows;
        attention_mask: the text mask [B, T_text].
        Returns (logits [B, T, image_vocab_size + 1] in the compute dtype, updated cache).
        """
        hidden, cache = self.model.decoder.step(tokens, index, cache, cross, attention_mask)
        return self.lm_head(hidden), cache


def init_params(cfg: BartConfig, rng: jax.Array, dtype: Dtype = jnp.float32) -> dict:
    """Random params (scanned layout) for ``cfg``: ``{"model": ..., "lm_head": ...}``.

    Same distributions as the modules' initializers (kernels and embeddings ~ N(0, init_std),
    LayerNorm scale 1 and bias 0), drawn leaf by leaf from the shapes ``param_shapes`` traces, so
    nothing is compiled: random-init models and tests start in well under a second.
    """
    from flax.traverse_util import flatten_dict, unflatten_dict

    flat = flatten_dict(param_shapes(cfg))
    keys = jax.random.split(rng, len(flat))
    out = {}
    for key, (path, leaf) in zip(keys, sorted(flat.items()), strict=True):
        if path[-1] == "scale":
            value = np.ones(leaf.shape, np.float32)
        elif path[-1] == "bias":
            value = np.zeros(leaf.shape, np.float32)
        else:
            seed = np.asarray(jax.random.key_data(key)).astype(np.uint32)
            value = (
                np.random.default_rng(seed).standard_normal(leaf.shape, np.float32) * cfg.init_std
            )
        out[path] = jnp.asarray(value, dtype)
    return unflatten_dict(out)


_STACKS = {"encoder": "FlaxBartEncoderLayers", "decoder": "FlaxBartDecoderLayers"}


def unscan_params(params: dict) -> dict:
    """Scanned params → the tree of ``DalleBart(scan_layers=False)``: each stack
    ``FlaxBart{Encoder,Decoder}Layers`` (leading layer axis) becomes ``FlaxBart…Layer_{i}``
    subtrees, dalle-mini's unscanned names. Stacks already unscanned are left as they are.
    """
    model = dict(params["model"])
    for stack, name in _STACKS.items():
        layers = model[stack]["layers"]
        if name not in layers:
            continue
        stacked = layers[name]
        n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
        per_layer = {f"{name[:-1]}_{i}": jax.tree_util.tree_map(lambda a, i=i: a[i], stacked) for i in range(n)}
        model[stack] = {**model[stack], "layers": per_layer}
    return {**params, "model": model}


def param_shapes(cfg: BartConfig) -> dict:
    """``{"model": ..., "lm_head": ...}`` of ``jax.ShapeDtypeStruct`` without allocating."""
    model = DalleBart(cfg)
    ids = jnp.ones((1, cfg.max_text_length), jnp.int32)
    dec = jnp.ones((1, 1), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, ids, dec)["params"]
