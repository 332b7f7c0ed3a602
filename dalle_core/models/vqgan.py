"""VQGAN (taming-transformers architecture) as a pure Flax module, parameter-compatible with vqgan-jax.

Submodule and parameter names follow vqgan-jax's ``VQModule`` exactly (``encoder/conv_in``,
``encoder/down_0/block_0/norm1``, ``encoder/mid/attn_1/q``, ``decoder/up_4/upsample/conv``,
``quantize/embedding/embedding``, ``quant_conv``, ``post_quant_conv`` ...), so a published
``flax_model.msgpack`` (e.g. ``dalle-mini/vqgan_imagenet_f16_16384``) loads into it unchanged.

Layout is NHWC. Pixels are floats in [0, 1] on both sides: dalle-mini encodes its training images
as [0, 1] floats (webdataset ``decode("rgb")``) and clips the decoder output to [0, 1], so there is
no ``2x - 1`` rescaling here. Run it in float32; the quantizer's nearest-code search is
sensitive to precision.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dalle_core.config import VQGANConfig

# taming-transformers' GroupNorm epsilon (vqgan-jax sets it explicitly).
_GN_EPS = 1e-6


def _conv(features: int, kernel: int, dtype, name: str | None = None, stride: int = 1, pad=None):
    """A conv with vqgan-jax's padding convention: 'same' for 3×3, none for 1×1."""
    if pad is None:
        pad = ((1, 1), (1, 1)) if kernel == 3 else "VALID"
    return nn.Conv(
        features,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=pad,
        dtype=dtype,
        name=name,
    )


class ResnetBlock(nn.Module):
    """GN → swish → conv3 → GN → swish → (dropout) → conv3, plus a 1×1 shortcut when widths differ."""

    out_channels: int
    num_groups: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        h = nn.GroupNorm(num_groups=self.num_groups, epsilon=_GN_EPS, name="norm1")(x)
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(nn.swish(h))
        h = nn.GroupNorm(num_groups=self.num_groups, epsilon=_GN_EPS, name="norm2")(h)
        h = nn.Dropout(self.dropout)(nn.swish(h), deterministic=deterministic)
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1-conv projections (q, k, v, proj_out)."""

    num_groups: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hgt, wid, c = x.shape
        h = nn.GroupNorm(num_groups=self.num_groups, epsilon=_GN_EPS, name="norm")(x)
        q = _conv(c, 1, self.dtype, "q")(h).reshape(b, hgt * wid, c)
        k = _conv(c, 1, self.dtype, "k")(h).reshape(b, hgt * wid, c)
        v = _conv(c, 1, self.dtype, "v")(h).reshape(b, hgt * wid, c)
        weights = jnp.einsum("bqc,bkc->bqk", q, k) * (c**-0.5)
        weights = jax.nn.softmax(weights, axis=-1)
        h = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, hgt, wid, c)
        return x + _conv(c, 1, self.dtype, "proj_out")(h)


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding one row/column at the bottom/right (taming's asymmetric pad)."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(self.channels, 3, self.dtype, "conv", stride=2, pad="VALID")(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2× then a 3×3 conv."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # An exact 2× nearest resize is a repeat along both axes (same values as
        # jax.image.resize(..., "nearest"), without the gather).
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(self.channels, 3, self.dtype, "conv")(x)


class MidBlock(nn.Module):
    channels: int
    num_groups: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        kw = dict(num_groups=self.num_groups, dropout=self.dropout, dtype=self.dtype)
        x = ResnetBlock(self.channels, name="block_1", **kw)(x, deterministic)
        x = AttnBlock(self.num_groups, self.dtype, name="attn_1")(x)
        return ResnetBlock(self.channels, name="block_2", **kw)(x, deterministic)


class ResolutionLevel(nn.Module):
    """One level of the encoder (``down_i``) or decoder (``up_i``).

    ``n_blocks`` res blocks, each followed by its own attention block when this level's resolution
    is in ``attn_resolutions`` (vqgan-jax pairs ``attn_j`` with ``block_j`` since its July-2022
    fix), then an optional resampler named ``downsample`` or ``upsample``.
    """

    out_channels: int
    n_blocks: int
    use_attn: bool
    resample: str | None  # "downsample", "upsample" or None
    num_groups: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        for j in range(self.n_blocks):
            x = ResnetBlock(
                self.out_channels, self.num_groups, self.dropout, self.dtype, name=f"block_{j}"
            )(x, deterministic)
            if self.use_attn:
                x = AttnBlock(self.num_groups, self.dtype, name=f"attn_{j}")(x)
        if self.resample == "downsample":
            x = Downsample(self.out_channels, self.dtype, name="downsample")(x)
        elif self.resample == "upsample":
            x = Upsample(self.out_channels, self.dtype, name="upsample")(x)
        return x


class Encoder(nn.Module):
    """pixels [B, H, W, in_channels] → z [B, H/f, W/f, z_channels]."""

    config: VQGANConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        levels = len(cfg.ch_mult)
        x = _conv(cfg.ch, 3, self.dtype, "conv_in")(x)
        res = cfg.resolution
        for i, mult in enumerate(cfg.ch_mult):
            x = ResolutionLevel(
                out_channels=cfg.ch * mult,
                n_blocks=cfg.num_res_blocks,
                use_attn=res in cfg.attn_resolutions,
                resample="downsample" if i != levels - 1 else None,
                num_groups=cfg.num_groups,
                dtype=self.dtype,
                name=f"down_{i}",
            )(x, deterministic)
            if i != levels - 1:
                res //= 2
        x = MidBlock(cfg.ch * cfg.ch_mult[-1], cfg.num_groups, dtype=self.dtype, name="mid")(
            x, deterministic
        )
        x = nn.GroupNorm(num_groups=cfg.num_groups, epsilon=_GN_EPS, name="norm_out")(x)
        return _conv(cfg.z_channels, 3, self.dtype, "conv_out")(nn.swish(x))


class Decoder(nn.Module):
    """z [B, h, w, z_channels] → pixels [B, h·f, w·f, out_ch] (unclipped)."""

    config: VQGANConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        x = _conv(block_in, 3, self.dtype, "conv_in")(z)
        x = MidBlock(block_in, cfg.num_groups, dtype=self.dtype, name="mid")(x, deterministic)
        res = cfg.resolution // 2 ** (levels - 1)
        # vqgan-jax numbers decoder levels by the resolution they produce: up_0 is the finest,
        # and they run from the coarsest (up_{levels-1}) down to up_0.
        for i in reversed(range(levels)):
            x = ResolutionLevel(
                out_channels=cfg.ch * cfg.ch_mult[i],
                n_blocks=cfg.num_res_blocks + 1,
                use_attn=res in cfg.attn_resolutions,
                resample="upsample" if i != 0 else None,
                num_groups=cfg.num_groups,
                dtype=self.dtype,
                name=f"up_{i}",
            )(x, deterministic)
            if i != 0:
                res *= 2
        x = nn.GroupNorm(num_groups=cfg.num_groups, epsilon=_GN_EPS, name="norm_out")(x)
        return _conv(cfg.out_ch, 3, self.dtype, "conv_out")(nn.swish(x))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantizer; the codebook lives at ``quantize/embedding/embedding``."""

    config: VQGANConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = nn.Embed(self.config.n_embed, self.config.embed_dim, dtype=self.dtype)

    def codebook(self) -> jax.Array:
        """[n_embed, embed_dim] float32."""
        return self.embedding.embedding

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z [B, h, w, D] → (z_q [B, h, w, D] (no gradient path), indices int32 [B, h·w])."""
        b = z.shape[0]
        flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
        codes = self.codebook().astype(jnp.float32)
        # |z - e|² = |z|² + |e|² - 2 z·e; the |z|² term does not change the argmin but keeps the
        # values meaningful as distances.
        dist = (
            jnp.sum(flat**2, axis=1, keepdims=True)
            + jnp.sum(codes**2, axis=1)[None, :]
            - 2.0 * flat @ codes.T
        )
        indices = jnp.argmin(dist, axis=1).astype(jnp.int32)
        z_q = jnp.take(codes, indices, axis=0).reshape(z.shape).astype(z.dtype)
        return z_q, indices.reshape(b, -1)

    def lookup(self, indices: jax.Array) -> jax.Array:
        """indices int [B, n] (n a perfect square) → z_q [B, √n, √n, embed_dim]."""
        b, n = indices.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"VQGAN token count {n} is not a square grid")
        return self.embedding(indices.astype(jnp.int32)).reshape(b, side, side, -1)


class VQModel(nn.Module):
    """The VQGAN: ``encode`` pixels to codes, ``decode_code`` codes to pixels, ``__call__`` for training.

    ``VQModel(cfg).apply({"params": params}, x, method="encode")`` etc.; every method is pure and jittable.
    """

    config: VQGANConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.config, dtype=self.dtype)
        self.decoder = Decoder(self.config, dtype=self.dtype)
        self.quantize = VectorQuantizer(self.config, dtype=self.dtype)
        self.quant_conv = _conv(self.config.embed_dim, 1, self.dtype)
        self.post_quant_conv = _conv(self.config.z_channels, 1, self.dtype)

    def encode_latents(self, pixels: jax.Array, deterministic: bool = True) -> jax.Array:
        """pixels float [B, H, W, 3] in [0, 1] → latents before quantization [B, h, w, embed_dim]."""
        return self.quant_conv(self.encoder(pixels.astype(self.dtype), deterministic))

    def encode(self, pixels: jax.Array, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        """pixels float [B, H, W, 3] in [0, 1] → (quantized [B, h, w, embed_dim], indices int32 [B, h·w])."""
        return self.quantize(self.encode_latents(pixels, deterministic))

    def decode(self, z_q: jax.Array, deterministic: bool = True) -> jax.Array:
        """quantized latents [B, h, w, embed_dim] → raw pixels float32 [B, H, W, 3] (not clipped)."""
        x = self.decoder(self.post_quant_conv(z_q), deterministic)
        return x.astype(jnp.float32)

    def lookup_grid(self, indices: jax.Array) -> jax.Array:
        """indices int [B, h, w] (any h, w) → codebook vectors [B, h, w, embed_dim]."""
        return self.quantize.embedding(indices.astype(jnp.int32))

    def decode_code(self, indices: jax.Array) -> jax.Array:
        """indices int [B, h·w] → pixels float32 [B, H, W, 3] clipped to [0, 1]."""
        return jnp.clip(self.decode(self.quantize.lookup(indices)), 0.0, 1.0)

    def __call__(
        self, pixels: jax.Array, train: bool = False
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Training forward pass with the straight-through estimator.

        pixels float [B, H, W, 3] in [0, 1] → (reconstruction float32 [B, H, W, 3], aux) where the
        reconstruction is NOT clipped (so the pixel loss keeps its gradient) and ``aux`` holds
        ``codebook_loss`` (moves codes towards encoder outputs), ``commitment_loss`` (moves encoder
        outputs towards their codes; weight it by β, 0.25 in taming) and ``indices`` int32 [B, h·w].
        Dropout needs a ``"dropout"`` rng when ``train`` and ``config.dropout`` > 0 (it is 0 here).
        """
        z = self.encode_latents(pixels, deterministic=not train)
        z_q, indices = self.quantize(z)
        sg = jax.lax.stop_gradient
        codebook_loss = jnp.mean((sg(z) - z_q) ** 2)
        commitment_loss = jnp.mean((z - sg(z_q)) ** 2)
        z_st = z + sg(z_q - z)  # forward value z_q, gradient of the identity to the encoder
        recon = self.decode(z_st, deterministic=not train)
        return recon, {
            "codebook_loss": codebook_loss,
            "commitment_loss": commitment_loss,
            "indices": indices,
        }


def init_vqgan_params(cfg: VQGANConfig, rng: jax.Array, batch: int = 1) -> dict:
    """Random parameters for ``cfg`` (training from scratch, benchmarks); deterministic in ``rng``.

    ``rng`` is any JAX key (raw ``PRNGKey`` or typed). One compiled init rather than hundreds of
    eagerly dispatched ops, and with an ``rbg`` key derived from ``rng``: XLA compiles threefry's
    unrolled rounds for every parameter shape, which makes this init ~3× slower to compile on CPU
    (≈20 s vs ≈7 s for the tiny VQGAN); the distributions are the same.
    """
    x = jnp.zeros((batch, cfg.resolution, cfg.resolution, cfg.in_channels), jnp.float32)
    return _jitted_init(cfg)(_rbg_key(rng), x)["params"]


@functools.lru_cache(maxsize=8)
def _jitted_init(cfg: VQGANConfig):
    # cached per config so repeated inits (seeds, tests) compile once
    return jax.jit(VQModel(cfg).init)


def _rbg_key(rng: jax.Array) -> jax.Array:
    data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    data = jnp.asarray(data, jnp.uint32).reshape(-1)
    # rbg keys hold 4 words; pad a 2-word threefry key with its reversal (deterministic, distinct).
    return jax.random.wrap_key_data(jnp.concatenate([data, data[::-1]])[:4], impl="rbg")


def vqgan_param_shapes(cfg: VQGANConfig) -> dict:
    """Nested dict of ``jax.ShapeDtypeStruct`` for ``cfg``'s parameters, without allocating them."""
    x = jax.ShapeDtypeStruct((1, cfg.resolution, cfg.resolution, cfg.in_channels), jnp.float32)
    return jax.eval_shape(VQModel(cfg).init, jax.random.PRNGKey(0), x)["params"]
