"""CLIP (ViT text/image dual encoder) as a pure Flax module with Hugging Face's Flax parameter names.

The tree is the one ``FlaxCLIPModel`` stores in ``flax_model.msgpack``:
``text_model/embeddings/{token,position}_embedding/embedding``,
``text_model/encoder/layers/{i}/{self_attn/{q,k,v,out}_proj, layer_norm1, mlp/fc{1,2}, layer_norm2}``,
``text_model/final_layer_norm``, ``vision_model/embeddings/{class_embedding, patch_embedding/kernel,
position_embedding/embedding}``, ``vision_model/pre_layrnorm`` (sic), ``vision_model/encoder/...``,
``vision_model/post_layernorm``, ``text_projection/kernel``, ``visual_projection/kernel`` (no biases)
and a scalar ``logit_scale``. ``dalle_core.checkpoints.clip`` maps PyTorch names onto it.

Pre-LN transformer blocks with quick_gelu; the text tower is causal and pools at the EOS token, the
vision tower pools the class token. Images are NHWC, already CLIP-normalised (see ``rank.clip_preprocess``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle_core.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

# Before transformers PR #24773 CLIP configs carried eos_token_id=2 and HF pooled at argmax(ids)
# (the EOS is the highest id in CLIP's vocab); newer configs name the real EOS id and HF pools at
# its first occurrence. We follow the same rule so both kinds of config pool where HF does.
_LEGACY_EOS_ID = 2


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's GELU approximation ``x · σ(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


def _layer_norm(eps: float, name: str | None = None) -> nn.LayerNorm:
    # LayerNorm statistics in float32 whatever the compute dtype.
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, name=name)


class Attention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections."""

    hidden: int
    heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x [B, L, H]; mask bool [B, 1, L, L] (True = may attend) or None → [B, L, H]."""
        b, length, _ = x.shape
        head_dim = self.hidden // self.heads

        def proj(name):
            return nn.Dense(self.hidden, dtype=self.dtype, name=name)

        def split(t):
            return t.reshape(b, length, self.heads, head_dim)

        q = split(proj("q_proj")(x))
        k = split(proj("k_proj")(x))
        v = split(proj("v_proj")(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
        if mask is not None:
            # where (not +bias) so a fully masked row gives a uniform softmax instead of NaN
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, self.hidden)
        return proj("out_proj")(out)


class EncoderLayer(nn.Module):
    """Pre-LN block: ``x + attn(LN1 x)`` then ``x + fc2(quick_gelu(fc1(LN2 x)))``."""

    config: CLIPTextConfig | CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        cfg = self.config
        h = _layer_norm(cfg.layer_norm_eps, "layer_norm1")(x).astype(self.dtype)
        x = x + Attention(cfg.hidden_size, cfg.num_attention_heads, self.dtype, name="self_attn")(h, mask)
        h = _layer_norm(cfg.layer_norm_eps, "layer_norm2")(x).astype(self.dtype)
        h = MLP(cfg.hidden_size, cfg.intermediate_size, self.dtype, name="mlp")(h)
        return x + h


class MLP(nn.Module):
    hidden: int
    intermediate: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = quick_gelu(nn.Dense(self.intermediate, dtype=self.dtype, name="fc1")(x))
        return nn.Dense(self.hidden, dtype=self.dtype, name="fc2")(x)


class _LayerCollection(nn.Module):
    config: CLIPTextConfig | CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            x = EncoderLayer(self.config, self.dtype, name=str(i))(x, mask)
        return x


class Encoder(nn.Module):
    """``encoder/layers/{i}`` as in HF's Flax CLIP (a layer collection inside the encoder)."""

    config: CLIPTextConfig | CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return _LayerCollection(self.config, self.dtype, name="layers")(x, mask)


class TextEmbeddings(nn.Module):
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg = self.config
        tok = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, name="token_embedding")
        pos = nn.Embed(
            cfg.max_position_embeddings, cfg.hidden_size, dtype=self.dtype, name="position_embedding"
        )
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        return tok(input_ids) + pos(positions)


class TextTransformer(nn.Module):
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """ids int [B, L], mask int/bool [B, L] → pooled EOS state float32 [B, hidden]."""
        cfg = self.config
        b, length = input_ids.shape
        if length > cfg.max_position_embeddings:
            raise ValueError(
                f"CLIP text length {length} exceeds max_position_embeddings {cfg.max_position_embeddings}"
            )
        x = TextEmbeddings(cfg, self.dtype, name="embeddings")(input_ids)
        causal = jnp.tril(jnp.ones((length, length), bool))
        mask = causal[None, None] & (attention_mask > 0)[:, None, None, :]
        x = Encoder(cfg, self.dtype, name="encoder")(x, mask)
        x = _layer_norm(cfg.layer_norm_eps, "final_layer_norm")(x)
        if cfg.eos_token_id == _LEGACY_EOS_ID:
            eos_pos = jnp.argmax(input_ids, axis=-1)
        else:
            eos_pos = jnp.argmax((input_ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
        return x[jnp.arange(b), eos_pos]


class VisionEmbeddings(nn.Module):
    config: CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        cfg = self.config
        p = cfg.patch_size
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.hidden_size,))
        patches = nn.Conv(
            cfg.hidden_size,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            name="patch_embedding",
        )(pixel_values.astype(self.dtype))
        b, gh, gw, d = patches.shape
        patches = patches.reshape(b, gh * gw, d)
        cls = jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, d))
        x = jnp.concatenate([cls, patches], axis=1)
        pos = nn.Embed((cfg.image_size // p) ** 2 + 1, d, dtype=self.dtype, name="position_embedding")
        return x + pos(jnp.arange(x.shape[1])[None, :])


class VisionTransformer(nn.Module):
    config: CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixels [B, S, S, C] (S = image_size) → pooled CLS state float32 [B, hidden]."""
        cfg = self.config
        if pixel_values.shape[1:3] != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"CLIP expects {cfg.image_size}×{cfg.image_size} images, got "
                f"{pixel_values.shape[1]}×{pixel_values.shape[2]}; resize with rank.clip_preprocess"
            )
        x = VisionEmbeddings(cfg, self.dtype, name="embeddings")(pixel_values)
        x = _layer_norm(cfg.layer_norm_eps, "pre_layrnorm")(x).astype(self.dtype)
        x = Encoder(cfg, self.dtype, name="encoder")(x)
        return _layer_norm(cfg.layer_norm_eps, "post_layernorm")(x[:, 0])


class CLIPModel(nn.Module):
    """CLIP with HF Flax parameter names. Features are the projected (unnormalised) embeddings."""

    config: CLIPConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.text_model = TextTransformer(cfg.text, self.dtype)
        self.vision_model = VisionTransformer(cfg.vision, self.dtype)
        self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
        self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param(
            "logit_scale", lambda _: jnp.asarray(cfg.logit_scale_init, jnp.float32)
        )

    def get_text_features(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """ids int [B, L], mask [B, L] (1 = token) → text features float32 [B, projection_dim]."""
        pooled = self.text_model(input_ids, attention_mask)
        return self.text_projection(pooled.astype(self.dtype)).astype(jnp.float32)

    def get_image_features(self, pixel_values: jax.Array) -> jax.Array:
        """CLIP-normalised pixels [B, S, S, 3] → image features float32 [B, projection_dim]."""
        pooled = self.vision_model(pixel_values)
        return self.visual_projection(pooled.astype(self.dtype)).astype(jnp.float32)

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, pixel_values: jax.Array
    ) -> jax.Array:
        """→ logits_per_image float32 [B_img, B_txt]: cosine similarity × exp(logit_scale)."""
        text = _l2_normalize(self.get_text_features(input_ids, attention_mask))
        image = _l2_normalize(self.get_image_features(pixel_values))
        return image @ text.T * jnp.exp(self.logit_scale.astype(jnp.float32))


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _dummy_inputs(cfg: CLIPConfig):
    ids = jnp.zeros((1, cfg.text.max_position_embeddings), jnp.int32)
    s = cfg.vision.image_size
    return ids, jnp.ones_like(ids), jnp.zeros((1, s, s, cfg.vision.num_channels), jnp.float32)


def init_clip_params(cfg: CLIPConfig, rng: jax.Array) -> dict:
    """Random parameters for ``cfg`` (one compiled init; training from scratch, benchmarks)."""
    return jax.jit(CLIPModel(cfg).init)(rng, *_dummy_inputs(cfg))["params"]


def clip_param_shapes(cfg: CLIPConfig) -> dict:
    """Nested dict of ``jax.ShapeDtypeStruct`` for ``cfg``'s parameters, without allocating them."""
    return jax.eval_shape(CLIPModel(cfg).init, jax.random.PRNGKey(0), *_dummy_inputs(cfg))["params"]
