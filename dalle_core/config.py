"""Frozen model configs and the one table of named variants.

Every size in the core comes from here: modules, checkpoints, benchmarks and training read a
``ModelVariant`` and never hard-code a number. ``tiny`` is the embedded default that ships in the
package; ``mini`` and ``mega`` are the published DALL·E Mini models (see shared/DESIGN.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BartConfig:
    """DalleBart (seq2seq text → image tokens).

    Embedding/head rows on the image side are ``image_vocab_size + 1``: the extra row is BOS.
    """

    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    attention_heads: int = 16
    glu_dim: int = 2730  # width of the GLU feed-forward (dalle-mini's encoder/decoder_ffn_dim)
    text_vocab_size: int = 50264  # dalle-mini's encoder_vocab_size
    image_vocab_size: int = 16384  # number of VQGAN codes; BOS id == image_vocab_size
    max_text_length: int = 64
    image_length: int = 256  # image tokens per image (grid_size ** 2)
    ln_eps: float = 1e-5
    pad_token_id: int = 1  # BART tokenizer's <pad>
    # BOS of the image sequence. None means ``image_vocab_size`` (mini, tiny); mega's config.json
    # says 16384 although its image vocabulary is padded to 16415 rows for sharding.
    decoder_start_token_id: int | None = None
    normalize_text: bool = True  # run dalle-mini's text normalizer before tokenizing
    init_std: float = 0.02  # normal init of kernels and embeddings (random-init and training)

    @property
    def image_bos_id(self) -> int:
        if self.decoder_start_token_id is not None:
            return self.decoder_start_token_id
        return self.image_vocab_size

    @property
    def grid_size(self) -> int:
        side = int(round(self.image_length**0.5))
        assert side * side == self.image_length, self.image_length
        return side


@dataclass(frozen=True)
class VQGANConfig:
    """VQGAN of the vqgan-jax ``vqgan_imagenet_f16_16384`` family (pixels in [0, 1], NHWC)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 16384
    in_channels: int = 3
    out_ch: int = 3
    num_groups: int = 32  # GroupNorm groups; tiny configs lower it

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        return self.resolution // self.downsample


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407  # pooled output is taken at the EOS (highest id) position


@dataclass(frozen=True)
class CLIPVisionConfig:
    image_size: int = 224
    patch_size: int = 32
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class CLIPConfig:
    """CLIP ViT-B/32 family (Hugging Face ``openai/clip-vit-base-patch32`` layout); quick_gelu."""

    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    projection_dim: int = 512
    logit_scale_init: float = 2.6592


@dataclass(frozen=True)
class ModelVariant:
    """A named bundle of the three models that work together."""

    name: str
    bart: BartConfig
    vqgan: VQGANConfig
    clip: CLIPConfig
    dtype: str = "float32"  # compute dtype of DalleBart; VQGAN always runs in fp32


# The one table of sizes. ``tiny`` is what the embedded model is trained at (64×64 pixels, an f8
# VQGAN, so 8×8 = 64 image tokens); the published checkpoints override what their config.json says.
VARIANTS: dict[str, ModelVariant] = {
    "tiny": ModelVariant(
        name="tiny",
        bart=BartConfig(
            d_model=128,
            encoder_layers=2,
            decoder_layers=2,
            attention_heads=4,
            glu_dim=256,
            text_vocab_size=1024,
            image_vocab_size=512,
            max_text_length=32,  # shapes captions are at most ~24 BPE tokens
            image_length=64,
        ),
        # Small because CPU training time decides; flat-colour shapes on the token grid need ~370 codes.
        vqgan=VQGANConfig(
            ch=16,
            ch_mult=(1, 2, 2, 4),
            num_res_blocks=0,  # the decoder still has one res block per level
            attn_resolutions=(),
            resolution=64,
            z_channels=32,
            embed_dim=32,
            n_embed=512,
            num_groups=8,
        ),
        clip=CLIPConfig(
            text=CLIPTextConfig(
                vocab_size=1024,
                hidden_size=128,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=32,
                eos_token_id=2,  # legacy value: pool at the highest id, which is EOS
            ),
            vision=CLIPVisionConfig(
                image_size=64,
                patch_size=8,
                hidden_size=128,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=4,
            ),
            projection_dim=128,
        ),
    ),
    # The pictogram model: 64×64 pixels, an f4 VQGAN (16×16 = 256 tokens: an 8×8 grid loses which
    # emoji it is, benchmarks/token_grid_capacity.py), a deeper DalleBart for about 1,200
    # concepts; widths sized for CPU training.
    "pictogram": ModelVariant(
        name="pictogram",
        bart=BartConfig(
            d_model=128,
            encoder_layers=2,
            decoder_layers=4,
            attention_heads=4,
            glu_dim=256,
            text_vocab_size=4096,
            image_vocab_size=1024,
            max_text_length=32,
            image_length=256,
        ),
        vqgan=VQGANConfig(
            ch=32,
            ch_mult=(1, 2, 2),
            num_res_blocks=0,
            attn_resolutions=(),
            resolution=64,
            z_channels=64,
            embed_dim=64,
            n_embed=1024,
            num_groups=8,
        ),
        clip=CLIPConfig(
            text=CLIPTextConfig(
                vocab_size=4096,
                hidden_size=128,
                intermediate_size=256,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=32,
                eos_token_id=2,
            ),
            vision=CLIPVisionConfig(
                image_size=64,
                patch_size=8,
                hidden_size=128,
                intermediate_size=256,
                num_hidden_layers=3,
                num_attention_heads=4,
            ),
            projection_dim=128,
        ),
    ),
    "mini": ModelVariant(
        name="mini",
        bart=BartConfig(),
        vqgan=VQGANConfig(),
        clip=CLIPConfig(),
    ),
    "mega": ModelVariant(
        name="mega",
        bart=BartConfig(
            d_model=2048,
            encoder_layers=24,
            decoder_layers=24,
            attention_heads=32,
            glu_dim=4096,
            text_vocab_size=50272,
            image_vocab_size=16415,
            decoder_start_token_id=16384,
            init_std=0.01,
        ),
        vqgan=VQGANConfig(),
        clip=CLIPConfig(),
        dtype="float16",
    ),
}


def get_variant(name: str) -> ModelVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown model variant {name!r}; known: {', '.join(VARIANTS)}") from None


def replace(cfg, **changes):
    """``dataclasses.replace`` re-exported so callers need not import dataclasses for tweaks."""
    return dataclasses.replace(cfg, **changes)
