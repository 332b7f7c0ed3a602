"""How often does a model draw a given prompt right? The pixel checker on n samples of each prompt.

The prompts are the ones the docs quote (the README's quick start, the style that the default
``plain`` replaced): each is paired with the scene the image must show, and every sample is
scored by ``shapes.check`` (colour and shape; the position too where one is asked).

    python benchmarks/prompt_accuracy.py                      # the embedded model, 32 samples each
    python benchmarks/prompt_accuracy.py MODEL_DIR --n 64 --prompt "a green triangle=green triangle"

``--prompt TEXT=SCENE`` adds a prompt; SCENE is "colour shape" with an optional position word
(left, right, top, bottom, center).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (prompt, scene): the scene as "colour shape [position]"
QUOTED = (
    ("a red circle", "red circle"),
    ("red circle", "red circle"),
    ("a blue square on the left", "blue square left"),
    ("red circle, digital illustration, vibrant colors", "red circle"),
)


def parse_scene(spec: str):
    """``"blue square left"`` -> a one-object ``Scene`` (medium size, anchored where the position says)."""
    from dalle_core.train import shapes

    words = spec.split()
    if len(words) not in (2, 3) or words[0] not in shapes.COLOURS or words[1] not in shapes.SHAPES:
        raise ValueError(f"scene {spec!r}: expected 'colour shape [position]' with colour in "
                         f"{', '.join(shapes.COLOURS)} and shape in {', '.join(shapes.SHAPES)}")
    position = words[2] if len(words) == 3 else None
    if position not in shapes.NOMINAL_ANCHOR:
        raise ValueError(f"scene {spec!r}: unknown position {position!r}; known: {', '.join(shapes.POSITIONS)}")
    cx, cy = shapes.NOMINAL_ANCHOR[position]
    return shapes.Scene((shapes.Obj(words[0], words[1], cx, cy, shapes.EXTENT["medium"]),), position=position)


def main(argv=None) -> int:
    from dalle_core.generator import Generator
    from dalle_core.train import shapes
    from dalle_core.types import SamplingSettings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", nargs="?", default=str(ROOT / "dalle_core" / "embedded"))
    p.add_argument("--n", type=int, default=32, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--scale", type=float, default=1.0, help="condition scale")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT=SCENE", help="add a prompt (repeatable)")
    p.add_argument("--out", help="write the JSON report here")
    a = p.parse_args(argv)
    pairs = list(QUOTED)
    for item in a.prompt:
        text, sep, scene = item.rpartition("=")
        if not sep or not text.strip():
            p.error(f"--prompt {item!r}: expected TEXT=SCENE")
        pairs.append((text.strip(), scene.strip()))
    try:
        scenes = [parse_scene(s) for _, s in pairs]
    except ValueError as e:
        p.error(str(e))

    t0 = time.time()
    gen = Generator.from_folder(a.model_dir)
    settings = SamplingSettings(condition_scale=a.scale, top_k=a.top_k or None, top_p=None, temperature=1.0)
    images = gen.decode(gen.sample_tokens([text for text, _ in pairs], a.n, a.seed, settings))  # [P, n, H, W, 3]
    rows = []
    for samples, (text, spec), scene in zip(images, pairs, scenes, strict=True):
        key = "position" if scene.position else "colour_shape"
        right = sum(bool(shapes.check(img, scene)[key]) for img in samples)
        rows.append({"prompt": text, "scene": spec, "right": right, "n": a.n, "share": round(right / a.n, 4)})
        print(f"{right:3d}/{a.n} {100 * right / a.n:5.1f}%  {text!r}  (checked as: {spec})")
    report = {"model": a.model_dir, "seed": a.seed, "top_k": a.top_k, "scale": a.scale, "prompts": rows,
              "seconds": round(time.time() - t0, 1)}
    print(f"{report['seconds']} s")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
