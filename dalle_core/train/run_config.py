"""The settings of a training run (``EmbeddedConfig``) and their YAML presets (``configs/*.yaml``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from dalle_core.train.vqgan import VQGANTrainConfig


@dataclass(frozen=True)
class EmbeddedConfig:
    """Everything ``train_embedded`` does, sized to train on 2 CPU cores in about 3 h 30 min.

    variant: the ``VARIANTS`` entry whose sizes the three models use.
    train_images / heldout_images: rendered scenes of each split (seeded, deterministic).
    captions_per_image: caption wordings drawn per training scene for DalleBart and CLIP.
    domain: what the scenes show (``dalle_core.train.domains``); art_dir: where the pictogram
        domain fetches its art (shared between runs to fetch it once).
    jitter: whole pixels by which rendered objects may leave the 8-pixel anchor grid.
    bart_extra_images: more training scenes (fresh renders of training combinations), rendered and
        tokenized by the tokens stage for DalleBart alone; the VQGAN and CLIP stages keep
        ``train_images``. DalleBart memorises 16000 images; 80000 more lift held-out pairs, 160000 more
        also held-out sized objects (model card).
    """

    variant: str = "tiny"
    domain: str = "shapes"  # dalle_core.train.domains: shapes or pictograms
    art_dir: str | None = None  # pictograms: where the npm art is fetched (default: out_dir/art)
    seed: int = 0
    train_images: int = 16000
    heldout_images: int = 400
    captions_per_image: int = 4
    jitter: int = 3  # pixels objects may move off the 8-pixel anchor grid (shapes.jittered)
    bart_extra_images: int = 160000  # DalleBart-only training scenes (tokens stage: bart_extra.npz)
    vqgan: VQGANTrainConfig = VQGANTrainConfig(
        steps=4500, batch_size=16, lr=2e-3, crop=32, full_res_fraction=0.2, ae_steps=150, edge_weight=8.0, recolour=0.5,
        restart_every=25, ckpt_every=50,
    )
    # decoder-only VQGAN steps after the tokens are fixed (may run alongside the bart stage)
    vqgan_decoder: VQGANTrainConfig = VQGANTrainConfig(
        steps=4500, batch_size=8, lr=3e-4, warmup=20, decoder_only=True, edge_weight=8.0, recolour=0.5, ckpt_every=100
    )
    bart: dict = field(default_factory=lambda: {"steps": 20000, "restarts": [10000], "batch_size": 64, "lr": 2e-3})  # BartTrainConfig fields
    clip: dict = field(default_factory=lambda: {  # CLIPTrainConfig fields
        "steps": 3000, "batch_size": 32, "lr": 1e-3, "hard_negatives": 0, "image_negatives": 3, "broken_negatives": True,
        "reconstructions": True})
    # CLIPTuneConfig fields (and CLIPTrainConfig ones for its fine-tuning); runs after the bart and clip stages
    clip_tune: dict = field(default_factory=lambda: {
        "scenes": 4000, "samples": 8, "groups": 16, "wrong": 3, "readings": 32, "steps": 2000, "lr": 1e-3})


def load_config(path: str | os.PathLike | None, **overrides) -> EmbeddedConfig:
    """An ``EmbeddedConfig`` from a YAML preset (keys as the dataclass fields) plus overrides."""
    raw: dict = {}
    if path:
        import yaml

        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of EmbeddedConfig fields")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(EmbeddedConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown embedded-training key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key, extra in (("vqgan", {}), ("vqgan_decoder", {"decoder_only": True})):
        if isinstance(raw.get(key), dict):
            raw[key] = VQGANTrainConfig(**{**extra, **raw[key]})
    return EmbeddedConfig(**raw)
