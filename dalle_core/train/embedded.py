"""Reproduce the embedded model from scratch: dataset → tokenizers → VQGAN → tokens → DalleBart, CLIP
→ CLIP fine-tuned on DalleBart's own samples (``clip_tune``, after both).

One command, resumable: every stage writes its result into ``out_dir`` and a finished stage is
skipped when the command runs again (``resume=True``); the VQGAN, DalleBart and CLIP stages also
resume mid-run from their last checkpoint. The wall time of each stage is recorded in
``out_dir/timings.json``. The final model lands in ``out_dir/model/{dalle,vqgan,clip}`` in the
published layouts (what ``Generator.from_folder`` loads and what ships in
``dalle_core/embedded``).

    python -m dalle_core.train.embedded runs/embedded          # everything
    python -m dalle_core.train.embedded runs/embedded --stages vqgan,tokens
    python -m dalle_core.train.embedded runs/embedded --config configs/embedded.yaml
    python -m dalle_core.train.embedded runs/embedded --snapshot runs/snap   # mid-training model folder
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dalle_core.config import get_variant
from dalle_core.train.domains import get_domain
from dalle_core.train.vqgan import VQGANTrainConfig

log = logging.getLogger(__name__)

STAGES = ("data", "tokenizer", "vqgan", "tokens", "decoder", "bart", "clip", "clip_tune", "export")


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


class _Timings:
    """Seconds per stage in ``timings.json``, summed over resumed runs (re-read on every write,
    so stages run by separate processes do not overwrite each other)."""

    def __init__(self, path: Path):
        self.path = path

    def record(self, stage: str, seconds: float) -> None:
        import jax

        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        prev = data.get(stage, {}).get("seconds", 0.0)
        data[stage] = {"seconds": round(prev + seconds, 1), "device": jax.devices()[0].platform}
        self.path.write_text(json.dumps(data, indent=2) + "\n")


def domain_of(out: Path, cfg: EmbeddedConfig):
    """The run's training domain (``dalle_core.train.domains``)."""
    return get_domain(cfg.domain, out, cfg.jitter, cfg.art_dir)


def _load_data(out: Path, split: str, cfg: EmbeddedConfig):
    return domain_of(out, cfg).load(out / f"{split}.npz")


def train_embedded(
    out_dir: str | os.PathLike,
    config: str | os.PathLike | EmbeddedConfig | None = None,
    stages: Sequence[str] | str | None = None,
    resume: bool = True,
) -> Path:
    """Run the stages (all by default) into ``out_dir``; returns ``out_dir/model``."""
    cfg = config if isinstance(config, EmbeddedConfig) else load_config(config)
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    stages = list(stages or STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {', '.join(bad)}; stages are {', '.join(STAGES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variant = get_variant(cfg.variant)
    timings = _Timings(out / "timings.json")
    model_dir = out / "model"
    domain = domain_of(out, cfg)

    for stage in STAGES:
        if stage not in stages:
            continue
        t0 = time.time()
        log.info("stage %s", stage)
        if stage == "data":
            if resume and (out / "train.npz").exists() and (out / "heldout.npz").exists():
                log.info("data: already there")
                continue
            domain.prepare()
            for split, n in (("train", cfg.train_images), ("heldout", cfg.heldout_images)):
                domain.save(out / f"{split}.npz", domain.make_dataset(n, cfg.seed, split))
        elif stage == "tokenizer":
            _stage_tokenizer(out, cfg, variant, resume)
        elif stage == "vqgan":
            from dalle_core.checkpoints.vqgan import save_vqgan
            from dalle_core.train.vqgan import reconstruction_report, train_vqgan

            if resume and (model_dir / "vqgan" / "flax_model.msgpack").exists():
                log.info("vqgan: already exported")
                continue
            train = _load_data(out, "train", cfg)
            params = train_vqgan(variant.vqgan, train.images, out / "vqgan_run", cfg.vqgan, resume=resume)
            held = _load_data(out, "heldout", cfg)
            report = reconstruction_report(variant.vqgan, params, held.images, held.scenes, domain.check)
            log.info("vqgan reconstruction, pixel checker on held-out renders: %s", report)
            (out / "vqgan_report.json").write_text(json.dumps(report, indent=2) + "\n")
            save_vqgan(model_dir / "vqgan", variant.vqgan, params)
        elif stage == "tokens":
            from dalle_core.checkpoints.vqgan import load_vqgan
            from dalle_core.train.vqgan import encode_images

            vq_cfg, vq_params = load_vqgan(model_dir / "vqgan")
            if not (resume and (out / "tokens.npz").exists()):
                train = _load_data(out, "train", cfg)
                codes = encode_images(vq_cfg, vq_params, train.images)
                np.savez_compressed(out / "tokens.npz", codes=codes)
                log.info("tokens: %d images, %d distinct codes used", len(codes), len(np.unique(codes)))
            if cfg.bart_extra_images and not (resume and _extra_count(out) == cfg.bart_extra_images):
                _extra_scenes(out, cfg, functools.partial(encode_images, vq_cfg, vq_params))
        elif stage == "decoder":
            from dalle_core.checkpoints.vqgan import load_vqgan, save_vqgan
            from dalle_core.train.vqgan import reconstruction_report, train_vqgan

            done = out / "vqgan_decoder_report.json"
            if resume and done.exists():
                continue
            vq_cfg, vq_params = load_vqgan(model_dir / "vqgan")
            train = _load_data(out, "train", cfg)
            params = train_vqgan(vq_cfg, train.images, out / "vqgan_decoder_run", cfg.vqgan_decoder,
                                 resume=resume, init_params=vq_params)
            held = _load_data(out, "heldout", cfg)
            report = reconstruction_report(vq_cfg, params, held.images, held.scenes, domain.check)
            log.info("vqgan after decoder fine-tuning, pixel checker on held-out renders: %s", report)
            save_vqgan(model_dir / "vqgan", vq_cfg, params)
            done.write_text(json.dumps(report, indent=2) + "\n")
        elif stage == "bart":
            from dalle_core.train.bart import train_embedded_bart

            train_embedded_bart(out, cfg, variant, resume=resume)
        elif stage == "clip":
            from dalle_core.train.clip import train_embedded_clip

            train_embedded_clip(out, cfg, variant, resume=resume)
        elif stage == "clip_tune":
            from dalle_core.train.clip import tune_embedded_clip

            tune_embedded_clip(out, cfg, resume=resume)
        elif stage == "export":
            _stage_export(out, model_dir)
        timings.record(stage, time.time() - t0)
        log.info("stage %s done in %.0fs", stage, time.time() - t0)
    return model_dir


def _all_captions(out: Path, cfg: EmbeddedConfig) -> list[list[str]]:
    """``captions_per_image`` wordings of every training scene (the first is the stored one)."""
    path = out / "captions.json"
    if path.exists():
        return json.loads(path.read_text())
    train = _load_data(out, "train", cfg)
    domain = domain_of(out, cfg)
    extra = [domain.recaption(train.scenes, seed=cfg.seed * 1000 + k) for k in range(1, cfg.captions_per_image)]
    caps = [[c, *(e[i] for e in extra)] for i, c in enumerate(train.captions)]
    path.write_text(json.dumps(caps))
    return caps


EXTRA_PART = 16000  # extra scenes are rendered, captioned and encoded this many at a time


def _extra_scenes(out: Path, cfg: EmbeddedConfig, encode) -> None:
    """``bart_extra.npz``: codes and ``captions_per_image`` wordings of ``cfg.bart_extra_images``
    fresh training-split scenes, rendered in parts of ``EXTRA_PART`` with their own seeds (part i:
    ``seed + 1000 + i``; wordings ``1000 * seed + 77 + first index of the part + k``), apart from the
    seeds of the ``train_images`` scenes and their wordings."""
    codes, caps = [], []
    domain = domain_of(out, cfg)
    t0 = time.time()
    for i, start in enumerate(range(0, cfg.bart_extra_images, EXTRA_PART)):
        n = min(EXTRA_PART, cfg.bart_extra_images - start)
        data = domain.make_dataset(n, cfg.seed + 1000 + i, "train")
        more = [domain.recaption(data.scenes, seed=1000 * cfg.seed + 77 + start + k) for k in range(1, cfg.captions_per_image)]
        caps += [[c, *(m[j] for m in more)] for j, c in enumerate(data.captions)]
        codes.append(encode(data.images))
        log.info("tokens: extra scenes %d/%d (%.0fs)", start + n, cfg.bart_extra_images, time.time() - t0)
    tmp = out / "bart_extra.tmp.npz"  # written whole, then renamed: a stopped run leaves no half file
    np.savez_compressed(tmp, codes=np.concatenate(codes), captions=np.array(json.dumps(caps)))
    tmp.replace(out / "bart_extra.npz")


def _extra_count(out: Path) -> int | None:
    """How many scenes ``bart_extra.npz`` holds (None: no file yet)."""
    path = out / "bart_extra.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return len(z["codes"])


def bart_pairs(out: Path, cfg: EmbeddedConfig) -> tuple[np.ndarray, list[list[str]]]:
    """DalleBart's training pairs: the training scenes' codes and wordings, then the extra scenes'."""
    codes, caps = np.load(out / "tokens.npz")["codes"], _all_captions(out, cfg)
    if cfg.bart_extra_images:
        path = out / "bart_extra.npz"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: bart_extra_images is {cfg.bart_extra_images}; run its stage first (tokens)")
        with np.load(path) as z:
            extra_codes, extra_caps = z["codes"], json.loads(str(z["captions"]))
        if len(extra_codes) != cfg.bart_extra_images:
            raise ValueError(f"{path} holds {len(extra_codes)} scenes, the config asks for {cfg.bart_extra_images}: "
                             "run the tokens stage again")
        codes, caps = np.concatenate([codes, extra_codes]), caps + extra_caps
    return codes, caps


def _stage_tokenizer(out: Path, cfg: EmbeddedConfig, variant, resume: bool) -> None:
    from dalle_core.text import TextTokenizer, normalize_text
    from dalle_core.train.tokenizer import (
        save_clip_tokenizer,
        train_bart_tokenizer,
        train_clip_tokenizer,
    )

    tok_dir = out / "tokenizer"
    if resume and (tok_dir / "dalle" / "tokenizer.json").exists() and (tok_dir / "clip" / "tokenizer.json").exists():
        return
    texts = [c for caps in _all_captions(out, cfg) for c in caps]
    bart_tok = train_bart_tokenizer(texts, variant.bart.text_vocab_size, normalize=normalize_text)
    TextTokenizer(bart_tok, max_length=variant.bart.max_text_length).save(tok_dir / "dalle")
    clip_tok = train_clip_tokenizer(texts, variant.clip.text.vocab_size)
    save_clip_tokenizer(clip_tok, tok_dir / "clip", variant.clip.text.max_position_embeddings)
    log.info("tokenizers: BART %d tokens, CLIP %d tokens", bart_tok.get_vocab_size(), clip_tok.get_vocab_size())


def _stage_export(out: Path, model_dir: Path) -> None:
    """Check the assembled model folder loads (tokenizers are copied in by the bart/clip stages)."""
    from dalle_core.generator import Generator

    gen = Generator.from_folder(model_dir)
    total = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    log.info("export: %s loads (%s), %.1f MB", model_dir, gen.info.variant, total / 1e6)


def snapshot(out_dir: str | os.PathLike, dest: str | os.PathLike, config=None, clip: str | os.PathLike | None = None) -> Path:
    """A loadable model folder from a run that is still training, to evaluate it mid-way.

    ``dest/dalle`` is the DalleBart of the latest checkpoint (``bart_run/state.msgpack``, its
    step in ``dest/dalle/training.json``), ``dest/vqgan`` the run's current VQGAN, and
    ``dest/clip`` the run's CLIP when exported, else ``clip`` (default: the shipped one).
    """
    import shutil

    from flax.serialization import msgpack_restore

    from dalle_core.checkpoints.bart import save_dalle_bart
    from dalle_core.text import TextTokenizer

    cfg = config if isinstance(config, EmbeddedConfig) else load_config(config)
    variant = get_variant(cfg.variant)
    out, dest = Path(out_dir), Path(dest)
    state_path = out / "bart_run" / "state.msgpack"
    missing = [p for p in (state_path, out / "model" / "vqgan" / "config.json", out / "tokenizer" / "dalle") if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{out} is not a run with a DalleBart checkpoint yet (missing {', '.join(map(str, missing))})")
    clip_src = out / "model" / "clip" if (out / "model" / "clip" / "config.json").exists() else Path(
        clip or Path(__file__).resolve().parents[1] / "embedded" / "clip")
    state = msgpack_restore(state_path.read_bytes())
    tokenizer = TextTokenizer.from_folder(out / "tokenizer" / "dalle", max_length=variant.bart.max_text_length)
    if dest.exists():
        shutil.rmtree(dest)
    save_dalle_bart(dest / "dalle", variant.bart, state["params"], scanned=True, tokenizer=tokenizer)
    (dest / "dalle" / "training.json").write_text(json.dumps({"snapshot_of": str(out), "step": int(state["step"])}) + "\n")
    shutil.copytree(out / "model" / "vqgan", dest / "vqgan")
    shutil.copytree(clip_src, dest / "clip")
    log.info("snapshot: DalleBart step %d of %s -> %s (CLIP from %s)", int(state["step"]), out, dest, clip_src)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    from dalle_core.train.loop import setup_logging

    parser = argparse.ArgumentParser(prog="python -m dalle_core.train.embedded", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="run folder (created; re-running resumes)")
    parser.add_argument("--config", help="YAML preset, e.g. configs/embedded.yaml")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--no-resume", action="store_true", help="ignore finished stages and checkpoints")
    parser.add_argument("--snapshot", metavar="DEST", help="train nothing: write the run's latest DalleBart checkpoint "
                        "with its VQGAN and CLIP to DEST, a folder benchmarks/eval_embedded.py can score")
    parser.add_argument("--clip", help="with --snapshot: CLIP folder when the run has none yet (default: the shipped one)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.snapshot:
        snapshot(args.out_dir, args.snapshot, args.config, args.clip)
        return 0
    model = train_embedded(args.out_dir, args.config, args.stages, resume=not args.no_resume)
    log.info("model folder: %s", model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
