"""The training domains of the embedded model behind one interface, so the training stages do not
depend on which one they train on.

``shapes``: coloured circles, squares and triangles (``dalle_core.train.shapes``).
``pictograms``: emoji concepts on coloured backgrounds (``dalle_core.train.pictograms``); its art
is fetched from the npm registry into ``art_dir`` by ``prepare``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOMAINS = ("shapes", "pictograms")


@dataclass
class ShapesDomain:
    jitter: int = 3
    name: str = "shapes"

    def prepare(self) -> None:
        pass

    def make_dataset(self, n: int, seed: int, split: str):
        from dalle_core.train import shapes

        return shapes.make_dataset(n, seed=seed, split=split, jitter=self.jitter)

    def save(self, path: Path, data) -> None:
        from dalle_core.train import shapes

        shapes.save_dataset(path, data)

    def load(self, path: Path):
        from dalle_core.train import shapes

        images = np.load(path)["images"]
        rows = [json.loads(line) for line in path.with_suffix(".jsonl").read_text().splitlines()]
        return shapes.ShapesData(images, [r["caption"] for r in rows], [shapes.Scene.from_dict(r["scene"]) for r in rows])

    def recaption(self, scenes, seed: int) -> list[str]:
        from dalle_core.train import shapes

        return shapes.recaption(scenes, seed=seed)

    def caption(self, scene, rng) -> str:
        from dalle_core.train import shapes

        return shapes.caption(scene, rng)

    def perturb(self, scene, rng):
        from dalle_core.train import shapes

        return shapes.perturb(scene, rng)

    def counterpart(self, scene, rng):
        from dalle_core.train import shapes

        return shapes.counterpart(scene, rng, self.jitter)

    def render(self, scene) -> np.ndarray:
        from dalle_core.train import shapes

        return shapes.render(scene)

    def check(self, image, scene) -> dict[str, bool]:
        from dalle_core.train import shapes

        return shapes.check(image, scene)


@dataclass
class PictogramDomain:
    art_dir: Path
    jitter: int = 3
    name: str = "pictograms"
    _concepts: object = None

    def prepare(self) -> None:
        from dalle_core.train import pictograms

        pictograms.fetch_sources(self.art_dir)

    @property
    def concepts(self):
        from dalle_core.train import pictograms

        if self._concepts is None:
            self.prepare()
            self._concepts = pictograms.Concepts.load(self.art_dir)
        return self._concepts

    def make_dataset(self, n: int, seed: int, split: str):
        from dalle_core.train import pictograms

        return pictograms.make_dataset(self.concepts, n, seed=seed, split=split, jitter=self.jitter)

    def save(self, path: Path, data) -> None:
        from dalle_core.train import pictograms

        pictograms.save_dataset(path, data)

    def load(self, path: Path):
        from dalle_core.train import pictograms

        return pictograms.load_dataset(path)

    def recaption(self, scenes, seed: int) -> list[str]:
        from dalle_core.train import pictograms

        return pictograms.recaption(scenes, self.concepts, seed)

    def caption(self, scene, rng) -> str:
        from dalle_core.train import pictograms

        return pictograms.caption(scene, self.concepts, rng)

    def perturb(self, scene, rng):
        from dalle_core.train import pictograms

        return pictograms.perturb(scene, len(self.concepts), rng)

    def counterpart(self, scene, rng):
        from dalle_core.train import pictograms

        return pictograms.counterpart(scene, len(self.concepts), rng)

    def render(self, scene) -> np.ndarray:
        from dalle_core.train import pictograms

        return pictograms.render(scene, self.concepts)

    def check(self, image, scene) -> dict[str, bool]:
        from dalle_core.train import pictograms

        return pictograms.check(image, scene, self.concepts)


def get_domain(name: str, out_dir: Path, jitter: int = 3, art_dir: str | Path | None = None):
    """The domain called ``name``; pictogram art goes to ``art_dir`` (default ``out_dir/art``)."""
    if name == "shapes":
        return ShapesDomain(jitter)
    if name == "pictograms":
        return PictogramDomain(Path(art_dir) if art_dir else Path(out_dir) / "art", jitter)
    raise ValueError(f"unknown domain {name!r}; known: {', '.join(DOMAINS)}")
