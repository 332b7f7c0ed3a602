"""The output folder: ``OUTPUT_DIR/<slug>/`` with candidates, ``cover.png`` and ``manifest.json``.

Everything is written into a hidden temporary folder next to the target and renamed into place
last, so a folder named after the post exists only when it is complete.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import unicodedata
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MANIFEST = "manifest.json"
DISPLAY_SIZE = 256  # covers smaller than this (the tiny model's 64²) are resized for display


class OutputError(OSError):
    """The output folder cannot be written."""


def slugify(text: str, max_len: int = 60) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "post"


def check_writable(out_dir: Path) -> None:
    """Fail before any expensive work when the output folder cannot be created or written."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputError(
            f"cannot write to output folder {out_dir} ({reason}); pass --out DIR with a writable folder"
        ) from None


def _plain(value: Any) -> Any:
    """Dataclasses / pydantic models / paths → JSON-ready values."""
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_manifest(*, source, article, chunks, result, topics, prompt, model_info, sampling, timings) -> dict:
    return {
        "source": source,
        "title": article.title,
        # What produced the article text: trafilatura, the tag rules, the page's text (HTML), or
        # the Markdown / plain-text reader.
        "article": {"extractor": article.extractor, "characters": len(article.text)},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "chunk_count": len(chunks),
        "topics": {
            "extractor": result.extractor,
            "usage": _plain(result.usage),
            "errors": list(result.errors),
            "per_chunk_count": len(result.topics),
            "merged": [_plain(t) for t in topics],
        },
        "prompt": prompt.text,
        "negative_prompt": prompt.negative,
        "prompt_details": _plain(prompt),
        "model": model_info,
        "seed": sampling["seed"],
        "sampling": _plain(sampling),
        "timings": dict(timings),
    }


def _unique_target(out_dir: Path, slug: str) -> Path:
    target = out_dir / slug
    n = 2
    while target.exists():
        target = out_dir / f"{slug}-{n}"
        n += 1
    return target


def _display(img: Image.Image) -> tuple[Image.Image, str]:
    if img.width >= DISPLAY_SIZE:
        return img, "none"
    return img.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.LANCZOS), f"lanczos-{DISPLAY_SIZE}"


def write_result(out_dir: Path, manifest: dict, tokens: np.ndarray, images: np.ndarray,
                 scores: list[float] | None, cover: tuple[np.ndarray, str] | None = None,
                 platforms: dict[str, tuple[np.ndarray, dict]] | None = None) -> Path:
    """Write candidates, cover, platform images and manifest; return the finished folder.

    tokens: int32 [n, g, g]; images: uint8 [n, H, W, 3]; scores: one CLIP score per image or None.
    cover: the upscaled best image and the method that made it (None: resize for display).
    platforms: {preset name: (uint8 image, info)} written as ``<name>.png``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_writable(out_dir)
    slug = slugify(manifest.get("title") or Path(str(manifest["source"])).stem)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{slug}.partial-"))
    try:
        order = list(range(len(images)))
        if scores is not None:
            order.sort(key=lambda i: -scores[i])
        candidates = []
        for rank, i in enumerate(order, start=1):
            name = f"candidate-{i + 1:02d}.png"
            Image.fromarray(images[i]).save(tmp / name)
            candidates.append({
                "file": name,
                "rank": rank,
                "score": None if scores is None else round(float(scores[i]), 4),
                "sample_index": i,
                "tokens": np.asarray(tokens[i]).tolist(),
            })
        best = Image.fromarray(images[order[0]])
        cover_img, method = (Image.fromarray(cover[0]), cover[1]) if cover else _display(best)
        cover_img.save(tmp / "cover.png")
        manifest = dict(manifest)
        manifest["platforms"] = {}
        for name, (pixels, info) in (platforms or {}).items():
            Image.fromarray(pixels).save(tmp / f"{name}.png")
            manifest["platforms"][name] = {"file": f"{name}.png", "size": [pixels.shape[1], pixels.shape[0]],
                                           **{k: v for k, v in info.items() if isinstance(v, str | int | float)}}
        manifest["ranking"] = "clip" if scores is not None else "none (model has no CLIP)"
        manifest["candidates"] = candidates
        manifest["cover"] = {"file": "cover.png", "from": candidates[0]["file"],
                             "size": list(cover_img.size), "resize": method}
        manifest["timings"] = dict(manifest["timings"], finish=round(time.perf_counter() - start, 3))
        (tmp / MANIFEST).write_text(json.dumps(_plain(manifest), indent=2), encoding="utf-8")
        tmp.chmod(0o755)
        target = _unique_target(out_dir, slug)
        tmp.rename(target)
        return target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
