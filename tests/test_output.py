import json
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from flows import output


@dataclass
class _Prompt:
    text: str
    negative: str


def _manifest(title="Hello, World: A Post!"):
    article = SimpleNamespace(title=title, extractor="markdown", text="Some text.")
    result = SimpleNamespace(extractor="offline", usage={}, errors=[], topics=[1, 2, 3])
    prompt = _Prompt(text="a red circle", negative="blurry")
    return output.build_manifest(
        source="examples/x.md", article=article, chunks=[1, 2], result=result,
        topics=[{"phrase": "red circle", "score": 1.0}], prompt=prompt,
        model_info={"name": "m", "random_init": True}, sampling={"seed": 3}, timings={"fetch": 0.1},
    )


def _images(n=3, size=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 16, (n, 2, 2))


def test_slugify():
    assert output.slugify("Hello, World: A Post!") == "hello-world-a-post"
    assert output.slugify("Über café — naïve") == "uber-cafe-naive"
    assert output.slugify("!!!") == "post"


def test_write_result_ranks_and_writes_everything(tmp_path):
    images, tokens = _images()
    folder = output.write_result(tmp_path, _manifest(), tokens, images, scores=[0.1, 0.9, 0.5])
    assert folder == tmp_path / "hello-world-a-post"
    m = json.loads((folder / "manifest.json").read_text())
    assert [c["file"] for c in m["candidates"]] == ["candidate-02.png", "candidate-03.png", "candidate-01.png"]
    assert [c["rank"] for c in m["candidates"]] == [1, 2, 3]
    assert m["cover"]["from"] == "candidate-02.png"
    assert m["chunk_count"] == 2 and m["seed"] == 3 and "finish" in m["timings"]
    assert m["article"] == {"extractor": "markdown", "characters": 10}
    assert sorted(p.name for p in folder.iterdir()) == [
        "candidate-01.png", "candidate-02.png", "candidate-03.png", "cover.png", "manifest.json"]
    # nothing temporary is left behind
    assert [p.name for p in tmp_path.iterdir()] == ["hello-world-a-post"]


def test_second_run_never_overwrites(tmp_path):
    images, tokens = _images(1)
    a = output.write_result(tmp_path, _manifest(), tokens, images, None)
    b = output.write_result(tmp_path, _manifest(), tokens, images, None)
    assert (a.name, b.name) == ("hello-world-a-post", "hello-world-a-post-2")
    assert json.loads((b / "manifest.json").read_text())["ranking"].startswith("none")


def test_failure_leaves_no_folder(tmp_path, monkeypatch):
    images, tokens = _images()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(output.json, "dumps", boom)
    with pytest.raises(RuntimeError):
        output.write_result(tmp_path, _manifest(), tokens, images, [1, 2, 3])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_dir_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(output.OutputError, match="cannot write to output folder"):
        output.check_writable(ro / "sub")


def test_output_path_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(output.OutputError, match="pass --out DIR"):
        output.check_writable(blocker / "out")
