"""The synthetic "shapes" domain the embedded model is trained on, and its pixel checker.

This module is a CONTRACT (issue 4): outside tools score images against it, so the palette, the
words and the geometry below are fixed.

Images are 64×64 sRGB uint8 on a plain white background. Each holds one or two shapes filled with
one solid palette colour:

* shapes: ``circle``, ``square``, ``triangle`` (isosceles, apex up);
* colours: red (230,25,25), green (30,170,60), blue (30,80,220), yellow (240,210,20),
  purple (140,50,170), orange (245,130,20);
* one object, optionally with a position (``on the left``, ``on the right``, ``at the top``,
  ``at the bottom``, ``in the center``) and a size (``small``, ``large``);
* two objects of different colours, not overlapping, related by ``to the left of``,
  ``to the right of``, ``above`` or ``below``.

Geometry (pixels, image side 64): object extents (bounding-box side) are small 12, medium 20,
large 30; both objects of a two-object scene are medium. Objects are placed by the centre of their
bounding box, always on the 8-pixel grid of the VQGAN tokens, so an object's pixels line up with
the tokens the same way wherever it is (this keeps the tiny VQGAN's codebook and the tiny
DalleBart's job small). Positioned objects sit at 16 ("left"/"top") or 48 ("right"/"bottom") on
the named axis and at 24, 32 or 40 on the other; "in the center" is x in {24, 32, 40}, y = 32;
objects without a position word are anywhere in {24, 32, 40}². A two-object scene puts its
objects at 16 and 48 on the relation's axis and each at 24, 32 or 40 on the other. With
``jitter`` (off by default) every object then moves by a few whole pixels off that grid.

Held-out split (attribute combinations that the "train" split never contains; see
``HELDOUT_SINGLE``, ``HELDOUT_SIZED`` and ``HELDOUT_PAIRS``):

* 9 colour × shape × position triples (e.g. a red triangle on the left), whatever the size word;
  every colour×shape, colour×position and shape×position pair still occurs in training;
* 6 size × colour × shape triples (e.g. a small purple square), in any position;
* 13 unordered pairs of objects (e.g. red circle + blue triangle), in every relation and order.

Everything is deterministic given a seed. The pixel checker (``analyze``/``check``) segments
non-white pixels into connected components of one palette colour, then reads colour, shape (fill
ratio of the bounding box and how full its corners are), size and position (pixel centroid).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SIZE = 64

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 170, 60),
    "blue": (30, 80, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
SIZES: tuple[str, ...] = ("small", "medium", "large")  # "medium" has no word in captions
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")

EXTENT = {"small": 12, "medium": 20, "large": 30}
PAIR_EXTENT = 20
JITTER = (-8, 0, 8)  # on the axis a position word does not fix

# Canonical phrases (used by the evaluation prompts; captions also use synonyms).
POSITION_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
CONVERSE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}  # "a R b" == "b R' a"
RELATION_PHRASE = {
    "left_of": "to the left of",
    "right_of": "to the right of",
    "above": "above",
    "below": "below",
}

# --- held-out split -----------------------------------------------------------------------------
# Chosen by hand so that every pair of attributes inside a held-out triple still occurs in training
# (the model must compose known pieces, not invent unknown ones). "a red circle" and "a blue square
# on the left" (the acceptance prompts) are deliberately in training.
HELDOUT_SINGLE: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "triangle", "left"),
        ("green", "circle", "right"),
        ("blue", "square", "top"),
        ("yellow", "triangle", "bottom"),
        ("purple", "circle", "center"),
        ("orange", "square", "right"),
        ("red", "square", "bottom"),
        ("green", "triangle", "center"),
        ("blue", "circle", "left"),
    }
)
HELDOUT_SIZED: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("small", "purple", "square"),
        ("large", "yellow", "circle"),
        ("small", "orange", "triangle"),
        ("large", "green", "square"),
        ("small", "blue", "circle"),
        ("large", "red", "triangle"),
    }
)
HELDOUT_PAIRS: frozenset[frozenset[tuple[str, str]]] = frozenset(
    frozenset(p)
    for p in [
        (("red", "circle"), ("blue", "triangle")),
        (("green", "square"), ("yellow", "circle")),
        (("purple", "triangle"), ("orange", "circle")),
        (("blue", "square"), ("green", "triangle")),
        (("yellow", "square"), ("red", "triangle")),
        (("orange", "square"), ("purple", "circle")),
        (("red", "square"), ("green", "circle")),
        (("blue", "circle"), ("yellow", "triangle")),
        (("purple", "square"), ("red", "circle")),
        (("green", "triangle"), ("orange", "triangle")),
        (("yellow", "circle"), ("purple", "triangle")),
        (("orange", "circle"), ("blue", "square")),
        (("red", "triangle"), ("green", "square")),
    ]
)


# --- scenes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Obj:
    """One shape: colour and shape names, pixel-centroid anchor ``(cx, cy)`` and extent in pixels."""

    colour: str
    shape: str
    cx: float
    cy: float
    extent: int


@dataclass(frozen=True)
class Scene:
    """What an image shows, in words the checker understands.

    position/size: only for single-object scenes (None = not mentioned in the caption).
    relation: for two-object scenes, ``objects[0] <relation> objects[1]``.
    """

    objects: tuple[Obj, ...]
    position: str | None = None
    size: str | None = None
    relation: str | None = None

    @property
    def kind(self) -> str:
        return "single" if len(self.objects) == 1 else "pair"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        objs = tuple(Obj(**o) for o in d["objects"])
        return cls(objs, d.get("position"), d.get("size"), d.get("relation"))


def is_heldout(scene: Scene) -> bool:
    """True when the scene's attribute combination belongs to the held-out split."""
    if scene.kind == "single":
        o = scene.objects[0]
        if scene.position is not None and (o.colour, o.shape, scene.position) in HELDOUT_SINGLE:
            return True
        return scene.size is not None and (scene.size, o.colour, o.shape) in HELDOUT_SIZED
    a, b = scene.objects
    return frozenset({(a.colour, a.shape), (b.colour, b.shape)}) in HELDOUT_PAIRS


# Where an object asked for with a position word sits in an evaluation scene (None: no position).
NOMINAL_ANCHOR: dict[str | None, tuple[int, int]] = {
    None: (32, 32), "left": (16, 32), "right": (48, 32), "top": (32, 16), "bottom": (32, 48), "center": (32, 32),
}


def _anchor_single(rng: np.random.Generator, position: str | None) -> tuple[float, float]:
    j = 32 + int(rng.choice(JITTER))
    if position is None:
        return float(j), float(32 + int(rng.choice(JITTER)))
    return {"left": (16, j), "right": (48, j), "top": (j, 16), "bottom": (j, 48), "center": (j, 32)}[position]


def sample_scene(rng: np.random.Generator, split: str = "train", p_pair: float = 0.4, jitter: int = 0) -> Scene:
    """Draw one scene of the given split (``"train"`` or ``"heldout"``) by rejection.

    ``jitter``: shift every object by up to this many pixels on each axis (``jittered``); 0 keeps
    the anchors on the 8-pixel grid and draws nothing more from ``rng``.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    want_heldout = split == "heldout"
    for _ in range(10_000):
        scene = _sample_any(rng, p_pair)
        if is_heldout(scene) == want_heldout:
            return jittered(scene, rng, jitter) if jitter else scene
    raise RuntimeError("could not draw a scene of the requested split")  # pragma: no cover


def jittered(scene: Scene, rng: np.random.Generator, jitter: int, tries: int = 20) -> Scene:
    """The scene with each object moved by whole pixels in [-jitter, jitter] on both axes.

    Why: anchors on the 8-pixel token grid put an object's edges at the same offsets inside the
    VQGAN's 8×8 patches for every object of one size, so a size×colour×shape triple that training
    never shows needs image tokens that DalleBart never saw as targets (measured with the v7 VQGAN:
    every held-out "large yellow circle" render needs 6 such codes). Jittered training renders
    show every colour at every edge offset. A shift that would push an object over the border or
    make the caption false (the checker no longer sees the named position or relation in the
    render) is drawn again; after ``tries`` failures the scene stays where it was.
    """
    for _ in range(tries):
        moved = tuple(
            dataclasses.replace(o, cx=o.cx + int(rng.integers(-jitter, jitter + 1)), cy=o.cy + int(rng.integers(-jitter, jitter + 1)))
            for o in scene.objects
        )
        inside = all(o.extent / 2 <= c <= IMAGE_SIZE - o.extent / 2 for o in moved for c in (o.cx, o.cy))
        candidate = dataclasses.replace(scene, objects=moved)
        if inside and all(check(render(candidate), candidate).values()):
            return candidate
    return scene


def _sample_any(rng: np.random.Generator, p_pair: float) -> Scene:
    if rng.random() < p_pair:
        relation = str(rng.choice(RELATIONS))
        c1, c2 = rng.choice(len(COLOURS), size=2, replace=False)
        s1, s2 = rng.integers(len(SHAPES), size=2)
        # anchors of the first (A) and second (B) object for "A left_of B" / "A above B"
        near, far = 16, 48
        other_a, other_b = 32 + int(rng.choice(JITTER)), 32 + int(rng.choice(JITTER))
        if relation in ("left_of", "right_of"):
            pa, pb = (near, other_a), (far, other_b)
            if relation == "right_of":
                pa, pb = (far, other_a), (near, other_b)
        else:
            pa, pb = (other_a, near), (other_b, far)
            if relation == "below":
                pa, pb = (other_a, far), (other_b, near)
        a = Obj(COLOURS[c1], SHAPES[s1], float(pa[0]), float(pa[1]), PAIR_EXTENT)
        b = Obj(COLOURS[c2], SHAPES[s2], float(pb[0]), float(pb[1]), PAIR_EXTENT)
        return Scene((a, b), relation=relation)
    colour = str(rng.choice(COLOURS))
    shape = str(rng.choice(SHAPES))
    position = None if rng.random() < 0.35 else str(rng.choice(POSITIONS))
    size = None if rng.random() < 0.5 else str(rng.choice(("small", "large")))
    cx, cy = _anchor_single(rng, position)
    extent = EXTENT[size or "medium"]
    return Scene((Obj(colour, shape, cx, cy, extent),), position=position, size=size)


# --- rendering ----------------------------------------------------------------------------------
def shape_mask(shape: str, cx: float, cy: float, extent: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean mask [size, size] of one shape whose bounding box is centred on ``(cx, cy)``.

    Triangles point up (apex at the top centre, base at the bottom); their pixel centroid is
    extent/6 below the box centre, which the checker's position regions allow for.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    half = extent / 2.0
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
    if shape == "square":
        return (np.abs(xs - cx) < half) & (np.abs(ys - cy) < half)
    if shape == "triangle":
        t = (ys - (cy - half)) / extent  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(xs - cx) <= t * half)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render a scene: uint8 [size, size, 3], white background, hard (not anti-aliased) edges."""
    img = np.full((size, size, 3), 255, np.uint8)
    scale = size / IMAGE_SIZE
    for o in scene.objects:
        mask = shape_mask(o.shape, o.cx * scale, o.cy * scale, int(round(o.extent * scale)), size)
        img[mask] = PALETTE[o.colour]
    return img


def recolour(images: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Colour augmentation for the VQGAN: in a share ``p`` of the images, every palette colour
    is replaced by a random colour (uniform RGB, redrawn while too close to white).

    uint8 [B, H, W, 3] → a new array. It uses no held-out list: it teaches the tokenizer that a
    shape's outline does not depend on its colour, so it can encode colour×shape×size triples its
    training renders never combined.
    """
    out = np.array(images, copy=True)
    pal = np.array(list(PALETTE.values()), np.int16)  # [6, 3]
    for b in np.nonzero(rng.random(len(out)) < p)[0]:
        new = rng.integers(0, 256, size=(len(pal), 3))
        while (bad := new.min(axis=1) > 200).any():
            new[bad] = rng.integers(0, 256, size=(int(bad.sum()), 3))
        img = out[b].astype(np.int16)
        for k in range(len(pal)):
            out[b][(img == pal[k]).all(axis=-1)] = new[k]
    return out


# --- captions -----------------------------------------------------------------------------------
_SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big")}
_SHAPE_WORDS = {"circle": ("circle", "circle", "circle", "disk"), "square": ("square",), "triangle": ("triangle",)}
_COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"purple": ("purple", "purple", "violet")}
_POS_WORDS = {
    "left": ("on the left", "on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right", "on the right side", "at the right"),
    "top": ("at the top", "at the top", "near the top", "at the top of the image"),
    "bottom": ("at the bottom", "at the bottom", "near the bottom", "at the bottom of the image"),
    "center": ("in the center", "in the center", "in the middle", "centered"),
}
_SINGLE_FRAMES = ("{}", "{}", "{}", "a picture of {}", "an image of {}", "{} on a white background", "a drawing of {}")
_PAIR_FRAMES = ("{}", "{}", "{}", "a picture of {}", "an image of {}", "a drawing of {}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def object_phrase(
    colour: str, shape: str, size: str | None = None, rng: np.random.Generator | None = None
) -> str:
    """``"a small red circle"``; with ``rng``, synonyms and word orders vary."""
    if rng is None:
        words = ([size] if size and size != "medium" else []) + [colour, shape]
        return f"{_article(words[0])} {' '.join(words)}"
    c, s = _pick(rng, _COLOUR_WORDS[colour]), _pick(rng, _SHAPE_WORDS[shape])
    z = _pick(rng, _SIZE_WORDS[size]) if size and size != "medium" else None
    form = int(rng.integers(6))
    if form == 4:  # "a circle in red", "a small circle in red"
        words = ([z] if z else []) + [s, "in", c]
    elif form == 5:  # "a red-coloured circle"... kept plain: "a red colored circle"
        words = ([z] if z else []) + [c, "colored", s]
    else:
        words = ([z] if z else []) + [c, s]
    return f"{_article(words[0])} {' '.join(words)}"


def canonical_caption(scene: Scene) -> str:
    """The one plain caption of a scene (the evaluation prompts use it)."""
    if scene.kind == "single":
        o = scene.objects[0]
        text = object_phrase(o.colour, o.shape, scene.size)
        return f"{text} {POSITION_PHRASE[scene.position]}" if scene.position else text
    a, b = scene.objects
    return f"{object_phrase(a.colour, a.shape)} {RELATION_PHRASE[scene.relation]} {object_phrase(b.colour, b.shape)}"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random caption for a scene: template, synonyms and word order vary."""
    if scene.kind == "single":
        o = scene.objects[0]
        obj = object_phrase(o.colour, o.shape, scene.size, rng)
        if scene.position and rng.random() < 0.25:  # position first: "on the left, a red circle"
            return f"{POSITION_PHRASE[scene.position]}, {obj}"
        if scene.position:
            obj = f"{obj} {_pick(rng, _POS_WORDS[scene.position])}"
        return _pick(rng, _SINGLE_FRAMES).format(obj)
    a, b = scene.objects
    pa, pb = object_phrase(a.colour, a.shape, None, rng), object_phrase(b.colour, b.shape, None, rng)
    rel = scene.relation
    # Express "a REL b" or, half of the time, the converse "b REL' a".
    if rng.random() < 0.5:
        pa, pb = pb, pa
        rel = CONVERSE[rel]
    horizontal = rel in ("left_of", "right_of")
    first_side = {"left_of": "left", "right_of": "right", "above": "top", "below": "bottom"}[rel]
    second_side = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[first_side]
    side_words = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
    form = int(rng.integers(6))
    if form <= 2:
        word = {
            "left_of": ("to the left of", "to the left of", "left of"),
            "right_of": ("to the right of", "to the right of", "right of"),
            "above": ("above", "above", "on top of"),
            "below": ("below", "below", "under", "beneath"),
        }[rel]
        text = f"{pa} {_pick(rng, word)} {pb}"
    elif form == 3:  # "a red circle on the left and a blue square on the right"
        text = f"{pa} {side_words[first_side]} and {pb} {side_words[second_side]}"
    elif form == 4:  # "next to" only together with the sides, so the relation stays unambiguous
        if horizontal:
            text = f"{pa} {side_words[first_side]} next to {pb} {side_words[second_side]}"
        else:  # sides first; no frame in front of it
            return f"{side_words[first_side]} {pa}, {side_words[second_side]} {pb}"
    else:  # "a red circle with a blue square to its right"
        its = {"left": "to its right", "right": "to its left", "top": "below it", "bottom": "above it"}[first_side]
        text = f"{pa} with {pb} {its}"
    return _pick(rng, _PAIR_FRAMES).format(text)


# --- datasets -----------------------------------------------------------------------------------
@dataclass
class ShapesData:
    """A batch of the domain: images uint8 [N, 64, 64, 3], one caption and one scene per image."""

    images: np.ndarray
    captions: list[str]
    scenes: list[Scene]

    def __len__(self) -> int:
        return len(self.captions)


def make_dataset(n: int, seed: int = 0, split: str = "train", p_pair: float = 0.4, jitter: int = 0) -> ShapesData:
    """``n`` scenes of a split, rendered, each with one random caption; deterministic by ``seed``.

    ``jitter``: pixels by which objects may leave the 8-pixel anchor grid (``jittered``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    scenes = [sample_scene(rng, split, p_pair, jitter) for _ in range(n)]
    captions = [caption(s, rng) for s in scenes]
    images = np.stack([render(s) for s in scenes]) if n else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return ShapesData(images, captions, scenes)


def recaption(scenes: Sequence[Scene], seed: int) -> list[str]:
    """Fresh random captions for the same scenes (a new epoch sees new wordings)."""
    rng = np.random.default_rng([seed, 2])
    return [caption(s, rng) for s in scenes]


@dataclass(frozen=True)
class EvalPrompt:
    """A canonical prompt and what the image must show."""

    text: str
    scene: Scene  # anchors are nominal; the checker reads only colours, shapes, position, relation


def eval_prompts(split: str = "heldout", kinds: Iterable[str] = ("single", "position", "pair")) -> list[EvalPrompt]:
    """Deterministic canonical prompts for evaluation.

    ``heldout``: every held-out combination once: "single" = held-out size×colour×shape triples,
    "position" = held-out colour×shape×position triples, "pair" = each held-out pair in the four
    relations, the first object being the one listed first in ``sorted`` order.
    ``train``: the same kinds over training combinations (a sample, for a sanity comparison).
    """
    out: list[EvalPrompt] = []
    kinds = set(kinds)
    if "single" in kinds:
        triples = sorted(HELDOUT_SIZED) if split == "heldout" else [
            (z, c, s) for z, c, s in itertools.product(("small", "large"), COLOURS, SHAPES) if (z, c, s) not in HELDOUT_SIZED
        ][::6]
        for z, c, s in triples:
            sc = Scene((Obj(c, s, 32, 32, EXTENT[z]),), size=z)
            out.append(EvalPrompt(canonical_caption(sc), sc))
        if split == "heldout":
            # Plain colour+shape prompts of the held-out position triples (words never seen together
            # with that position, but the pair itself is known) count for colour+shape as well.
            pass
    if "position" in kinds:
        triples = sorted(HELDOUT_SINGLE) if split == "heldout" else [
            (c, s, p) for c, s, p in itertools.product(COLOURS, SHAPES, POSITIONS) if (c, s, p) not in HELDOUT_SINGLE
        ][::9]
        for c, s, p in triples:
            cx, cy = NOMINAL_ANCHOR[p]
            sc = Scene((Obj(c, s, cx, cy, EXTENT["medium"]),), position=p)
            out.append(EvalPrompt(canonical_caption(sc), sc))
    if "pair" in kinds:
        if split == "heldout":
            pairs = sorted(tuple(sorted(p)) for p in HELDOUT_PAIRS)
        else:
            objs = list(itertools.product(COLOURS, SHAPES))
            pairs = [
                (a, b)
                for a, b in itertools.combinations(objs, 2)
                if a[0] != b[0] and frozenset({a, b}) not in HELDOUT_PAIRS
            ][::10]
        for (ca, sa), (cb, sb) in pairs:
            for rel in RELATIONS:
                a = Obj(ca, sa, 0, 0, PAIR_EXTENT)
                b = Obj(cb, sb, 0, 0, PAIR_EXTENT)
                sc = Scene((a, b), relation=rel)
                out.append(EvalPrompt(canonical_caption(sc), sc))
    return out


# --- pixel checker ------------------------------------------------------------------------------
_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], np.float32)


@dataclass(frozen=True)
class Component:
    """One connected region of one palette colour.

    area in pixels; (cx, cy) pixel centroid; bbox (x0, y0, x1, y1) inclusive-exclusive;
    fill = area / bbox area; shape: the checker's guess.
    """

    colour: str
    shape: str
    area: int
    cx: float
    cy: float
    bbox: tuple[int, int, int, int]
    fill: float

    @property
    def extent(self) -> int:
        x0, y0, x1, y1 = self.bbox
        return max(x1 - x0, y1 - y0)


def nearest_palette(rgb: np.ndarray) -> np.ndarray:
    """Palette index int [H, W] of float RGB pixels [H, W, 3].

    Distance to the segment from white to each palette colour, not to the colour itself: a
    soft edge mixes a colour with the background, and a half-red pixel (242, 140, 140) is nearer
    to orange than to red as a point, but lies on the white–red line.
    """
    white = np.float32(255.0)
    dirs = _PALETTE_ARRAY - white  # [K, 3]
    rel = rgb[..., None, :] - white  # [H, W, K, 3]
    t = np.clip((rel * dirs).sum(-1) / (dirs**2).sum(-1), 0.0, 1.0)
    d = ((rel - t[..., None] * dirs) ** 2).sum(-1)
    return d.argmin(-1)


def _as_rgb_array(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32) * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255)
    return arr.astype(np.float32)


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask: (labels int32 [H, W] with 0 = background, count).

    Min-label propagation, vectorised; converges in at most (longest path) sweeps, which is
    cheap at 64×64 and avoids a SciPy dependency in ``dalle_core``.
    """
    h, w = mask.shape
    big = h * w + 1
    lab = np.where(mask, np.arange(1, h * w + 1, dtype=np.int64).reshape(h, w), big)
    while True:
        prev = lab
        m = lab.copy()
        m[1:, :] = np.minimum(m[1:, :], lab[:-1, :])
        m[:-1, :] = np.minimum(m[:-1, :], lab[1:, :])
        m[:, 1:] = np.minimum(m[:, 1:], lab[:, :-1])
        m[:, :-1] = np.minimum(m[:, :-1], lab[:, 1:])
        lab = np.where(mask, m, big)
        if np.array_equal(lab, prev):
            break
    uniq = np.unique(lab[mask])
    out = np.zeros((h, w), np.int32)
    for i, u in enumerate(uniq, start=1):
        out[lab == u] = i
    return out, len(uniq)


# Features of the clean renders: (top-corner fill, bottom-corner fill, bounding-box fill).
SHAPE_PROTOTYPES = {"circle": (0.35, 0.35, 0.79), "square": (1.0, 1.0, 1.0), "triangle": (0.0, 0.77, 0.53)}


def shape_features(mask: np.ndarray) -> tuple[float, float, float]:
    """(top-corner fill, bottom-corner fill, fill ratio) of one component's mask.

    Corner fill: share of ink in the four corner squares of the bounding box (side a quarter of
    the box), averaged per pair of top and bottom corners. A square fills its corners, a circle
    leaves all four mostly empty, an apex-up triangle leaves the top ones empty and fills the
    bottom ones; unlike the fill ratio alone this survives blurred, rounded edges.
    """
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    q = max(1, int(round(0.25 * min(crop.shape))))
    top = (crop[:q, :q].mean() + crop[:q, -q:].mean()) / 2
    bottom = (crop[-q:, :q].mean() + crop[-q:, -q:].mean()) / 2
    return float(top), float(bottom), float(crop.mean())


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """(shape name, fill ratio) of one component: the nearest prototype in feature space."""
    f = np.array(shape_features(mask))
    name = min(SHAPE_PROTOTYPES, key=lambda k: float(((f - np.array(SHAPE_PROTOTYPES[k])) ** 2).sum()))
    return name, float(f[2])


def analyze(image, min_area: int = 12) -> list[Component]:
    """Objects in an image: components of one palette colour, largest first.

    A pixel is ink when it is far from white (min channel < 150, which every palette colour
    meets and faint halos don't); its colour is the palette entry whose blend with white passes
    closest (``nearest_palette``).
    Components smaller than ``min_area`` pixels are noise and dropped.
    """
    rgb = _as_rgb_array(image)
    ink = rgb.min(axis=-1) < 150
    nearest = nearest_palette(rgb)
    comps: list[Component] = []
    for ci, colour in enumerate(COLOURS):
        mask = ink & (nearest == ci)
        if mask.sum() < min_area:
            continue
        labels, count = _label(mask)
        for k in range(1, count + 1):
            m = labels == k
            area = int(m.sum())
            if area < min_area:
                continue
            ys, xs = np.nonzero(m)
            shape, fill = classify_shape(m)
            comps.append(
                Component(
                    colour=colour,
                    shape=shape,
                    area=area,
                    cx=float(xs.mean() + 0.5),
                    cy=float(ys.mean() + 0.5),
                    bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                    fill=fill,
                )
            )
    comps.sort(key=lambda c: -c.area)
    return comps


def position_of(cx: float, cy: float, size: int = IMAGE_SIZE) -> set[str]:
    """The position words a centroid satisfies (``left`` etc.; ``center`` only near the middle)."""
    lo, hi = size * 26 / 64, size * 38 / 64
    c_lo, c_hi = size * 22 / 64, size * 42 / 64
    out = set()
    if cx < lo:
        out.add("left")
    if cx > hi:
        out.add("right")
    if cy < lo:
        out.add("top")
    if cy > hi:
        out.add("bottom")
    if c_lo <= cx <= c_hi and c_lo <= cy <= c_hi:
        out.add("center")
    return out


def size_of(extent: int, size: int = IMAGE_SIZE) -> str:
    e = extent * IMAGE_SIZE / size
    return "small" if e < 16 else "large" if e > 25 else "medium"


def relation_holds(a: Component, b: Component, relation: str, size: int = IMAGE_SIZE) -> bool:
    """``a <relation> b`` from centroids: the named axis dominates and the gap is at least 1/8 side."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    gap = size / 8
    if relation == "left_of":
        return dx > gap and abs(dx) > abs(dy)
    if relation == "right_of":
        return -dx > gap and abs(dx) > abs(dy)
    if relation == "above":
        return dy > gap and abs(dy) > abs(dx)
    if relation == "below":
        return -dy > gap and abs(dy) > abs(dx)
    raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")


def _significant(comps: list[Component]) -> list[Component]:
    """Components that count as objects: at least 15% of the largest one's area."""
    if not comps:
        return []
    return [c for c in comps if c.area >= 0.15 * comps[0].area]


def objects_in(image) -> list[Component]:
    """The components of an image that count as objects, largest first (what ``check`` scores)."""
    return _significant(analyze(np.asarray(image)))


def check(image, scene: Scene, objects: list[Component] | None = None) -> dict[str, bool]:
    """Score one image against a scene (``objects``: ``objects_in(image)`` when already computed).

    Keys for single-object scenes: ``colour_shape`` (exactly one object, right colour and shape),
    ``position`` (colour_shape and the centroid in the named region; only when a position is
    asked), ``size`` (only when a size is asked). For two objects: ``objects`` (exactly two
    objects, with the right colours and shapes) and ``relation`` (objects and the relation holds).
    """
    side = np.asarray(image).shape[1]
    objs = objects_in(image) if objects is None else objects
    if scene.kind == "single":
        want = scene.objects[0]
        ok = len(objs) == 1 and objs[0].colour == want.colour and objs[0].shape == want.shape
        out = {"colour_shape": ok}
        if scene.position is not None:
            out["position"] = ok and scene.position in position_of(objs[0].cx, objs[0].cy, side)
        if scene.size is not None:
            out["size"] = ok and size_of(objs[0].extent, side) == scene.size
        return out
    a, b = scene.objects
    found = {c.colour: c for c in objs}
    ok = (
        len(objs) == 2
        and len(found) == 2
        and a.colour in found
        and b.colour in found
        and found[a.colour].shape == a.shape
        and found[b.colour].shape == b.shape
    )
    rel = ok and relation_holds(found[a.colour], found[b.colour], scene.relation, side)
    return {"objects": ok, "relation": rel}


def shows_heldout(image, objects: list[Component] | None = None) -> bool:
    """True when the image looks like a held-out combination: an object of a held-out size×colour×shape
    triple or two objects of a held-out pair (training renders never look like either; a held-out
    colour×shape×position triple does, as an unpositioned object, so it does not count)."""
    side = np.asarray(image).shape[1]
    objs = objects_in(image) if objects is None else objects
    if any((size_of(c.extent, side), c.colour, c.shape) in HELDOUT_SIZED for c in objs):
        return True
    looks = {(c.colour, c.shape) for c in objs}
    return any(frozenset({a, b}) in HELDOUT_PAIRS for a in looks for b in looks if a != b)


def read_scene(image, rng: np.random.Generator, objects: list[Component] | None = None) -> Scene | None:
    """What the checker sees in an image, as a training scene a caption can describe, or None.

    One object: its colour and shape, its size when small or large, and half the time one of
    the positions its centroid satisfies. Two objects of different colours: a relation that
    holds between them. Anything else (nothing, three objects, two of one colour, no clear
    relation), and a held-out combination, reads as None: training never names one.
    """
    side = np.asarray(image).shape[1]
    objs = objects_in(image) if objects is None else objects
    scale = IMAGE_SIZE / side  # scenes are in the 64-pixel frame
    things = tuple(Obj(c.colour, c.shape, c.cx * scale, c.cy * scale, round(c.extent * scale)) for c in objs)
    if len(objs) == 1:
        size = size_of(objs[0].extent, side)
        where = sorted(position_of(objs[0].cx, objs[0].cy, side))
        position = where[int(rng.integers(len(where)))] if where and rng.random() < 0.5 else None
        scene = Scene(things, position=position, size=None if size == "medium" else size)
    elif len(objs) == 2 and objs[0].colour != objs[1].colour:
        holds = [r for r in RELATIONS if relation_holds(objs[0], objs[1], r, side)]
        if not holds:
            return None
        scene = Scene(things, relation=holds[0])
    else:
        return None
    return None if is_heldout(scene) else scene


def save_dataset(path, data: ShapesData) -> None:
    """Save images (npz) and captions + scenes (JSON lines next to it)."""
    from pathlib import Path

    path = Path(path)
    np.savez_compressed(path, images=data.images)
    with open(path.with_suffix(".jsonl"), "w") as f:
        for c, s in zip(data.captions, data.scenes, strict=True):
            f.write(json.dumps({"caption": c, "scene": s.to_dict()}) + "\n")


def perturb(scene: Scene, rng: np.random.Generator) -> Scene:
    """A scene that differs from ``scene`` in exactly one thing the checker scores.

    One of: an object's colour, an object's shape, the position (single object), the size (a
    single object whose size is named), the relation (two objects: the converse, i.e. the objects
    swap places) or the binding (two objects of different shapes swap shapes, so both colours and
    both shapes are still present: "a blue circle left of a red triangle" against "a blue
    triangle left of a red circle", the mistake a model that learned combinations makes).
    Hard negatives for CLIP.
    """
    objs = list(scene.objects)
    kinds = ["colour", "shape", "relation" if scene.kind == "pair" else "position"]
    if scene.kind == "pair" and objs[0].shape != objs[1].shape:
        kinds.append("binding")
    if scene.size is not None:
        kinds.append("size")
    what = kinds[int(rng.integers(len(kinds)))]
    i = int(rng.integers(len(objs)))
    if what == "colour":
        taken = {o.colour for o in objs}
        colour = str(rng.choice([c for c in COLOURS if c not in taken]))
        objs[i] = dataclasses.replace(objs[i], colour=colour)
        return dataclasses.replace(scene, objects=tuple(objs))
    if what == "shape":
        shape = str(rng.choice([s for s in SHAPES if s != objs[i].shape]))
        objs[i] = dataclasses.replace(objs[i], shape=shape)
        return dataclasses.replace(scene, objects=tuple(objs))
    if what == "binding":
        a, b = objs
        return dataclasses.replace(scene, objects=(dataclasses.replace(a, shape=b.shape), dataclasses.replace(b, shape=a.shape)))
    if what == "relation":
        return dataclasses.replace(scene, relation=CONVERSE[scene.relation])
    if what == "size":
        return dataclasses.replace(scene, size="large" if scene.size == "small" else "small")
    # a position the object is not in (an unpositioned object may well sit "at the bottom")
    where = position_of(objs[0].cx, objs[0].cy) | {scene.position}
    position = str(rng.choice([p for p in POSITIONS if p not in where]))
    return dataclasses.replace(scene, position=position)


def counterpart(scene: Scene, rng: np.random.Generator, jitter: int = 0, tries: int = 50) -> Scene:
    """A scene that *looks* different from ``scene`` in exactly one thing the checker scores:
    ``perturb`` with the objects moved to match (the converse relation swaps the two objects'
    places, a new position moves the object there, a new size changes its extent).

    CLIP's hard-negative images: the render of the counterpart is wrong for ``scene``'s caption
    and the counterpart's caption is wrong for ``scene``'s render, so both directions of the
    contrastive loss learn the distinction ranking needs (one prompt, several candidates).
    An object whose caption names no position is not moved (its caption would still fit the moved
    copy), a moved object must leave the named position's region, and a training scene never gets
    a held-out counterpart. ``jitter``: as in ``jittered``, for a moved object.
    """
    for _ in range(tries):
        neg = perturb(scene, rng)
        if (scene.position is None and neg.position is not None) or (is_heldout(neg) and not is_heldout(scene)):
            continue
        if neg.relation != scene.relation:
            a, b = neg.objects
            return dataclasses.replace(neg, objects=(dataclasses.replace(a, cx=b.cx, cy=b.cy), dataclasses.replace(b, cx=a.cx, cy=a.cy)))
        if neg.position != scene.position:
            cx, cy = _anchor_single(rng, neg.position)
            moved = dataclasses.replace(neg, objects=(dataclasses.replace(neg.objects[0], cx=float(cx), cy=float(cy)),))
            moved = jittered(moved, rng, jitter) if jitter else moved
            if all(check(render(moved), scene).values()):
                continue  # the position regions overlap: the moved object still fits scene's words
            return moved
        if neg.size != scene.size:
            o, extent = neg.objects[0], EXTENT[neg.size]
            lo, hi = extent / 2, IMAGE_SIZE - extent / 2  # a grown object stays inside the image
            grown = dataclasses.replace(o, cx=min(max(o.cx, lo), hi), cy=min(max(o.cy, lo), hi), extent=extent)
            return dataclasses.replace(neg, objects=(grown,))
        return neg
    raise ValueError(f"no counterpart of {scene} in {tries} draws")
