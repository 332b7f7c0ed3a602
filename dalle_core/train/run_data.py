"""The data of a training run folder, shared by its stages (``dalle_core.train.embedded`` runs them;
``bart`` and ``clip`` read their pairs here): the domain, the rendered scenes, their wordings and
DalleBart's extra scenes."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from dalle_core.train.domains import get_domain
from dalle_core.train.run_config import EmbeddedConfig

log = logging.getLogger(__name__)


def domain_of(out: Path, cfg: EmbeddedConfig):
    """The run's training domain (``dalle_core.train.domains``)."""
    return get_domain(cfg.domain, out, cfg.jitter, cfg.art_dir)


def load_data(out: Path, split: str, cfg: EmbeddedConfig):
    """The run's ``train`` or ``heldout`` scenes (``data`` stage)."""
    return domain_of(out, cfg).load(out / f"{split}.npz")


def all_captions(out: Path, cfg: EmbeddedConfig) -> list[list[str]]:
    """``captions_per_image`` wordings of every training scene (the first is the stored one)."""
    path = out / "captions.json"
    if path.exists():
        return json.loads(path.read_text())
    train = load_data(out, "train", cfg)
    domain = domain_of(out, cfg)
    extra = [domain.recaption(train.scenes, seed=cfg.seed * 1000 + k) for k in range(1, cfg.captions_per_image)]
    caps = [[c, *(e[i] for e in extra)] for i, c in enumerate(train.captions)]
    path.write_text(json.dumps(caps))
    return caps


EXTRA_PART = 16000  # extra scenes are rendered, captioned and encoded this many at a time


def extra_scenes(out: Path, cfg: EmbeddedConfig, encode) -> None:
    """``bart_extra.npz``: codes and ``captions_per_image`` wordings of ``cfg.bart_extra_images``
    fresh training-split scenes, rendered in parts of ``EXTRA_PART`` with their own seeds (part i:
    ``seed + 1000 + i``; wordings ``1000 * seed + 77 + first index of the part + k``), apart from the
    seeds of the ``train_images`` scenes and their wordings."""
    codes, caps = [], []
    domain = domain_of(out, cfg)
    t0 = time.time()
    for i, start in enumerate(range(0, cfg.bart_extra_images, EXTRA_PART)):
        n = min(EXTRA_PART, cfg.bart_extra_images - start)
        data = domain.make_dataset(n, cfg.seed + 1000 + i, "train")
        more = [domain.recaption(data.scenes, seed=1000 * cfg.seed + 77 + start + k) for k in range(1, cfg.captions_per_image)]
        caps += [[c, *(m[j] for m in more)] for j, c in enumerate(data.captions)]
        codes.append(encode(data.images))
        log.info("tokens: extra scenes %d/%d (%.0fs)", start + n, cfg.bart_extra_images, time.time() - t0)
    tmp = out / "bart_extra.tmp.npz"  # written whole, then renamed: a stopped run leaves no half file
    np.savez_compressed(tmp, codes=np.concatenate(codes), captions=np.array(json.dumps(caps)))
    tmp.replace(out / "bart_extra.npz")


def extra_count(out: Path) -> int | None:
    """How many scenes ``bart_extra.npz`` holds (None: no file yet)."""
    path = out / "bart_extra.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return len(z["codes"])


def bart_pairs(out: Path, cfg: EmbeddedConfig) -> tuple[np.ndarray, list[list[str]]]:
    """DalleBart's training pairs: the training scenes' codes and wordings, then the extra scenes'."""
    codes, caps = np.load(out / "tokens.npz")["codes"], all_captions(out, cfg)
    if cfg.bart_extra_images:
        path = out / "bart_extra.npz"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: bart_extra_images is {cfg.bart_extra_images}; run its stage first (tokens)")
        with np.load(path) as z:
            extra_codes, extra_caps = z["codes"], json.loads(str(z["captions"]))
        if len(extra_codes) != cfg.bart_extra_images:
            raise ValueError(f"{path} holds {len(extra_codes)} scenes, the config asks for {cfg.bart_extra_images}: "
                             "run the tokens stage again")
        codes, caps = np.concatenate([codes, extra_codes]), caps + extra_caps
    return codes, caps
