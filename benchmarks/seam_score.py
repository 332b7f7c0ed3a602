"""Seam score of token-space outpainting: is a join more visible than any other token boundary?

For each join (a token column or row where newly sampled tokens meet earlier ones) we take the
gradient energy across that pixel boundary — the mean absolute difference between the two pixel
columns (rows) on either side, over the whole image height (width) and the three channels — and
divide it by the median energy across the image's other token boundaries. A ratio near 1.0 means
the join looks like any other place in the image; a visible seam scores well above 1.

Two controls are printed with it:
  naive   two independently sampled images pasted side by side / on top of each other (a seam by
          construction; the score should be clearly > 1 for the metric to mean anything);
  interior the centre boundary of an un-outpainted image (≈ 1 by definition of "no seam").

Run (CPU is fine; the random-init model makes noise, so its scores only check the plumbing):

    python benchmarks/seam_score.py --model random-tiny --samples 4
    python benchmarks/seam_score.py --model embedded --samples 8 --aspect 1200x630 --aspect 1000x1500
    python benchmarks/seam_score.py --model /path/with/dalle,vqgan --samples 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def boundary_energy(image: np.ndarray, axis: int) -> np.ndarray:
    """Mean |difference| across each pixel boundary along ``axis`` (1: columns, 0: rows).

    image uint8 [H, W, 3] → float [W-1] (axis=1) or [H-1] (axis=0); entry i is the boundary
    between pixel i and i+1.
    """
    x = image.astype(np.float32)
    diff = np.abs(np.diff(x, axis=axis))
    other = 0 if axis == 1 else 1
    return diff.mean(axis=(other, 2))


def seam_ratio(image: np.ndarray, joins: list[int], px_per_token: int, axis: int) -> float:
    """Median join energy / median energy of the other token boundaries (see module docstring)."""
    energy = boundary_energy(image, axis)
    n_tokens = image.shape[axis] // px_per_token
    boundaries = [k * px_per_token - 1 for k in range(1, n_tokens)]
    join_px = {j * px_per_token - 1 for j in joins}
    others = [energy[b] for b in boundaries if b not in join_px]
    at_joins = [energy[b] for b in sorted(join_px)]
    if not at_joins or not others:
        raise ValueError("need at least one join and one other token boundary")
    return float(np.median(at_joins) / max(np.median(others), 1e-6))


def load_generator(model: str):
    from dalle_core.generator import Generator

    if model.startswith("random-"):
        return Generator.random(model.removeprefix("random-"))
    if model == "embedded":
        from pathlib import Path

        import dalle_core

        folder = Path(dalle_core.__file__).parent / "embedded"
        if not folder.exists():
            sys.exit(
                f"the embedded model is not installed ({folder}); use --model random-tiny or a folder"
            )
        return Generator.from_folder(folder, name="embedded-tiny")
    return Generator.from_folder(model)


def main(argv=None) -> None:
    from dalle_core.outpaint import OutpaintSettings, decode_grid, outpaint_tokens, target_grid
    from dalle_core.types import SamplingSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default="random-tiny", help="random-tiny | embedded | checkpoint folder"
    )
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--aspect",
        action="append",
        help="WxH, e.g. 1200x630 (repeatable); default 1200x630 and 1000x1500",
    )
    ap.add_argument(
        "--prompt", action="append", help="repeatable; default: three cover-style prompts"
    )
    ap.add_argument("--condition-scale", type=float, default=3.0)
    ap.add_argument("--horizontal", default="both")
    ap.add_argument("--vertical", default="down")
    args = ap.parse_args(argv)
    aspects = args.aspect or ["1200x630", "1000x1500"]
    prompts = args.prompt or [
        "a lighthouse on a cliff at sunset",
        "a cozy home office with plants",
        "a mountain lake",
    ]

    t0 = time.perf_counter()
    gen = load_generator(args.model)
    print(
        f"model: {gen.info.name} (variant {gen.info.variant}, random_init={gen.info.random_init}); "
        f"loaded in {time.perf_counter() - t0:.1f}s"
    )
    g = gen.variant.bart.grid_size
    f = gen.variant.vqgan.resolution // gen.variant.vqgan.grid_size
    settings = SamplingSettings(condition_scale=args.condition_scale, top_k=64)
    outpaint = OutpaintSettings(horizontal=args.horizontal, vertical=args.vertical)

    for aspect in aspects:
        w, h = (int(v) for v in aspect.lower().split("x"))
        shape = target_grid(g, w / h)
        axis = 1 if w >= h else 0
        scores, naive, interior = [], [], []
        t0 = time.perf_counter()
        for i in range(args.samples):
            prompt = prompts[i % len(prompts)]
            seed = args.seed + i
            pair = gen.sample_tokens([prompt], 2, seed, settings)[0]
            res = outpaint_tokens(
                gen, pair[0], prompt, shape, seed=seed, settings=settings, outpaint=outpaint
            )
            image = decode_grid(gen, res.tokens)
            joins = res.joins_x if axis == 1 else res.joins_y
            scores.append(seam_ratio(image, joins, f, axis))
            # controls: two unrelated samples pasted together; the middle of a plain sample
            pasted = np.concatenate([pair[0], pair[1]], axis=axis)
            naive.append(seam_ratio(decode_grid(gen, pasted), [g], f, axis))
            interior.append(seam_ratio(decode_grid(gen, pair[0]), [g // 2], f, axis))
        dt = time.perf_counter() - t0
        print(
            f"{aspect}: grid {shape[0]}x{shape[1]} ({'wide' if axis == 1 else 'tall'}, "
            f"{outpaint.horizontal if axis == 1 else outpaint.vertical}); {args.samples} samples in {dt:.1f}s\n"
            f"  seam ratio outpainted: median {statistics.median(scores):.2f} "
            f"(min {min(scores):.2f}, max {max(scores):.2f})\n"
            f"  control naive paste:   median {statistics.median(naive):.2f}\n"
            f"  control interior:      median {statistics.median(interior):.2f}"
        )


if __name__ == "__main__":
    main()
