"""The pictogram domain the embedded model is trained on: emoji art composed into captioned scenes.

Art: Google's Noto Color Emoji images (Apache-2.0) as 64×64 PNGs from the npm package
``emoji-datasource-google``. Names, keywords and groups: the Unicode CLDR annotations from the npm
package ``emojibase-data`` (MIT). ``fetch_sources`` downloads both with ``npm pack`` (the ordinary
package client) and records package, version, license and sha256; nothing is committed to git but
the concept list (names and keywords, ``concepts.json``), which ships with the model.

A scene is one concept, or two side by side, at a small, medium or large size, centred or on the
left or right (single concepts), on a solid background named by a colour word, or on white when
the caption names none. Captions vary in template and word order and name a concept by its CLDR
short name ("hot beverage") or by one of its distinctive keywords ("coffee").

Held out from training, for evaluation: some caption templates (``HELDOUT_TEMPLATES``) and the
concept pairs that ``is_heldout_pair`` marks (about one pair in eight).

The checker (``identify``) reads an image back: its background colour (nearest named colour of the
border) and, for each drawn concept, all concepts ranked by how well their reference art,
composited on that background and fitted to the drawing's bounding box, matches the drawing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SIZE = 64

# --- sources ------------------------------------------------------------------------------------
PACKAGES = {
    "emoji-datasource-google": {"version": "16.0.0", "license": "MIT (package); images Apache-2.0 (Noto Color Emoji)"},
    "emojibase-data": {"version": "17.0.0", "license": "MIT (data from Unicode CLDR, Unicode License v3)"},
}
# emojibase groups (messages.json order) whose emoji are concepts; smileys & emotion gives its faces only
GROUPS = {0: "smileys & emotion", 3: "animals & nature", 4: "food & drink", 5: "travel & places", 6: "activities",
          7: "objects", 8: "symbols"}
SKIP_SUBGROUPS = {"keycap"}
MAX_KEYWORD_SHARE = 2  # a keyword names a concept in captions only if at most this many concepts have it


def fetch_sources(dest: str | Path) -> Path:
    """Download the two npm packages into ``dest`` (``npm pack``), extract the concepts and their art.

    Writes ``dest/sources.json`` (package, version, license, sha256 of each tarball),
    ``dest/concepts.json`` (``build_concepts``) and ``dest/art.npz`` (uint8 RGBA [N, 64, 64, 4], in
    the order of the concepts). Does nothing when all three are there.
    """
    dest = Path(dest)
    if all((dest / n).exists() for n in ("sources.json", "concepts.json", "art.npz")):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    sources = {}
    for name, meta in PACKAGES.items():
        tarball = dest / f"{name}-{meta['version']}.tgz"
        if not tarball.exists():
            log.info("pictograms: npm pack %s@%s", name, meta["version"])
            with tempfile.TemporaryDirectory(dir=dest) as tmp:
                subprocess.run(["npm", "pack", "--silent", f"{name}@{meta['version']}"], cwd=tmp, check=True,
                               stdout=subprocess.DEVNULL)
                Path(tmp, tarball.name).replace(tarball)
        sources[name] = {**meta, "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(), "file": tarball.name}
    base = dest / f"emojibase-data-{PACKAGES['emojibase-data']['version']}.tgz"
    art = dest / f"emoji-datasource-google-{PACKAGES['emoji-datasource-google']['version']}.tgz"
    with tarfile.open(base) as tf:
        data = json.load(tf.extractfile("package/en/data.json"))
        messages = json.load(tf.extractfile("package/en/messages.json"))
    concepts = build_concepts(data, messages)
    images = _read_art(art, [c["hexcode"] for c in concepts])
    found = [c for c, im in zip(concepts, images, strict=True) if im is not None]
    log.info("pictograms: %d concepts, %d with Noto art", len(concepts), len(found))
    np.savez_compressed(dest / "art.npz", art=np.stack([im for im in images if im is not None]))
    (dest / "concepts.json").write_text(json.dumps(found, ensure_ascii=False, indent=0) + "\n")
    (dest / "sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    return dest


def build_concepts(data: list[dict], messages: dict) -> list[dict]:
    """The concept list from emojibase's ``data.json`` and ``messages.json``.

    Every emoji of ``GROUPS`` (faces only from smileys & emotion), without keycaps, skin-tone or
    gender variants (those are nested under their base emoji in emojibase and never listed).
    Each concept: ``name`` (CLDR short name), ``keywords`` (CLDR keywords, the name's own words
    left out), ``group``, ``subgroup``, ``hexcode``, ``emoji``.
    """
    subgroups = {s["order"]: s["key"] for s in messages["subgroups"]}
    out = []
    for e in data:
        group, sub = e.get("group"), subgroups.get(e.get("subgroup"), "")
        if group not in GROUPS or sub in SKIP_SUBGROUPS or (group == 0 and not sub.startswith("face")):
            continue
        name = e["label"].lower()
        keywords = [t.lower() for t in e.get("tags", []) if t.lower() != name]
        out.append({"name": name, "keywords": keywords, "group": GROUPS[group], "subgroup": sub,
                    "hexcode": e["hexcode"], "emoji": e["emoji"]})
    return out


def _read_art(tarball: Path, hexcodes: Sequence[str]) -> list[np.ndarray | None]:
    """uint8 RGBA [64, 64, 4] per hexcode from the 64-px Google set (None: no image)."""
    from PIL import Image

    def key(code: str) -> str:
        return "-".join(p for p in code.lower().split("-") if p != "fe0f")

    with tarfile.open(tarball) as tf:
        members = {key(Path(m.name).stem): m for m in tf.getmembers() if m.name.startswith("package/img/google/64/")}
        out = []
        for code in hexcodes:
            m = members.get(key(code))
            if m is None:
                out.append(None)
                continue
            im = Image.open(tf.extractfile(m)).convert("RGBA")
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
            out.append(np.asarray(im, np.uint8))
    return out


@dataclass(frozen=True)
class Concepts:
    """The concepts a model knows: names, keywords, art (uint8 RGBA [N, 64, 64, 4], optional)."""

    names: tuple[str, ...]
    keywords: tuple[tuple[str, ...], ...]
    groups: tuple[str, ...]
    art: np.ndarray | None = None
    # scaled art per (concept, side) and checker references per background, filled on use
    cache: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def load(cls, folder: str | Path, art: bool = True) -> Concepts:
        folder = Path(folder)
        rows = json.loads((folder / "concepts.json").read_text())
        pixels = np.load(folder / "art.npz")["art"] if art else None
        if pixels is not None and len(pixels) != len(rows):
            raise ValueError(f"{folder}: {len(rows)} concepts but {len(pixels)} images in art.npz")
        return cls(tuple(r["name"] for r in rows), tuple(tuple(r["keywords"]) for r in rows),
                   tuple(r["group"] for r in rows), pixels)

    def distinctive_keywords(self) -> tuple[tuple[str, ...], ...]:
        """Per concept, the keywords at most ``MAX_KEYWORD_SHARE`` concepts have and that are no
        other concept's name: words that point at this concept in a caption."""
        return _distinctive(self.names, self.keywords)


@lru_cache(maxsize=4)
def _distinctive(names: tuple[str, ...], keywords: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
    share = Counter(k for ks in keywords for k in set(ks))
    taken = set(names)
    return tuple(tuple(k for k in ks if share[k] <= MAX_KEYWORD_SHARE and k not in taken) for ks in keywords)


# --- scenes -------------------------------------------------------------------------------------
COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255), "black": (16, 16, 16), "grey": (128, 128, 128), "red": (214, 40, 40),
    "orange": (245, 133, 24), "yellow": (250, 214, 48), "green": (52, 168, 83), "teal": (0, 140, 140),
    "blue": (40, 110, 230), "navy": (20, 33, 92), "purple": (124, 58, 183), "pink": (244, 143, 177),
}
SIZES = ("small", "medium", "large")
POSITIONS = ("left", "centre", "right")
SINGLE_PX = {"small": 24, "medium": 36, "large": 52}  # side of a single concept's 64-px art frame
PAIR_PX = {"small": 20, "medium": 26, "large": 30}  # each of two concepts side by side
SINGLE_X = {"left": 0.3, "centre": 0.5, "right": 0.7}  # centre x as a share of the width (clamped in frame)
PAIR_X = (0.25, 0.75)


@dataclass(frozen=True)
class Scene:
    """What an image shows: concept indices (left to right), size, position (single concepts),
    background colour word, and which of them the caption names (None: not mentioned).

    ``dx``/``dy``: jitter in pixels of the drawing's centre. ``relation``: how a pair's caption joins
    them ("and" or "left of"), always drawn left to right.
    """

    concepts: tuple[int, ...]
    background: str = "white"
    size: str = "medium"
    position: str = "centre"
    dx: int = 0
    dy: int = 0
    relation: str = "and"

    @property
    def kind(self) -> str:
        return "single" if len(self.concepts) == 1 else "pair"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(**{**d, "concepts": tuple(d["concepts"])})


def is_heldout_pair(a: int, b: int) -> bool:
    """True for the concept pairs (in either order) that training never shows: about one in eight."""
    lo, hi = min(a, b), max(a, b)
    return zlib.crc32(f"{lo}-{hi}".encode()) % 8 == 0


def sample_scene(rng: np.random.Generator, n_concepts: int, split: str = "train", p_pair: float = 0.3,
                 jitter: int = 3) -> Scene:
    """A random scene; pairs of the ``heldout`` split are held-out pairs, of ``train`` never."""
    background = "white" if rng.random() < 0.25 else str(rng.choice(list(COLOURS)))
    size = str(rng.choice(SIZES))
    dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2)) if jitter else (0, 0)
    if rng.random() >= p_pair:
        return Scene((int(rng.integers(n_concepts)),), background, size, str(rng.choice(POSITIONS)), dx, dy)
    while True:
        a, b = (int(v) for v in rng.choice(n_concepts, size=2, replace=False))
        if is_heldout_pair(a, b) == (split == "heldout"):
            return Scene((a, b), background, size, "centre", dx, dy, str(rng.choice(["and", "left of"])))


def _place(scene: Scene) -> list[tuple[int, int, int]]:
    """(left, top, side) in pixels of each concept's art frame."""
    if scene.kind == "single":
        side = SINGLE_PX[scene.size]
        cx = SINGLE_X[scene.position] * IMAGE_SIZE
        boxes = [(cx, side)]
    else:
        side = PAIR_PX[scene.size]
        boxes = [(x * IMAGE_SIZE, side) for x in PAIR_X]
    out = []
    for cx, side in boxes:
        left = int(round(cx - side / 2)) + scene.dx
        top = int(round((IMAGE_SIZE - side) / 2)) + scene.dy
        out.append((min(max(left, 0), IMAGE_SIZE - side), min(max(top, 0), IMAGE_SIZE - side), side))
    return out


def _scaled(concepts: Concepts, i: int, side: int) -> np.ndarray:
    """float32 premultiplied RGBA [side, side, 4] of one concept's art (cached per size)."""
    from PIL import Image

    key = ("scaled", i, side)
    if key not in concepts.cache:
        im = Image.fromarray(concepts.art[i], "RGBA").resize((side, side), Image.LANCZOS, reducing_gap=None)
        x = np.asarray(im, np.float32) / 255.0
        x[..., :3] *= x[..., 3:]
        concepts.cache[key] = x
    return concepts.cache[key]


def composite(concepts: Concepts, background: tuple[int, int, int], boxes: Sequence[tuple[int, int, int, int]],
              size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3]: each (concept, left, top, side) of ``boxes`` drawn over a solid colour."""
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = np.asarray(background, np.float32) / 255.0
    for concept, left, top, side in boxes:
        x = _scaled(concepts, int(concept), int(side))
        region = canvas[top : top + side, left : left + side]
        region[:] = x[..., :3] + region * (1.0 - x[..., 3:])
    return np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)


def render(scene: Scene, concepts: Concepts) -> np.ndarray:
    """uint8 [64, 64, 3]: the scene drawn with the concepts' art."""
    boxes = [(c, left, top, side) for c, (left, top, side) in zip(scene.concepts, _place(scene), strict=True)]
    return composite(concepts, COLOURS[scene.background], boxes)


# --- captions -----------------------------------------------------------------------------------
# A caption joins a noun phrase ("a small rocket", "a rocket and a laptop"), an optional position
# ("on the left") and an optional background ("on blue", "blue background") in one of several orders.
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("",), "large": ("large", "big")}
POSITION_WORDS = {"left": "on the left", "right": "on the right", "centre": "in the middle"}
# {np}: noun phrase, {pos}: " on the left" or "", {on_bg}: " on blue" / " on a blue background" / "",
# {bg}: the colour word
TEMPLATES = ("{np}{pos}{on_bg}", "{np}{on_bg}{pos}", "{bg} background, {np}{pos}", "{bg} background with {np}{pos}",
             "an icon of {np}{pos}{on_bg}", "{np}{pos}, {bg} background", "{NP}{pos}{on_bg}")
PAIR_JOINS = {"and": ("{x} and {y}",), "left of": ("{x} to the left of {y}", "{y} to the right of {x}")}
# phrasings training never shows (evaluation only)
HELDOUT_TEMPLATES = ("a picture of {np}{pos} against {bg}", "{NP} symbol{pos}, {bg} backdrop")
HELDOUT_JOINS = ("{x} beside {y}", "{x} next to {y}")


def article(phrase: str) -> str:
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"


def concept_word(concepts: Concepts, i: int, rng: np.random.Generator, p_name: float = 0.6) -> str:
    """The concept's name, or one of its distinctive keywords (when it has any)."""
    keys = concepts.distinctive_keywords()[i]
    if not keys or rng.random() < p_name:
        return concepts.names[i]
    return str(keys[rng.integers(len(keys))])


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[rng.integers(len(options))])


def caption(scene: Scene, concepts: Concepts, rng: np.random.Generator, heldout: bool = False) -> str:
    """A random wording of the scene (``heldout``: in a phrasing training never shows).

    A medium size and a centred position go unnamed (sometimes "in the middle"), any other is named;
    a white background may go unnamed, any other colour is named, so a caption is never wrong about
    what it leaves out.
    """
    size = _pick(rng, SIZE_WORDS[scene.size])
    words = [f"{size} {concept_word(concepts, i, rng)}".strip() for i in scene.concepts]
    if scene.kind == "single":
        bare = words[0]
        noun = article(bare)
        pos = "" if scene.position == "centre" and rng.random() < 0.85 else " " + POSITION_WORDS[scene.position]
    else:
        joins = HELDOUT_JOINS if heldout else PAIR_JOINS[scene.relation]
        noun = _pick(rng, joins).format(x=article(words[0]), y=article(words[1]))
        bare = noun.split(" ", 1)[1]
        pos = ""
    bg = scene.background
    template = _pick(rng, HELDOUT_TEMPLATES if heldout else TEMPLATES)
    named_bg = heldout or bg != "white" or rng.random() < 0.5
    if not named_bg:
        template = template.replace("{bg} background, ", "").replace("{bg} background with ", "").replace(
            ", {bg} background", "")
    on_bg = _pick(rng, (f" on {bg}", f" on a {bg} background")) if named_bg else ""
    if "{bg}" in template:
        on_bg = ""
    return " ".join(template.format(np=noun, NP=bare, pos=pos, on_bg=on_bg, bg=bg).split())


# --- datasets -----------------------------------------------------------------------------------
@dataclass
class Data:
    """A batch of the domain: images uint8 [N, 64, 64, 3], one caption and one scene per image."""

    images: np.ndarray
    captions: list[str]
    scenes: list[Scene]

    def __len__(self) -> int:
        return len(self.captions)


def make_dataset(concepts: Concepts, n: int, seed: int = 0, split: str = "train", p_pair: float = 0.3,
                 jitter: int = 3) -> Data:
    """``n`` scenes of a split, rendered, each with one caption (held-out phrasings for the
    ``heldout`` split); deterministic by ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    scenes = [sample_scene(rng, len(concepts), split, p_pair, jitter) for _ in range(n)]
    captions = [caption(s, concepts, rng, heldout=split == "heldout") for s in scenes]
    images = np.stack([render(s, concepts) for s in scenes]) if n else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return Data(images, captions, scenes)


def recaption(scenes: Sequence[Scene], concepts: Concepts, seed: int) -> list[str]:
    """Fresh random training wordings of the same scenes."""
    rng = np.random.default_rng([seed, 2])
    return [caption(s, concepts, rng) for s in scenes]


def save_dataset(path, data: Data) -> None:
    """Images (npz) and captions + scenes (JSON lines next to it)."""
    path = Path(path)
    np.savez_compressed(path, images=data.images)
    with open(path.with_suffix(".jsonl"), "w") as f:
        for c, s in zip(data.captions, data.scenes, strict=True):
            f.write(json.dumps({"caption": c, "scene": s.to_dict()}) + "\n")


def load_dataset(path) -> Data:
    path = Path(path)
    images = np.load(path)["images"]
    rows = [json.loads(line) for line in path.with_suffix(".jsonl").read_text().splitlines()]
    return Data(images, [r["caption"] for r in rows], [Scene.from_dict(r["scene"]) for r in rows])


def perturb(scene: Scene, n_concepts: int, rng: np.random.Generator) -> Scene:
    """The scene with one thing a caption names changed: a concept, the background, the size or
    the position (a pair's two concepts swapped, for "left of")."""
    choice = rng.integers(4)
    if choice == 0 or (choice == 3 and scene.kind == "pair" and scene.relation == "and"):
        k = int(rng.integers(len(scene.concepts)))
        new = int(rng.integers(n_concepts - 1))
        new += new >= scene.concepts[k]
        return dataclasses.replace(scene, concepts=tuple(new if j == k else c for j, c in enumerate(scene.concepts)))
    if choice == 1:
        return dataclasses.replace(scene, background=_pick(rng, [c for c in COLOURS if c != scene.background]))
    if choice == 2:
        return dataclasses.replace(scene, size=_pick(rng, [s for s in SIZES if s != scene.size]))
    if scene.kind == "pair":
        return dataclasses.replace(scene, concepts=scene.concepts[::-1])
    return dataclasses.replace(scene, position=_pick(rng, [p for p in POSITIONS if p != scene.position]))


def counterpart(scene: Scene, n_concepts: int, rng: np.random.Generator, split: str = "train") -> Scene:
    """A changed scene (``perturb``) of the same split, to render as a negative image."""
    for _ in range(50):
        other = perturb(scene, n_concepts, rng)
        if other.kind == "single" or is_heldout_pair(*other.concepts) == (split == "heldout"):
            return other
    return other


# --- the checker --------------------------------------------------------------------------------
CHECK_SIDE = 24  # drawings and reference art are compared at this many pixels a side
INK = 48  # a pixel is part of a drawing when a channel differs from the background by more than this


def background_of(image: np.ndarray) -> str:
    """The named colour nearest the median of the image's 2-pixel border."""
    x = np.asarray(image, np.float32)
    ring = np.concatenate([x[:2].reshape(-1, 3), x[-2:].reshape(-1, 3), x[:, :2].reshape(-1, 3), x[:, -2:].reshape(-1, 3)])
    med = np.median(ring, axis=0)
    names = list(COLOURS)
    return names[int(np.argmin([np.sum((med - np.asarray(COLOURS[n])) ** 2) for n in names]))]


def _ink(image: np.ndarray, rgb: Sequence[int]) -> np.ndarray:
    return np.max(np.abs(np.asarray(image, np.int16) - np.asarray(rgb, np.int16)), axis=-1) > INK


def _bbox(mask: np.ndarray, x0: int = 0) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom), exclusive, of the rows and columns with ink (None: no ink)."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    if cols.size == 0:
        return None
    return x0 + int(cols[0]), int(rows[0]), x0 + int(cols[-1]) + 1, int(rows[-1]) + 1


def drawings(image: np.ndarray, count: int, background: str | None = None) -> list[tuple[int, int, int, int] | None]:
    """Bounding boxes of ``count`` drawings (1, or 2 side by side, split at the emptiest column
    near the middle); None where a side has no ink."""
    rgb = COLOURS[background or background_of(image)]
    mask = _ink(image, rgb)
    if count == 1:
        return [_bbox(mask)]
    lo, hi = IMAGE_SIZE // 4, 3 * IMAGE_SIZE // 4
    cols = mask.sum(0)
    split = lo + int(np.argmin(cols[lo:hi] + 0.01 * np.abs(np.arange(lo, hi) - IMAGE_SIZE // 2)))
    return [_bbox(mask[:, :split]), _bbox(mask[:, split:], split)]


def _square_crop(image: np.ndarray, box: tuple[int, int, int, int], rgb: Sequence[int]) -> np.ndarray:
    """float32 [CHECK_SIDE, CHECK_SIDE, 3]: the box, padded to a square with the background, resized."""
    from PIL import Image

    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = rgb
    w, h = right - left, bottom - top
    ox, oy = (side - w) // 2, (side - h) // 2
    canvas[oy : oy + h, ox : ox + w] = np.asarray(image)[top:bottom, left:right]
    return np.asarray(Image.fromarray(canvas).resize((CHECK_SIDE, CHECK_SIDE), Image.BILINEAR), np.float32)


def references(concepts: Concepts, background: str) -> np.ndarray:
    """float32 [N, CHECK_SIDE, CHECK_SIDE, 3]: every concept's art on the background, cropped like a
    drawing (cached per concept list and colour)."""
    key = ("references", background)
    if key not in concepts.cache:
        rgb = COLOURS[background]
        rows = []
        for i in range(len(concepts)):
            full = composite(concepts, rgb, [(i, 0, 0, IMAGE_SIZE)])
            box = _bbox(_ink(full, rgb)) or (0, 0, IMAGE_SIZE, IMAGE_SIZE)
            rows.append(_square_crop(full, box, rgb))
        concepts.cache[key] = np.stack(rows)
    return concepts.cache[key]


def rank_drawing(image: np.ndarray, box: tuple[int, int, int, int] | None, concepts: Concepts,
                 background: str) -> np.ndarray:
    """All concept indices, best match first (mean absolute pixel difference to the references);
    a missing drawing ranks them in a random-free fixed order that matches nothing (all last)."""
    if box is None:
        return np.full(len(concepts), -1, np.int64)
    crop = _square_crop(image, box, COLOURS[background])
    dist = np.abs(references(concepts, background) - crop[None]).mean(axis=(1, 2, 3))
    return np.argsort(dist, kind="stable")


def concept_ranks(image: np.ndarray, scene: Scene, concepts: Concepts) -> list[int]:
    """Per concept of the scene (left to right), its rank among all concepts in the drawing at that
    place (0 = best match; ``len(concepts)`` when nothing is drawn there)."""
    bg = background_of(image)
    out = []
    for want, box in zip(scene.concepts, drawings(image, len(scene.concepts), bg), strict=True):
        order = rank_drawing(image, box, concepts, bg)
        hit = np.flatnonzero(order == want)
        out.append(int(hit[0]) if hit.size else len(concepts))
    return out


def check(image: np.ndarray, scene: Scene, concepts: Concepts, top: int = 5) -> dict[str, bool]:
    """Whether the image shows the scene: ``concepts`` (each within the checker's ``top`` matches
    at its place), ``top1`` (each the best match) and ``background`` (the named colour)."""
    ranks = concept_ranks(image, scene, concepts)
    return {"concepts": all(r < top for r in ranks), "top1": all(r == 0 for r in ranks),
            "background": background_of(image) == scene.background}


def read_scene(image: np.ndarray, count: int, concepts: Concepts) -> Scene:
    """What the checker sees: the best-matching concept at each of ``count`` places, the background."""
    bg = background_of(image)
    found = [int(rank_drawing(image, box, concepts, bg)[0]) for box in drawings(image, count, bg)]
    return Scene(tuple(max(c, 0) for c in found), bg)
