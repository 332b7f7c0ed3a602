"""SwinIR for real-world ×4 (or ×2) super-resolution, as a pure Flax module.

Parameter names follow the published SwinIR-JAX Flax checkpoints (``SwinIR-real-sr-{M,L}-x{2,4}-
{PSNR,GAN}``, converted from the official PyTorch release), so their ``flax_model.msgpack`` loads
without renaming::

    conv_first/{kernel,bias}
    patch_embed/norm/{scale,bias}
    layers_{i}/residual_group/blocks_{j}/norm1/{scale,bias}
    layers_{i}/residual_group/blocks_{j}/attn/relative_position_bias_table   [(2w-1)², heads]
    layers_{i}/residual_group/blocks_{j}/attn/{qkv,proj}/{kernel,bias}
    layers_{i}/residual_group/blocks_{j}/norm2/{scale,bias}
    layers_{i}/residual_group/blocks_{j}/mlp/{fc1,fc2}/{kernel,bias}
    layers_{i}/conv/{kernel,bias}                      (resi_connection "1conv")
    layers_{i}/conv/conv_{0,2,4}/{kernel,bias}         (resi_connection "3conv")
    norm/{scale,bias}
    conv_after_body[/conv_{0,2,4}]/{kernel,bias}
    conv_before_upsample_0, conv_up1, conv_up2 (×4 only), conv_hr, conv_last: {kernel,bias}

Only the real-SR reconstruction head (``upsampler="nearest+conv"``) is implemented; it is the one the
published Flax checkpoints use. Images are NHWC floats in [0, 1]; no I/O happens here.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


@dataclass(frozen=True)
class SwinIRConfig:
    """SwinIR sizes (names follow the SwinIR-JAX ``config.json``).

    embed_dim: channels of the transformer body.
    depths / num_heads: Swin blocks and attention heads per residual group (RSTB).
    window_size: side of the attention windows; inputs are reflect-padded to a multiple of it.
    mlp_ratio: hidden width of each block's MLP relative to ``embed_dim``.
    upscale: 2 or 4.
    img_range / rgb_mean: input normalisation, ``(x - mean) * img_range``.
    resi_connection: "1conv" (M models) or "3conv" (L models) after each residual group.
    num_feat: channels of the reconstruction head (64 in every published model).
    """

    embed_dim: int = 180
    depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    window_size: int = 8
    mlp_ratio: float = 2.0
    upscale: int = 4
    in_chans: int = 3
    img_range: float = 1.0
    rgb_mean: tuple[float, ...] = (0.4488, 0.4371, 0.4040)
    upsampler: str = "nearest+conv"
    resi_connection: str = "1conv"
    num_feat: int = 64
    qkv_bias: bool = True
    patch_norm: bool = True
    ln_eps: float = 1e-5

    def __post_init__(self):
        if len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"SwinIR depths {self.depths} and num_heads {self.num_heads} differ in length"
            )
        if self.upscale not in (2, 4):
            raise ValueError(f"SwinIR upscale must be 2 or 4, got {self.upscale}")
        if self.upsampler != "nearest+conv":
            raise ValueError(
                f"SwinIR upsampler {self.upsampler!r} is not supported; only the real-SR head 'nearest+conv' is"
            )
        if self.resi_connection not in ("1conv", "3conv"):
            raise ValueError(
                f"SwinIR resi_connection must be '1conv' or '3conv', got {self.resi_connection!r}"
            )
        if self.embed_dim % max(self.num_heads) or any(self.embed_dim % h for h in self.num_heads):
            raise ValueError(
                f"SwinIR embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )


# The published real-SR models (M: SwinIR-M, L: SwinIR-L) and a tiny one for tests and benchmarks.
SWINIR_VARIANTS: dict[str, SwinIRConfig] = {
    "tiny": SwinIRConfig(embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4, num_feat=8),
    "M": SwinIRConfig(),
    "L": SwinIRConfig(
        embed_dim=240,
        depths=(6,) * 9,
        num_heads=(8,) * 9,
        resi_connection="3conv",
    ),
}


def get_swinir_variant(name: str) -> SwinIRConfig:
    try:
        return SWINIR_VARIANTS[name]
    except KeyError:
        raise KeyError(
            f"unknown SwinIR variant {name!r}; known: {', '.join(SWINIR_VARIANTS)}"
        ) from None


# --------------------------------------------------------------------------------------------------
# Windows and masks (static shapes, computed with numpy at trace time)


def window_partition(x: jax.Array, w: int) -> jax.Array:
    """[B, H, W, C] → [B * (H/w) * (W/w), w*w, C], windows in row-major order per image."""
    b, h, wd, c = x.shape
    x = x.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_merge(windows: jax.Array, w: int, h: int, wd: int) -> jax.Array:
    """Inverse of ``window_partition``: [B * nW, w*w, C] → [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, wd, c)


def relative_position_index(w: int) -> np.ndarray:
    """[w*w, w*w] index into the ``(2w-1)²``-row bias table (row offset major, column offset minor)."""
    rows, cols = np.meshgrid(np.arange(w), np.arange(w), indexing="ij")
    coords = np.stack([rows.ravel(), cols.ravel()])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (w - 1)  # [2, N, N], offsets shifted to >= 0
    return rel[0] * (2 * w - 1) + rel[1]


def shifted_window_mask(h: int, wd: int, w: int, shift: int) -> np.ndarray:
    """[nW, w*w, w*w] additive mask (0 or -100) for shifted windows of an h×wd map.

    After the cyclic roll, a window at the bottom/right border holds pixels from opposite sides of
    the image; they must not attend to each other, so each pixel gets a region label and pairs with
    different labels are masked (the value -100 matches the reference implementation).
    """
    labels = np.zeros((h, wd), np.float32)
    bands = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for ws in bands:
            labels[hs, ws] = label
            label += 1
    lw = labels.reshape(h // w, w, wd // w, w).transpose(0, 2, 1, 3).reshape(-1, w * w)
    diff = lw[:, None, :] - lw[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Modules


class Mlp(nn.Module):
    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
        # The published weights were trained in PyTorch with the exact (erf) GELU.
        x = nn.gelu(x, approximate=False)
        return nn.Dense(c, dtype=self.dtype, name="fc2")(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside w×w windows with a learned relative position bias."""

    window_size: int
    num_heads: int
    qkv_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
        """x: [B*nW, N, C] with N = w*w; mask: [nW, N, N] or None. Returns [B*nW, N, C]."""
        w, heads = self.window_size, self.num_heads
        bw, n, c = x.shape
        hd = c // heads
        table = self.param(
            "relative_position_bias_table", nn.initializers.normal(0.02), ((2 * w - 1) ** 2, heads)
        )
        qkv = nn.Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(bw, n, 3, heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B*nW, N, heads, hd]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q * hd**-0.5, k)
        bias = table[relative_position_index(w).reshape(-1)].reshape(n, n, heads)
        scores = scores + jnp.transpose(bias, (2, 0, 1))[None].astype(scores.dtype)
        if mask is not None:
            nw = mask.shape[0]
            scores = scores.reshape(bw // nw, nw, heads, n, n) + jnp.asarray(mask)[None, :, None]
            scores = scores.reshape(bw, heads, n, n)
        # Softmax in fp32 whatever the compute dtype, for stable sums over the window.
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(bw, n, c)
        return nn.Dense(c, dtype=self.dtype, name="proj")(out)


class SwinBlock(nn.Module):
    """``x + WMSA(LN(x))`` then ``x + MLP(LN(x))``; odd blocks use windows shifted by w/2."""

    cfg: SwinIRConfig
    num_heads: int
    shift: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, hw: tuple[int, int]) -> jax.Array:
        """x: [B, H*W, C] → [B, H*W, C]."""
        cfg, w, s = self.cfg, self.cfg.window_size, self.shift
        h, wd = hw
        b, _, c = x.shape
        y = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=self.dtype, name="norm1")(x).reshape(b, h, wd, c)
        if s:
            y = jnp.roll(y, (-s, -s), axis=(1, 2))
        mask = shifted_window_mask(h, wd, w, s) if s else None
        y = WindowAttention(w, self.num_heads, cfg.qkv_bias, self.dtype, name="attn")(
            window_partition(y, w), mask
        )
        y = window_merge(y, w, h, wd)
        if s:
            y = jnp.roll(y, (s, s), axis=(1, 2))
        x = x + y.reshape(b, h * wd, c)
        y = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=self.dtype, name="norm2")(x)
        return x + Mlp(int(c * cfg.mlp_ratio), self.dtype, name="mlp")(y)


class BlockGroup(nn.Module):
    """The Swin blocks of one residual group (checkpoint scope ``residual_group``)."""

    cfg: SwinIRConfig
    depth: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, hw):
        for j in range(self.depth):
            shift = 0 if j % 2 == 0 else self.cfg.window_size // 2
            x = SwinBlock(self.cfg, self.num_heads, shift, self.dtype, name=f"blocks_{j}")(x, hw)
        return x


def _conv(features: int, name: str, dtype, kernel: int = 3) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=dtype, name=name
    )


class ThreeConv(nn.Module):
    """The "3conv" residual connection: 3×3 (C/4) → lrelu → 1×1 (C/4) → lrelu → 3×3 (C)."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.leaky_relu(_conv(self.features // 4, "conv_0", self.dtype)(x), 0.2)
        x = nn.leaky_relu(_conv(self.features // 4, "conv_2", self.dtype, kernel=1)(x), 0.2)
        return _conv(self.features, "conv_4", self.dtype)(x)


def _resi_conv(cfg: SwinIRConfig, name: str, dtype) -> nn.Module:
    if cfg.resi_connection == "1conv":
        return _conv(cfg.embed_dim, name, dtype)
    return ThreeConv(cfg.embed_dim, dtype, name=name)


class RSTB(nn.Module):
    """Residual Swin Transformer block: blocks → conv over the feature map → + input."""

    cfg: SwinIRConfig
    depth: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, hw):
        b, _, c = x.shape
        y = BlockGroup(self.cfg, self.depth, self.num_heads, self.dtype, name="residual_group")(
            x, hw
        )
        y = _resi_conv(self.cfg, "conv", self.dtype)(y.reshape(b, *hw, c))
        return x + y.reshape(b, -1, c)


class PatchEmbedNorm(nn.Module):
    """Patch size 1: the "embedding" is only a LayerNorm over channels (scope ``patch_embed``)."""

    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(x)


class SwinIR(nn.Module):
    """Real-world super-resolution network.

    Input: float [B, H, W, in_chans] in [0, 1] (any H, W; reflect-padded to a multiple of the window
    inside). Output: float32 [B, H*upscale, W*upscale, in_chans], not clipped.
    """

    cfg: SwinIRConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg, dt = self.cfg, self.dtype
        b, h0, w0, _ = images.shape
        w = cfg.window_size
        ph, pw = (-h0) % w, (-w0) % w
        x = images.astype(jnp.float32)
        if ph or pw:
            x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
        mean = jnp.asarray(
            cfg.rgb_mean if cfg.in_chans == 3 else (0.0,) * cfg.in_chans, jnp.float32
        )
        x = ((x - mean) * cfg.img_range).astype(dt)

        shallow = _conv(cfg.embed_dim, "conv_first", dt)(x)
        _, h, wd, c = shallow.shape
        y = shallow.reshape(b, h * wd, c)
        if cfg.patch_norm:
            y = PatchEmbedNorm(cfg.ln_eps, dt, name="patch_embed")(y)
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
            y = RSTB(cfg, depth, heads, dt, name=f"layers_{i}")(y, (h, wd))
        y = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=dt, name="norm")(y).reshape(b, h, wd, c)
        y = _resi_conv(cfg, "conv_after_body", dt)(y) + shallow

        # "nearest+conv" head: fewer checkerboard artefacts than pixel shuffle on real images.
        y = nn.leaky_relu(_conv(cfg.num_feat, "conv_before_upsample_0", dt)(y), 0.01)
        ups = ["conv_up1"] + (["conv_up2"] if cfg.upscale == 4 else [])
        for name in ups:
            bb, hh, ww, cc = y.shape
            y = jax.image.resize(y, (bb, hh * 2, ww * 2, cc), method="nearest")
            y = nn.leaky_relu(_conv(cfg.num_feat, name, dt)(y), 0.2)
        y = nn.leaky_relu(_conv(cfg.num_feat, "conv_hr", dt)(y), 0.2)
        y = _conv(cfg.in_chans, "conv_last", dt)(y).astype(jnp.float32)
        y = y / cfg.img_range + mean
        return y[:, : h0 * cfg.upscale, : w0 * cfg.upscale]
