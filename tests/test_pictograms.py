"""The pictogram domain on a tiny concept list with art the test draws (no download)."""

import numpy as np
import pytest

from dalle_core.train import pictograms as P
from dalle_core.train.domains import get_domain


def _concepts(n: int = 40) -> P.Concepts:
    rng = np.random.default_rng(0)
    art = np.zeros((n, 64, 64, 4), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        colour = rng.integers(0, 256, 3)
        r = 12 + 18 * rng.random()
        mask = (np.abs(yy - 32) + (i % 3) * np.abs(xx - 32) / 2 < r) if i % 2 else ((yy - 32) ** 2 + (xx - 32) ** 2 < r * r)
        art[i, mask, :3] = colour
        art[i, mask, 3] = 255
        art[i, 20 + i % 20 : 26 + i % 20, 10:54, :3] = 255 - colour  # a stripe that tells them apart
        art[i, 20 + i % 20 : 26 + i % 20, 10:54, 3] = 255
    names = tuple(f"thing{i}" for i in range(n))
    keywords = tuple((f"word{i}", "common") for i in range(n))
    return P.Concepts(names, keywords, ("objects",) * n, art)


def test_build_concepts_keeps_the_groups_and_leaves_keycaps_flags_and_non_faces_out():
    messages = {"subgroups": [{"order": 0, "key": "face-smiling"}, {"order": 1, "key": "heart"},
                              {"order": 2, "key": "keycap"}, {"order": 3, "key": "drink"}]}
    data = [
        {"label": "grinning face", "hexcode": "1F600", "emoji": "x", "group": 0, "subgroup": 0, "tags": ["face", "grin"]},
        {"label": "red heart", "hexcode": "2764", "emoji": "x", "group": 0, "subgroup": 1, "tags": []},
        {"label": "keycap: 1", "hexcode": "31-20E3", "emoji": "x", "group": 8, "subgroup": 2, "tags": []},
        {"label": "hot beverage", "hexcode": "2615", "emoji": "x", "group": 4, "subgroup": 3, "tags": ["coffee", "Tea"]},
        {"label": "flag: France", "hexcode": "1F1EB-1F1F7", "emoji": "x", "group": 9, "subgroup": 3, "tags": []},
    ]
    out = P.build_concepts(data, messages)
    assert [c["name"] for c in out] == ["grinning face", "hot beverage"]
    assert out[1]["keywords"] == ["coffee", "tea"] and out[1]["group"] == "food & drink"


def test_distinctive_keywords_drop_words_many_concepts_share():
    c = _concepts(5)
    assert all(ks == (f"word{i}",) for i, ks in enumerate(c.distinctive_keywords()))


def test_captions_name_every_concept_and_any_coloured_background():
    c = _concepts()
    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = P.sample_scene(rng, len(c))
        text = P.caption(scene, c, rng)
        for i in scene.concepts:
            assert c.names[i] in text or f"word{i}" in text, text
        if scene.background != "white":
            assert scene.background in text, text
        if scene.kind == "single" and scene.position != "centre":
            assert scene.position in text, text
        if scene.size != "medium":
            assert any(w in text for w in P.SIZE_WORDS[scene.size]), text


def test_heldout_pairs_and_phrasings_stay_out_of_training():
    c = _concepts()
    train = P.make_dataset(c, 400, seed=0, split="train")
    held = P.make_dataset(c, 200, seed=0, split="heldout")
    assert not any(P.is_heldout_pair(*s.concepts) for s in train.scenes if s.kind == "pair")
    assert all(P.is_heldout_pair(*s.concepts) for s in held.scenes if s.kind == "pair")
    assert not any(w in cap for cap in train.captions for w in ("backdrop", "beside", "a picture of", "next to"))
    assert all(any(w in cap for w in ("backdrop", "against")) for cap in held.captions)
    assert train.images.shape == (400, 64, 64, 3) and train.images.dtype == np.uint8


def test_checker_scores_reference_scenes_near_one_and_noise_near_zero():
    c = _concepts()
    data = P.make_dataset(c, 120, seed=3)
    right = [P.check(im, s, c) for im, s in zip(data.images, data.scenes, strict=True)]
    assert np.mean([r["concepts"] for r in right]) >= 0.95
    assert np.mean([r["background"] for r in right]) == 1.0
    noise = np.random.default_rng(4).integers(0, 256, (60, 64, 64, 3)).astype(np.uint8)
    wrong = [P.check(im, s, c, top=1) for im, s in zip(noise, data.scenes[:60], strict=True)]
    assert np.mean([r["concepts"] for r in wrong]) <= 0.1


def test_checker_reads_a_scene_back_and_an_empty_image_matches_nothing():
    c = _concepts()
    scene = P.Scene((7,), "blue", "large")
    seen = P.read_scene(P.render(scene, c), 1, c)
    assert seen.concepts == (7,) and seen.background == "blue"
    blank = np.zeros((64, 64, 3), np.uint8) + np.array(P.COLOURS["teal"], np.uint8)
    assert P.concept_ranks(blank, scene, c) == [len(c)]


def test_perturb_changes_one_named_thing():
    c = _concepts()
    rng = np.random.default_rng(5)
    for _ in range(100):
        s = P.sample_scene(rng, len(c))
        assert P.perturb(s, len(c), rng) != s


def test_domains_refuse_an_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="unknown domain"):
        get_domain("cats", tmp_path)
