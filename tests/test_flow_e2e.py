"""End to end: the real `blog-to-images` flow on a bundled example post, under a Prefect test server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "red-circle-brand.md"


@pytest.fixture(scope="module")
def manifest(prefect_server, tmp_path_factory):
    from flows.pipeline import blog_to_images

    out = tmp_path_factory.mktemp("out")
    return blog_to_images(str(EXAMPLE), candidates=3, seed=1, overrides={"output": {"dir": str(out)}})


def test_folder_is_complete(manifest):
    folder = Path(manifest["output_dir"])
    assert folder.name == "why-our-new-logo-is-a-red-circle"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["candidate-01.png", "candidate-02.png", "candidate-03.png", "cover.png", "manifest.json"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary leftovers
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["title"] == "Why Our New Logo Is a Red Circle"


def test_manifest_records_every_stage(manifest):
    assert manifest["source"] == str(EXAMPLE)
    assert manifest["chunk_count"] >= 1
    assert manifest["article"]["extractor"] == "markdown"
    assert manifest["topics"]["extractor"] == "offline"
    phrases = " ".join(t["phrase"] for t in manifest["topics"]["merged"]).lower()
    assert "red circle" in phrases
    assert manifest["prompt"] and isinstance(manifest["negative_prompt"], str)
    assert set(manifest["model"]) >= {"name", "checkpoint", "random_init"}
    assert manifest["seed"] == 1 and manifest["sampling"]["candidates"] == 3
    assert set(manifest["timings"]) == {"fetch", "chunk", "topics", "combine", "prompt", "generate", "rank", "render", "finish"}
    assert len(manifest["candidates"]) == 3


def test_images_are_ranked_and_real(manifest):
    folder = Path(manifest["output_dir"])
    cands = manifest["candidates"]
    if cands[0]["score"] is not None:
        scores = [c["score"] for c in cands]
        assert scores == sorted(scores, reverse=True)
    arrays = [np.asarray(Image.open(folder / c["file"])) for c in cands]
    assert all(a.ndim == 3 and a.shape[2] == 3 for a in arrays)
    assert any(a.std() > 0 for a in arrays)  # decoded pixels, not a blank canvas
    cover = Image.open(folder / "cover.png")
    assert cover.size[0] >= 256
    tokens = np.asarray(cands[0]["tokens"])
    assert tokens.ndim == 2 and tokens.shape[0] == tokens.shape[1]


def test_same_seed_same_images(manifest, tmp_path):
    from flows.pipeline import blog_to_images

    again = blog_to_images(str(EXAMPLE), candidates=3, seed=1, overrides={"output": {"dir": str(tmp_path)}})
    assert [c["tokens"] for c in again["candidates"]] == [c["tokens"] for c in manifest["candidates"]]


def test_upscaled_cover_and_platform_images(prefect_server, tmp_path):
    from flows.pipeline import blog_to_images

    m = blog_to_images(str(EXAMPLE), candidates=1, seed=2, upscale=True, platforms=["blog", "instagram-square"],
                       overrides={"output": {"dir": str(tmp_path)}})
    folder = Path(m["output_dir"])
    assert m["cover"]["resize"] == "lanczos"  # no SwinIR weights configured: the classical fallback
    native = Image.open(folder / m["candidates"][0]["file"]).size
    assert Image.open(folder / "cover.png").size == (native[0] * 4, native[1] * 4)
    assert Image.open(folder / "blog.png").size == (1200, 630)
    assert Image.open(folder / "instagram-square.png").size == (1080, 1080)
    assert m["platforms"]["blog"]["size"] == [1200, 630]


def test_cover_shows_the_post_subject(manifest):
    """The embedded model draws the prompt: the post is about a red circle, the cover has one."""
    assert manifest["model"]["name"] == "embedded-tiny" and not manifest["model"]["random_init"]
    from dalle_core.train.shapes import PALETTE

    folder = Path(manifest["output_dir"])
    pixels = np.asarray(Image.open(folder / manifest["cover"]["from"])).astype(int)
    red = np.abs(pixels - np.array(PALETTE["red"])).sum(-1) < 90
    assert red.mean() > 0.03
