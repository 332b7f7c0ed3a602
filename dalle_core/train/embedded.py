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
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dalle_core.config import get_variant
from dalle_core.train.run_config import EmbeddedConfig, load_config
from dalle_core.train.run_data import (
    all_captions,
    domain_of,
    extra_count,
    extra_scenes,
    load_data,
)

log = logging.getLogger(__name__)

STAGES = ("data", "tokenizer", "vqgan", "tokens", "decoder", "bart", "clip", "clip_tune", "export")


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
            train = load_data(out, "train", cfg)
            params = train_vqgan(variant.vqgan, train.images, out / "vqgan_run", cfg.vqgan, resume=resume)
            held = load_data(out, "heldout", cfg)
            report = reconstruction_report(variant.vqgan, params, held.images, held.scenes, domain.check)
            log.info("vqgan reconstruction, pixel checker on held-out renders: %s", report)
            (out / "vqgan_report.json").write_text(json.dumps(report, indent=2) + "\n")
            save_vqgan(model_dir / "vqgan", variant.vqgan, params)
        elif stage == "tokens":
            from dalle_core.checkpoints.vqgan import load_vqgan
            from dalle_core.train.vqgan import encode_images

            vq_cfg, vq_params = load_vqgan(model_dir / "vqgan")
            if not (resume and (out / "tokens.npz").exists()):
                train = load_data(out, "train", cfg)
                codes = encode_images(vq_cfg, vq_params, train.images)
                np.savez_compressed(out / "tokens.npz", codes=codes)
                log.info("tokens: %d images, %d distinct codes used", len(codes), len(np.unique(codes)))
            if cfg.bart_extra_images and not (resume and extra_count(out) == cfg.bart_extra_images):
                extra_scenes(out, cfg, functools.partial(encode_images, vq_cfg, vq_params))
        elif stage == "decoder":
            from dalle_core.checkpoints.vqgan import load_vqgan, save_vqgan
            from dalle_core.train.vqgan import reconstruction_report, train_vqgan

            done = out / "vqgan_decoder_report.json"
            if resume and done.exists():
                continue
            vq_cfg, vq_params = load_vqgan(model_dir / "vqgan")
            train = load_data(out, "train", cfg)
            params = train_vqgan(vq_cfg, train.images, out / "vqgan_decoder_run", cfg.vqgan_decoder,
                                 resume=resume, init_params=vq_params)
            held = load_data(out, "heldout", cfg)
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
    texts = [c for caps in all_captions(out, cfg) for c in caps]
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
