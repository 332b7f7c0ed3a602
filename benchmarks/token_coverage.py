"""Can DalleBart draw the held-out objects at all? Count the image tokens they need that training never shows.

Renders the training and held-out scenes of an embedded preset (deterministic by its seed),
encodes both with a model's VQGAN and prints, per held-out kind, the share of held-out renders
that need a code absent from the training renders' tokens (a DalleBart trained on those tokens
never saw it as a target, so it cannot draw that render). ``--jitter`` overrides the preset's
jitter of the training renders, to see what jittered training data would cover.

    python benchmarks/token_coverage.py dalle_core/embedded
    python benchmarks/token_coverage.py dalle_core/embedded --jitter 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from dalle_core.checkpoints.vqgan import load_vqgan
    from dalle_core.train import shapes
    from dalle_core.train.embedded import load_config
    from dalle_core.train.vqgan import token_coverage

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", nargs="?", default=str(ROOT / "dalle_core" / "embedded"))
    p.add_argument("--config", default=str(ROOT / "configs" / "embedded.yaml"), help="embedded preset (seed, sizes, jitter)")
    p.add_argument("--jitter", type=int, default=None, help="jitter of the training renders (default: the preset's)")
    p.add_argument("--out", help="write the JSON report here")
    a = p.parse_args(argv)
    t0 = time.time()
    cfg = load_config(a.config)
    jitter = cfg.jitter if a.jitter is None else a.jitter
    vq_cfg, params = load_vqgan(Path(a.model_dir) / "vqgan")
    train = shapes.make_dataset(cfg.train_images, seed=cfg.seed, split="train", jitter=jitter)
    held = shapes.make_dataset(cfg.heldout_images, seed=cfg.seed, split="heldout", jitter=cfg.jitter)
    report = token_coverage(vq_cfg, params, train.images, held.images, held.scenes)
    report.update(model=a.model_dir, train_jitter=jitter, heldout_jitter=cfg.jitter)
    print(f"model {a.model_dir}  training renders {len(train.images)} (jitter {jitter}) use "
          f"{report['train_codes']} of {vq_cfg.n_embed} codes; held-out renders {len(held.images)}")
    print(f"{'held-out kind':<36} {'renders':>7} {'need unseen':>11} {'unseen codes':>12}")
    for key, g in report["groups"].items():
        print(f"{key:<36} {g['count']:7d} {g['needs_unseen']:11.2f} {g['unseen_codes']:12d}")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"total wall time {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
