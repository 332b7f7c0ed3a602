"""Fine-tune a DalleBart on your own caption–image pairs: images → VQGAN tokens → DalleBart.

Data is either

* a folder of images, each with its caption in a ``.txt`` file of the same stem
  (``cat.png`` + ``cat.txt``), or with a ``metadata.jsonl`` / ``captions.jsonl`` in the folder
  (``{"file_name": "cat.png", "text": "..."}`` per line, as Hugging Face ``imagefolder``), or
* a JSONL file of ``{"image": "path/relative/to/the/file.png", "caption": "..."}`` lines
  (``file_name``/``text`` are accepted as well).

Every bad item (unreadable image, missing or empty caption, broken JSON line) is reported by
name and skipped; an empty folder, or one where nothing usable is left, is refused. ``base`` is a
model folder with ``dalle/`` and ``vqgan/`` (``clip/`` optional) — the embedded model, or
published checkpoints downloaded into that layout. The result is a complete model folder:
``out/dalle`` (fine-tuned), ``out/vqgan`` and ``out/clip`` (copied), loadable with
``Generator.from_folder``.

    python -m dalle_core.train.finetune --data my_pairs/ --base dalle_core/embedded --out runs/ft \\
        --freeze-layers 1 --steps 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
METADATA_FILES = ("metadata.jsonl", "captions.jsonl")


class FinetuneDataError(ValueError):
    """The data cannot be used at all (missing, empty, nothing valid left)."""


@dataclass
class PairSet:
    """Loaded pairs: images uint8 [N, res, res, 3], captions [N], and what was skipped and why."""

    images: np.ndarray
    captions: list[str]
    files: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _load_image(path: Path, res: int) -> np.ndarray:
    """uint8 [res, res, 3]: RGB, centre square crop, bicubic resize (as the generator does)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        if side != res:
            im = im.resize((res, res), Image.BICUBIC)
        return np.asarray(im, np.uint8)


def _entries_from_jsonl(path: Path, skipped: list[tuple[str, str]]) -> list[tuple[Path, str | None]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            skipped.append((where, f"not valid JSON ({err.msg})"))
            continue
        if not isinstance(row, dict):
            skipped.append((where, "not a JSON object"))
            continue
        image = row.get("image") or row.get("file_name") or row.get("path")
        if not image:
            skipped.append((where, "no 'image' (or 'file_name') field"))
            continue
        caption = row.get("caption", row.get("text"))
        out.append((path.parent / str(image), caption))
    return out


def _display_name(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def collect_pairs(data: str | os.PathLike, resolution: int) -> PairSet:
    """Read a folder or JSONL into a :class:`PairSet`; every skipped item is logged and listed."""
    data = Path(data).expanduser()
    skipped: list[tuple[str, str]] = []
    if not data.exists():
        raise FinetuneDataError(f"{data} does not exist; pass a folder of images + captions or a JSONL file")
    if data.is_file():
        if data.suffix.lower() not in (".jsonl", ".json"):
            raise FinetuneDataError(f"{data} is a file but not JSONL; pass a folder or a .jsonl of image/caption pairs")
        entries = _entries_from_jsonl(data, skipped)
    else:
        meta = next((data / m for m in METADATA_FILES if (data / m).exists()), None)
        if meta is not None:
            entries = _entries_from_jsonl(meta, skipped)
        else:
            entries = []
            for path in sorted(data.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                txt = path.with_suffix(".txt")
                entries.append((path, txt.read_text(encoding="utf-8", errors="replace") if txt.exists() else None))
        if not entries and not skipped:
            raise FinetuneDataError(
                f"{data} has no images ({', '.join(IMAGE_SUFFIXES)}) with captions; put 'name.png' next to "
                f"'name.txt', or add a metadata.jsonl"
            )
    images, captions, files = [], [], []
    for path, caption in entries:
        name = _display_name(path, data if data.is_dir() else data.parent)
        if caption is None or not str(caption).strip():
            skipped.append((name, "missing or empty caption"))
            continue
        if not path.exists():
            skipped.append((name, "image file not found"))
            continue
        try:
            images.append(_load_image(path, resolution))
        except Exception as err:  # PIL raises many types for broken files
            skipped.append((name, f"unreadable image ({type(err).__name__}: {err})"))
            continue
        captions.append(" ".join(str(caption).split()))
        files.append(name)
    for name, why in skipped:
        log.warning("finetune data: skipping %s: %s", name, why)
    if not images:
        raise FinetuneDataError(f"{data}: no usable image–caption pairs ({len(skipped)} skipped: " +
                                "; ".join(f"{n}: {w}" for n, w in skipped[:5]) + ")")
    return PairSet(np.stack(images), captions, files, skipped)


def finetune(
    data: str | os.PathLike,
    base: str | os.PathLike,
    out: str | os.PathLike,
    freeze_layers: int = 0,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 5e-4,
    warmup: int = 20,
    caption_dropout: float = 0.1,
    seed: int = 0,
    resume: bool = True,
) -> dict:
    """Fine-tune ``base``'s DalleBart on ``data``; write a full model folder to ``out``.

    Returns (and writes to ``out/finetune_report.json``) the number of pairs, the skipped items
    with reasons, and the teacher-forced loss on the pairs before and after training.
    """
    from dalle_core.checkpoints import CheckpointError
    from dalle_core.checkpoints.bart import (
        load_dalle_bart,
        load_dalle_bart_tokenizer,
        save_dalle_bart,
    )
    from dalle_core.checkpoints.vqgan import load_vqgan
    from dalle_core.models.bart import DalleBart
    from dalle_core.train.bart import (
        BartTrainConfig,
        eval_loss,
        tokenize_captions,
        train_bart,
        unconditional_row,
    )
    from dalle_core.train.vqgan import encode_images

    base, out = Path(base).expanduser(), Path(out).expanduser()
    for sub in ("dalle", "vqgan"):
        if not (base / sub).is_dir():
            raise CheckpointError(f"base model {base} has no {sub}/ folder (expected dalle/, vqgan/, clip/)")
    if freeze_layers < 0:
        raise ValueError(f"freeze_layers must be >= 0, got {freeze_layers}")
    vq_cfg, vq_params = load_vqgan(base / "vqgan")
    cfg, params = load_dalle_bart(base / "dalle")
    if freeze_layers > min(cfg.encoder_layers, cfg.decoder_layers):
        raise ValueError(
            f"freeze_layers={freeze_layers} but the model has {cfg.encoder_layers}+{cfg.decoder_layers} layers"
        )
    tokenizer = load_dalle_bart_tokenizer(base / "dalle")
    pairs = collect_pairs(data, vq_cfg.resolution)
    log.info("finetune: %d pairs (%d skipped)", len(pairs.captions), len(pairs.skipped))
    codes = encode_images(vq_cfg, vq_params, pairs.images)
    ids, mask = tokenize_captions(tokenizer, pairs.captions)
    model = DalleBart(cfg)
    before = eval_loss(model, params, ids, mask, codes)
    tcfg = BartTrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, caption_dropout=caption_dropout,
        freeze_layers=freeze_layers, seed=seed, ckpt_every=max(1, min(100, steps)), log_every=max(1, min(25, steps)),
        weight_decay=0.0,
    )
    new = train_bart(cfg, codes, ids, mask, unconditional_row(tokenizer), out / "run", tcfg, init=params, resume=resume)
    after = eval_loss(model, new, ids, mask, codes)
    save_dalle_bart(out / "dalle", cfg, new, scanned=True, tokenizer=tokenizer)
    for sub in ("vqgan", "clip"):
        if (base / sub).is_dir() and not (out / sub).exists():
            shutil.copytree(base / sub, out / sub)
    report = {
        "pairs": len(pairs.captions),
        "skipped": [{"item": n, "reason": w} for n, w in pairs.skipped],
        "loss_before": round(before, 4),
        "loss_after": round(after, 4),
        "train": asdict(tcfg),
        "base": str(base),
    }
    (out / "finetune_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("finetune: loss on the pairs %.4f → %.4f; model in %s", before, after, out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from dalle_core.train.loop import setup_logging

    p = argparse.ArgumentParser(prog="python -m dalle_core.train.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder of images + .txt captions (or metadata.jsonl), or a JSONL file")
    p.add_argument("--base", required=True, help="model folder with dalle/, vqgan/ (clip/ optional)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--freeze-layers", type=int, default=0, help="keep embeddings + the lower N layers fixed")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    a = p.parse_args(argv)
    setup_logging()
    report = finetune(a.data, a.base, a.out, freeze_layers=a.freeze_layers, steps=a.steps,
                      batch_size=a.batch_size, lr=a.lr, seed=a.seed, resume=not a.no_resume)
    log.info("report: %s", json.dumps({k: v for k, v in report.items() if k != "train"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
