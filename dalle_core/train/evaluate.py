"""Score a model on the shapes domain with the pixel checker (not CLIP).

For every held-out prompt (``shapes.eval_prompts``) the model samples ``n`` images per condition
scale; the checker scores

* ``colour_shape``: single-object prompts (sized and positioned), exactly one object of the right
  colour and shape;
* ``position``: positioned prompts, colour+shape right and the centroid in the named region;
* ``relation``: two-object prompts, both objects right and the relation holding.

Each is reported for the first sample (what a user without ranking gets), for the sample CLIP
ranks best (when the model has CLIP), as the mean over all ``n`` samples, and as "any" (some
sample is right: the ceiling of any re-ranking). With ``repeats`` R every prompt gets R·n samples
and each figure is the average over R disjoint groups of n (one held-out prompt is 1/15 of
colour+shape, so a single group of samples is a noisy measurement).

    python -m dalle_core.train.evaluate dalle_core/embedded --n 4 --scales 1,3,10
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

METRICS = ("colour_shape", "position", "relation")


def _prompt_metrics(prompt) -> list[str]:
    sc = prompt.scene
    if sc.kind == "pair":
        return ["relation"]
    return ["colour_shape", "position"] if sc.position else ["colour_shape"]


def evaluate(
    model_dir: str | os.PathLike,
    n: int = 4,
    condition_scales: Sequence[float] = (1.0, 3.0, 10.0),
    seed: int = 0,
    top_k: int | None = None,
    split: str = "heldout",
    batch_prompts: int = 16,
    out: str | os.PathLike | None = None,
    limit: int | None = None,
    generator=None,
    details: bool = False,
    repeats: int = 1,
    view_shift: float | None = None,
    drop_words: Sequence[str] | None = None,
) -> dict:
    """Generate for the ``split`` prompts and score; returns a JSON-able report (also written to ``out``).

    report["scales"][str(scale)][metric] = {"first": acc, "clip": acc | None, "mean": acc, "any": acc, "count": prompts}.
    ``limit`` keeps the first prompts of each kind (quick checks). ``generator``: an already
    loaded ``Generator`` (else loaded from ``model_dir``). ``details``: also keep, per scale and
    prompt, each sample's result and what the checker saw (``report["details"][scale]``; the
    first group of ``n`` when ``repeats`` > 1). ``view_shift``: CLIP's scoring views
    (``dalle_core.rank.view_offsets``; None keeps the generator's, 0 scores the plain image); it is
    set on ``generator`` and stays set there. ``drop_words``: the words CLIP also scores a prompt
    without (``dalle_core.rank.prompt_views``; None keeps the generator's, () the prompt alone); set
    on ``generator`` like ``view_shift``.
    """
    from dalle_core.generator import Generator
    from dalle_core.train import shapes
    from dalle_core.types import SamplingSettings

    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1, got {n} and {repeats}")
    gen = generator or Generator.from_folder(model_dir)
    if view_shift is not None:
        gen.set_clip_view_shift(view_shift)
    if drop_words is not None:
        gen.set_clip_drop_words(drop_words)
    prompts = shapes.eval_prompts(split)
    if limit:
        by_kind: dict[str, list] = {}
        for p in prompts:
            by_kind.setdefault(_prompt_metrics(p)[-1], []).append(p)
        prompts = [p for group in by_kind.values() for p in group[:limit]]
    report: dict = {"model": str(model_dir), "split": split, "n": n, "repeats": repeats, "seed": seed, "top_k": top_k,
                    "prompts": len(prompts), "clip": bool(gen.has_clip),
                    "clip_views": gen.clip_views, "clip_drop_words": gen.clip_drop_words, "scales": {}}
    for scale in condition_scales:
        settings = SamplingSettings(condition_scale=float(scale), top_k=top_k, top_p=None, temperature=1.0)
        t0 = time.time()
        hits: dict[str, dict[str, list]] = {m: {"first": [], "clip": [], "mean": [], "any": []} for m in METRICS}
        rows: list[dict] = []
        for start in range(0, len(prompts), batch_prompts):
            chunk = prompts[start : start + batch_prompts]
            # pad the last chunk with repeats: one batch shape, one compilation
            texts = [p.text for p in chunk] + [chunk[-1].text] * (batch_prompts - len(chunk))
            tokens = gen.sample_tokens(texts, n * repeats, seed + start, settings)[: len(chunk)]
            images = gen.decode(tokens)  # [P, R·n, H, W, 3]
            scores = gen.score(texts[: len(chunk)], images)
            for i, p in enumerate(chunk):
                for g in range(repeats):
                    group = slice(g * n, (g + 1) * n)
                    detail = _score_group(p, images[i, group], None if scores is None else scores[i, group], hits)
                    if details and g == 0:
                        rows.append(detail)
        seconds = time.time() - t0
        row = {}
        for m, h in hits.items():
            if not h["first"]:
                continue
            row[m] = {
                "first": round(float(np.mean(h["first"])), 4),
                "clip": round(float(np.mean(h["clip"])), 4) if h["clip"] else None,
                "mean": round(float(np.mean(h["mean"])), 4),
                "any": round(float(np.mean(h["any"])), 4),
                "count": len(h["first"]) // repeats,
            }
        row["seconds"] = round(seconds, 1)
        report["scales"][str(float(scale))] = row
        if details:
            report.setdefault("details", {})[str(float(scale))] = rows
        log.info("scale %s: %s", scale, json.dumps(row))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _score_group(prompt, images, scores, hits: dict) -> dict:
    """Check one group of samples of one prompt (uint8 [n, H, W, 3], CLIP scores [n] or None),
    append to ``hits`` and return the group's details row."""
    from dalle_core.train import shapes

    objects = [shapes.objects_in(im) for im in images]
    results = [shapes.check(im, prompt.scene, objs) for im, objs in zip(images, objects, strict=True)]
    best = int(np.argmax(scores)) if scores is not None else None
    key = _prompt_metrics(prompt)[-1]
    side = images.shape[-2]
    seen = [", ".join(f"{shapes.size_of(c.extent, side)} {c.colour} {c.shape}" for c in objs) for objs in objects]
    for m in _prompt_metrics(prompt):
        col = [bool(r[m]) for r in results]
        hits[m]["first"].append(col[0])
        hits[m]["mean"].append(float(np.mean(col)))
        hits[m]["any"].append(any(col))
        if best is not None:
            hits[m]["clip"].append(col[best])
    return {"prompt": prompt.text, "metric": key, "ok": [bool(r[key]) for r in results], "clip_pick": best, "seen": seen}


def format_report(report: dict) -> str:
    """A plain-text table of a report: one line per scale × metric."""
    repeats = report.get("repeats", 1)
    views = report.get("clip_views")
    lines = [f"model {report['model']}  split {report['split']}  prompts {report['prompts']}  n {report['n']}"
             + (f"  (average of {repeats} groups of n)" if repeats > 1 else "")
             + (f"  CLIP views {views}" if views else "")
             + (f"  drop words {','.join(report['clip_drop_words'])}" if report.get("clip_drop_words") else ""),
             f"{'scale':>6} {'metric':<13} {'first':>7} {'clip':>7} {'mean':>7} {'any':>7} {'count':>6}"]
    for scale, row in report["scales"].items():
        for m in METRICS:
            if m in row:
                r = row[m]
                clip = f"{r['clip']:.3f}" if r["clip"] is not None else "   -"
                lines.append(f"{scale:>6} {m:<13} {r['first']:7.3f} {clip:>7} {r['mean']:7.3f} {r['any']:7.3f} {r['count']:6d}")
    for scale, rows in report.get("details", {}).items():
        lines.append(f"scale {scale}, prompts whose CLIP pick (or first sample) fails; right/samples, "
                     "what the checker saw in the pick and most often:")
        for r in rows:
            pick = r["clip_pick"] if r["clip_pick"] is not None else 0
            if not r["ok"][pick]:
                common = Counter(r["seen"]).most_common(3)
                lines.append(f"  {r['metric']:<12} {sum(r['ok']):>2}/{len(r['ok'])}  {r['prompt']!r}: "
                             f"picked {r['seen'][pick] or 'nothing'}; "
                             + "; ".join(f"{k or 'nothing'} ×{v}" for k, v in common))
    return "\n".join(lines)


def _words(arg: str | None) -> tuple[str, ...] | None:
    return None if arg is None else tuple(w.strip() for w in arg.split(",") if w.strip())


def main(argv: Sequence[str] | None = None) -> int:
    from dalle_core.train.loop import setup_logging

    p = argparse.ArgumentParser(prog="python -m dalle_core.train.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("model_dir", nargs="?", default=str(Path(__file__).resolve().parents[1] / "embedded"))
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--scales", default="1,3,10", help="comma-separated condition scales")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k")
    p.add_argument("--split", default="heldout", choices=("heldout", "train"))
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts of each kind")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--details", action="store_true", help="list the prompts that fail and what the checker saw")
    p.add_argument("--repeats", type=int, default=1, help="average over this many disjoint groups of n samples")
    p.add_argument("--view-shift", type=float, default=None,
                   help="CLIP scoring views' shift in CLIP patches (default: the Ranker's, 0.375; 0: plain image only)")
    p.add_argument("--drop-words", default=None,
                   help="comma-separated words CLIP also scores a prompt without (default: the Ranker's, "
                        "the size words; '' scores the prompt alone)")
    a = p.parse_args(argv)
    setup_logging()
    scales = [float(s) for s in a.scales.split(",") if s.strip()]
    report = evaluate(a.model_dir, n=a.n, condition_scales=scales, seed=a.seed, top_k=a.top_k or None,
                      split=a.split, out=a.out, limit=a.limit, details=a.details, repeats=a.repeats,
                      view_shift=a.view_shift, drop_words=_words(a.drop_words))
    print(format_report(report))  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
