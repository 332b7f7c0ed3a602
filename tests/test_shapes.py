"""The shapes domain (dataset, held-out split, captions), its pixel checker and the BPE trainers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dalle_core.train import shapes as S


@pytest.fixture(scope="module")
def train_data():
    return S.make_dataset(400, seed=0)


def test_palette_and_words_are_the_contract():
    assert S.PALETTE == {
        "red": (230, 25, 25),
        "green": (30, 170, 60),
        "blue": (30, 80, 220),
        "yellow": (240, 210, 20),
        "purple": (140, 50, 170),
        "orange": (245, 130, 20),
    }
    assert S.SHAPES == ("circle", "square", "triangle")
    assert S.POSITION_PHRASE["left"] == "on the left" and S.POSITION_PHRASE["center"] == "in the center"


def test_dataset_is_deterministic_by_seed(train_data):
    again = S.make_dataset(400, seed=0)
    assert np.array_equal(train_data.images, again.images)
    assert train_data.captions == again.captions
    other = S.make_dataset(400, seed=1)
    assert not np.array_equal(train_data.images, other.images)


def test_jitter_moves_objects_off_the_grid_and_keeps_every_caption_true(train_data):
    assert S.make_dataset(400, seed=0, jitter=0).captions == train_data.captions  # 0 draws nothing more
    data = S.make_dataset(300, seed=0, jitter=3)
    again = S.make_dataset(300, seed=0, jitter=3)
    assert np.array_equal(data.images, again.images) and data.captions == again.captions
    offsets = {int(c) % 8 for sc in data.scenes for o in sc.objects for c in (o.cx, o.cy)}
    assert len(offsets) == 7  # anchors were multiples of 8; ±3 reaches every other offset but 4
    for img, sc in zip(data.images, data.scenes, strict=True):
        assert all(S.check(img, sc).values()), sc
        assert all(o.extent / 2 <= c <= 64 - o.extent / 2 for o in sc.objects for c in (o.cx, o.cy))
        assert not S.is_heldout(sc)
    held = S.make_dataset(100, seed=0, split="heldout", jitter=3)
    assert all(S.is_heldout(sc) for sc in held.scenes)
    with pytest.raises(ValueError, match="jitter"):
        S.make_dataset(3, jitter=-1)


def test_images_are_white_with_palette_colours_only(train_data):
    imgs = train_data.images
    assert imgs.shape == (400, 64, 64, 3) and imgs.dtype == np.uint8
    colours = {tuple(c) for c in np.unique(imgs.reshape(-1, 3), axis=0)}
    assert colours <= set(S.PALETTE.values()) | {(255, 255, 255)}
    # corners are background in every image
    assert (imgs[:, 0, 0] == 255).all() and (imgs[:, -1, -1] == 255).all()


def test_two_objects_never_overlap_and_differ_in_colour(train_data):
    for sc in train_data.scenes:
        if sc.kind == "pair":
            a, b = sc.objects
            assert a.colour != b.colour
            ma = S.shape_mask(a.shape, a.cx, a.cy, a.extent)
            mb = S.shape_mask(b.shape, b.cx, b.cy, b.extent)
            assert not (ma & mb).any()


def test_heldout_split_is_disjoint_from_train(train_data):
    held = S.make_dataset(300, seed=0, split="heldout")
    assert all(S.is_heldout(s) for s in held.scenes)
    assert not any(S.is_heldout(s) for s in train_data.scenes)
    train_keys = {S.canonical_caption(s) for s in train_data.scenes}
    assert not train_keys & {S.canonical_caption(s) for s in held.scenes}
    kinds = {s.kind for s in held.scenes}
    assert kinds == {"single", "pair"}
    # every held-out prompt is held out; the acceptance prompts are not
    assert all(S.is_heldout(p.scene) for p in S.eval_prompts("heldout"))
    for text in ("a red circle", "a blue square on the left"):
        assert text not in {p.text for p in S.eval_prompts("heldout")}
    assert ("blue", "square", "left") not in S.HELDOUT_SINGLE


def test_heldout_triples_keep_their_pairs_in_training():
    # every pair of attributes inside a held-out triple still occurs in training
    for c, s, p in S.HELDOUT_SINGLE:
        assert any((c, s, q) not in S.HELDOUT_SINGLE for q in S.POSITIONS if q != p)
        assert any((c, t, p) not in S.HELDOUT_SINGLE for t in S.SHAPES if t != s)
        assert any((k, s, p) not in S.HELDOUT_SINGLE for k in S.COLOURS if k != c)
    for z, c, s in S.HELDOUT_SIZED:
        assert any((y, c, s) not in S.HELDOUT_SIZED for y in ("small", "large") if y != z)
    for pair in S.HELDOUT_PAIRS:
        a, b = sorted(pair)
        assert a[0] != b[0]
        # both objects appear in training pairs with other partners
        for obj in (a, b):
            partners = [(c, t) for c in S.COLOURS for t in S.SHAPES if c != obj[0]]
            assert any(frozenset({obj, q}) not in S.HELDOUT_PAIRS for q in partners)


def test_captions_vary_and_name_the_scene(train_data):
    caps = train_data.captions
    assert len(set(caps)) > 0.8 * len(caps)
    # several templates are in use
    assert any(c.startswith("a picture of") for c in caps)
    assert any(c.startswith(("on the", "at the", "in the")) for c in caps)
    assert any(" next to " in c for c in caps)
    for cap, sc in zip(caps, train_data.scenes, strict=True):
        for o in sc.objects:
            assert o.colour in cap or (o.colour == "purple" and "violet" in cap)
            assert o.shape in cap or (o.shape == "circle" and "disk" in cap)
        if " next to " in cap:  # only with both sides named, so the relation stays unambiguous
            assert "on the left" in cap and "on the right" in cap
    rng = np.random.default_rng(0)
    sc = train_data.scenes[0]
    assert len({S.caption(sc, rng) for _ in range(30)}) > 3


def test_canonical_captions():
    a = S.Obj("red", "circle", 16, 32, 20)
    b = S.Obj("blue", "square", 48, 32, 20)
    assert S.canonical_caption(S.Scene((a,))) == "a red circle"
    assert S.canonical_caption(S.Scene((b,), position="left")) == "a blue square on the left"
    assert S.canonical_caption(S.Scene((S.Obj("orange", "triangle", 32, 32, 12),), size="small")) == "a small orange triangle"
    assert S.canonical_caption(S.Scene((a, b), relation="left_of")) == "a red circle to the left of a blue square"


def test_checker_is_perfect_on_clean_renders(train_data):
    held = S.make_dataset(150, seed=3, split="heldout")
    for img, sc in zip(np.concatenate([train_data.images[:250], held.images]), train_data.scenes[:250] + held.scenes, strict=True):
        result = S.check(img, sc)
        assert all(result.values()), (sc, result, S.analyze(img))
        # the objects can be read once and handed in (the evaluation does): same verdict
        assert S.check(img, sc, S.objects_in(img)) == result
    swapped = S.Scene(tuple(dataclasses.replace(o, colour="purple" if o.colour != "purple" else "red") for o in sc.objects),
                      sc.position, sc.size, sc.relation)
    assert not all(S.check(img, swapped, S.objects_in(img)).values())


def test_checker_reads_shapes_colours_and_positions():
    for shape in S.SHAPES:
        for colour in S.COLOURS:
            for size in ("small", "medium", "large"):
                sc = S.Scene((S.Obj(colour, shape, 16, 32, S.EXTENT[size]),), position="left", size=None if size == "medium" else size)
                comps = S.analyze(S.render(sc))
                assert len(comps) == 1
                assert (comps[0].colour, comps[0].shape) == (colour, shape)
                assert "left" in S.position_of(comps[0].cx, comps[0].cy)
                assert S.size_of(comps[0].extent) == size


def test_checker_fails_wrong_images():
    red_circle = S.Scene((S.Obj("red", "circle", 32, 32, 20),))
    assert not S.check(S.render(S.Scene((S.Obj("blue", "circle", 32, 32, 20),))), red_circle)["colour_shape"]
    assert not S.check(S.render(S.Scene((S.Obj("red", "square", 32, 32, 20),))), red_circle)["colour_shape"]
    assert not S.check(np.full((64, 64, 3), 255, np.uint8), red_circle)["colour_shape"]
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert not S.check(noise, red_circle)["colour_shape"]
    # right object, wrong place
    left = S.Scene((S.Obj("red", "circle", 16, 32, 20),), position="left")
    right_img = S.render(S.Scene((S.Obj("red", "circle", 48, 32, 20),), position="right"))
    r = S.check(right_img, left)
    assert r["colour_shape"] and not r["position"]
    # two objects with the relation reversed, or a wrong shape
    a, b = S.Obj("red", "circle", 16, 32, 20), S.Obj("blue", "square", 48, 32, 20)
    want = S.Scene((a, b), relation="left_of")
    swapped = S.render(S.Scene((S.Obj("red", "circle", 48, 32, 20), S.Obj("blue", "square", 16, 32, 20)), relation="right_of"))
    r = S.check(swapped, want)
    assert r["objects"] and not r["relation"]
    assert all(S.check(S.render(want), want).values())
    wrong = S.render(S.Scene((a, S.Obj("blue", "triangle", 48, 32, 20)), relation="left_of"))
    assert not S.check(wrong, want)["objects"]
    # an extra object makes a single-object image wrong
    extra = S.render(S.Scene((S.Obj("red", "circle", 16, 32, 20), S.Obj("green", "square", 48, 32, 20)), relation="left_of"))
    assert not S.check(extra, red_circle)["colour_shape"]


def test_checker_tolerates_blur_and_upscaling():
    from PIL import Image, ImageFilter

    sc = S.Scene((S.Obj("purple", "triangle", 48, 32, 20),), position="right")
    img = Image.fromarray(S.render(sc)).filter(ImageFilter.GaussianBlur(0.8))
    assert all(S.check(np.asarray(img), sc).values())
    big = np.asarray(Image.fromarray(S.render(sc)).resize((256, 256), Image.BICUBIC))
    assert all(S.check(big, sc).values())


def test_perturb_changes_what_the_checker_sees(train_data):
    rng = np.random.default_rng(0)
    for sc in train_data.scenes[:60]:
        p = S.perturb(sc, rng)
        assert S.canonical_caption(p) != S.canonical_caption(sc)
        assert not all(S.check(S.render(sc), p).values())  # the checker tells them apart


def test_counterpart_renders_differ_both_ways(train_data):
    """A counterpart's render is wrong for the scene's words and the scene's render is wrong for the
    counterpart's words, its own render fits its own words, and training scenes get no held-out
    counterpart; an object whose caption names no position stays where it is."""
    rng = np.random.default_rng(0)
    kinds = set()
    for sc in train_data.scenes[:80]:
        for _ in range(3):
            c = S.counterpart(sc, rng, jitter=3)
            img = S.render(c)
            assert all(S.check(img, c).values())
            assert not all(S.check(img, sc).values())
            assert not all(S.check(S.render(sc), c).values())
            assert not S.is_heldout(c)
            if sc.kind == "single" and sc.position is None:
                assert (c.objects[0].cx, c.objects[0].cy) == (sc.objects[0].cx, sc.objects[0].cy)
            kinds.add("relation" if c.relation != sc.relation else "position" if c.position != sc.position
                      else "size" if c.size != sc.size else "look")
    assert kinds == {"relation", "position", "size", "look"}


def test_read_scene_names_what_the_checker_sees(train_data):
    """A reading is a training scene whose words the checker accepts for the image; held-out
    combinations, empty images and three objects read as nothing."""
    rng = np.random.default_rng(0)
    kinds = set()
    for sc in train_data.scenes[:80]:
        img = S.render(S.jittered(sc, rng, 3))
        read = S.read_scene(img, rng)
        assert read is not None and not S.is_heldout(read)
        assert all(S.check(img, read).values()), (sc, read)
        assert sorted((o.colour, o.shape) for o in read.objects) == sorted((o.colour, o.shape) for o in sc.objects)
        if sc.kind == "single":
            size = S.size_of(S.objects_in(img)[0].extent)
            assert read.size == (None if size == "medium" else size)
            kinds.add("position" if read.position else "single")
        else:
            kinds.add(read.relation)
    assert kinds == {"single", "position", *S.RELATIONS}
    held = next(p.scene for p in S.eval_prompts("heldout") if p.scene.kind == "pair")
    assert S.read_scene(S.render(held), rng) is None
    assert S.read_scene(np.full((64, 64, 3), 255, np.uint8), rng) is None
    three = S.Scene((S.Obj("red", "circle", 12, 12, 12), S.Obj("blue", "square", 50, 12, 12), S.Obj("green", "triangle", 30, 50, 12)))
    assert S.read_scene(S.render(three), rng) is None


def test_shows_heldout_spots_held_out_looks_only(train_data):
    rng = np.random.default_rng(0)
    assert not any(S.shows_heldout(S.render(S.jittered(sc, rng, 3))) for sc in train_data.scenes[:80])
    held = S.make_dataset(120, seed=1, split="heldout", jitter=3)
    def sized(sc):
        return sc.kind == "single" and (sc.size, sc.objects[0].colour, sc.objects[0].shape) in S.HELDOUT_SIZED

    looks = [im for im, sc in zip(held.images, held.scenes, strict=True) if sc.kind == "pair" or sized(sc)]
    positioned = [im for im, sc in zip(held.images, held.scenes, strict=True) if sc.kind == "single" and not sized(sc)]
    assert looks and positioned
    assert all(S.shows_heldout(im) for im in looks)
    assert not any(S.shows_heldout(im) for im in positioned)  # training shows these looks, unpositioned


def test_perturb_covers_binding_and_size():
    """Two objects of different shapes can swap shapes (colours and shapes all still named);
    a single object with a size word can change size."""
    pair = S.Scene((S.Obj("red", "circle", 16.0, 32.0, 20), S.Obj("blue", "square", 48.0, 32.0, 20)), relation="left_of")
    sized = S.Scene((S.Obj("red", "circle", 32.0, 32.0, 12),), size="small")
    rng = np.random.default_rng(0)
    pairs = {S.canonical_caption(S.perturb(pair, rng)) for _ in range(200)}
    sizes = {S.canonical_caption(S.perturb(sized, rng)) for _ in range(200)}
    assert "a red square to the left of a blue circle" in pairs
    assert "a red circle to the right of a blue square" in pairs
    assert "a large red circle" in sizes


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="split"):
        S.make_dataset(3, split="test")
    with pytest.raises(ValueError, match="RGB"):
        S.analyze(np.zeros((64, 64)))


def test_bpe_tokenizers_round_trip(tmp_path, train_data):
    from dalle_core.text import TextTokenizer, normalize_text
    from dalle_core.train.tokenizer import (
        save_clip_tokenizer,
        train_bart_tokenizer,
        train_clip_tokenizer,
    )

    bart = train_bart_tokenizer(train_data.captions, 1024, normalize=normalize_text)
    assert [bart.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    tok = TextTokenizer(bart, max_length=32)
    tok.save(tmp_path / "dalle")
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (tmp_path / "dalle" / name).exists()
    loaded = TextTokenizer.from_folder(tmp_path / "dalle", max_length=32)
    enc = loaded(["a red circle to the left of a blue square"])
    ids = enc["input_ids"][0]
    assert ids[0] == 0 and 2 in ids and ids.shape == (32,)
    assert loaded.decode(ids).strip() == "a red circle to the left of a blue square"
    # common words are single tokens
    assert int(enc["attention_mask"].sum()) <= 12

    clip = train_clip_tokenizer(train_data.captions, 1024)
    save_clip_tokenizer(clip, tmp_path / "clip", 32)
    from dalle_core.rank import load_clip_tokenizer

    ct = load_clip_tokenizer(tmp_path / "clip", 32)
    ids, mask = ct(["a red circle"])
    eos = clip.token_to_id("<|endoftext|>")
    assert eos == clip.get_vocab_size() - 1  # EOS is the highest id: CLIP pools there
    assert ids[0, int(mask[0].sum()) - 1] == eos and ids.max() == eos
    # a second training writes the same files (the trainer's own alphabet order changes per call)
    save_clip_tokenizer(train_clip_tokenizer(train_data.captions, 1024), tmp_path / "clip2", 32)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (tmp_path / "clip2" / name).read_bytes() == (tmp_path / "clip" / name).read_bytes(), name


def test_recolour_replaces_palette_colours_consistently():
    sc = S.Scene((S.Obj("red", "circle", 16.0, 32.0, 20), S.Obj("blue", "square", 48.0, 32.0, 20)), relation="left_of")
    img = S.render(sc)
    out = S.recolour(np.stack([img, img]), np.random.default_rng(0), p=1.0)
    white = (img == 255).all(-1)
    for o in out:
        assert (o[white] == 255).all()  # the background stays white
        for name in ("red", "blue"):
            where = (img == S.PALETTE[name]).all(-1)
            colours = np.unique(o[where], axis=0)
            assert len(colours) == 1 and colours[0].min() <= 200  # one new colour per palette colour
    assert not np.array_equal(out[0], img) and not np.array_equal(out[0], out[1])
    np.testing.assert_array_equal(S.recolour(img[None], np.random.default_rng(0), p=0.0)[0], img)
