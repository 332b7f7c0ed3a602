"""Text normalizer steps (input/expected pairs) and the BART tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dalle_core import text as T

STEP_CASES = [
    (T.fix_unicode, "cafÃ©", "café"),
    (T.unescape_html, "fish &amp;amp; chips", "fish & chips"),
    (T.to_ascii, "Crème “brûlée”", 'Creme "brulee"'),
    (T.lowercase, "Red FOX", "red fox"),
    (T.remove_wiki_refs, "[1] a cat [23]", " a cat "),
    (T.remove_html_tags, "a <b>bold</b> cat", "a  bold  cat"),
    (T.remove_urls, "see http://x.com/a?b now", "see  now"),
    (T.remove_thousands_commas, "1,000,000 and 12,5", "1000000 and 12,5"),
    (T.protect_dots, "3.5 e.g", "3xtokxdotxtokx5 extokxdotxtokxg"),
    (
        T.protect_apostrophes,
        "it's don't 'quoted'",
        "itxtokxquotextokxs donxtokxquotextokxt 'quoted'",
    ),
    (T.protect_dates, "12/05 and a/b", "12xtokxslashxtokx05 and a/b"),
    (T.space_special_chars, "well-known 50%/a&b", "well known 50 %  / a & b"),
    (T.drop_ignored_chars, "#snake_case\\x", " snake case x"),
    (T.simplify_quotes, "it's", 'it " s'),
    (
        T.punctuation_to_commas,
        "a.b(c)[d]|e:f;g?h!i=j+k~l-m/n{o}",
        "a,b,c,,d,,e,f,g,h,i,j,k,l,m,n,o,",
    ),
    (T.restore_protected, "3xtokxdotxtokx5 itxtokxquotextokxs 1xtokxslashxtokx2", "3.5 it's 1/2"),
    (T.collapse_repeats, "soooo goood viii 11111", "so goood viii 11111"),
    (T.merge_quotes, 'a "" " b', 'a " b'),
    (T.merge_commas, "a , ,, b,c", "a, b, c"),
    (T.collapse_whitespace, "a \t\n  b", "a b"),
    (T.strip_edge_commas, " , a, b, ", "a, b"),
    (T.leading_space, "a", " a"),
]


@pytest.mark.parametrize("step,given,expected", STEP_CASES, ids=[c[0].__name__ for c in STEP_CASES])
def test_step(step, given, expected):
    assert step(given) == expected


def test_demojize():
    pytest.importorskip("emoji")
    assert T.demojize("I ❤️ 🐍") == "I :red_heart: :snake:"


def test_every_step_is_tested_and_ordered():
    tested = {c[0] for c in STEP_CASES} | {T.demojize}
    assert set(T.NORMALIZER_STEPS) == tested
    assert T.NORMALIZER_STEPS[0] is T.fix_unicode and T.NORMALIZER_STEPS[-1] is T.leading_space


@pytest.mark.parametrize(
    "given,expected",
    [
        ("Hello,   World!!!", " hello, world"),
        ("It's 3.5 pm on 12/05 — Café", " it's 3.5 pm on 12/05, cafe"),
        ("A <b>bold</b> #sunset, see http://x.com", " a bold sunset, see"),
        ("1,000,000 (million) stars...", " 1000000, million, stars"),
        ("", " "),
    ],
)
def test_normalize_text(given, expected):
    assert T.normalize_text(given) == expected


@pytest.fixture(scope="module")
def tok():
    return T.build_fallback_tokenizer(512, max_length=16)


def test_fallback_tokenizer_is_bart_like_and_deterministic(tok):
    assert tok.vocab_size <= 512
    assert (tok.bos_id, tok.pad_id, tok.eos_id) == (0, 1, 2)
    out = tok(["A red fox in the snow", ""])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == np.int32
    n = int(mask[0].sum())
    assert (
        ids[0, 0] == 0
        and ids[0, n - 1] == 2
        and (ids[0, n:] == 1).all()
        and (mask[0, n:] == 0).all()
    )
    assert tok.decode(ids[0]) == " a red fox in the snow"
    # dalle-mini's unconditional prompt: the empty string tokenized raw is just <s></s>
    raw = tok([""], normalize=False)
    assert raw["input_ids"][0, :3].tolist() == [0, 2, 1] and raw["attention_mask"].sum() == 2
    again = T.build_fallback_tokenizer(512, max_length=16)
    np.testing.assert_array_equal(again(["a red fox in the snow"])["input_ids"], ids[:1])


def test_truncation_keeps_eos(tok):
    ids = tok(["word " * 50])["input_ids"][0]
    assert ids[0] == 0 and ids[-1] == 2 and (ids != 1).all()
    with pytest.raises(TypeError, match="list of strings"):
        tok("a string")


def test_save_and_load_both_formats(tok, tmp_path):
    tok.save(tmp_path)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / name).exists()
    assert (
        json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "BartTokenizer"
    )
    texts = ["a blue robot, coding at night", "sunset over the ocean"]
    want = tok(texts)["input_ids"]
    np.testing.assert_array_equal(
        T.TextTokenizer.from_folder(tmp_path, 16)(texts)["input_ids"], want
    )
    (tmp_path / "tokenizer.json").unlink()  # vocab.json + merges.txt path
    np.testing.assert_array_equal(
        T.TextTokenizer.from_folder(tmp_path, 16)(texts)["input_ids"], want
    )
    # transformers' BART tokenizer reads the same files and agrees
    transformers = pytest.importorskip("transformers")
    hf = transformers.BartTokenizerFast.from_pretrained(str(tmp_path))
    hf_ids = hf(
        [T.normalize_text(t) for t in texts], padding="max_length", truncation=True, max_length=16
    )
    np.testing.assert_array_equal(np.array(hf_ids["input_ids"]), want)


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        T.TextTokenizer.from_folder(tmp_path)
    with pytest.raises(ValueError, match="too small"):
        T.build_fallback_tokenizer(100)


@pytest.mark.parametrize("layout", ["embedded", "unk not in vocab"])
def test_unseen_characters_never_fail(layout, tmp_path):
    folder = Path(__file__).resolve().parents[1] / "dalle_core" / "embedded" / "dalle"
    if layout == "unk not in vocab":
        state = json.loads((folder / "tokenizer.json").read_text())
        state["model"]["vocab"] = {k: v for k, v in state["model"]["vocab"].items()
                                   if len(k) == 1 and k.isalpha() or k.startswith("<")}
        state["model"]["vocab"].pop("<unk>", None)
        state["model"]["merges"] = []
        (tmp_path / "tokenizer.json").write_text(json.dumps(state))
        folder = tmp_path
    tok = T.TextTokenizer.from_folder(folder, max_length=24)
    out = tok(["an icon of a fox", "寿司 🍣 on navy", "\x00\x00", "café 1234 ½"])
    n = out["attention_mask"].sum(axis=1)
    assert (out["input_ids"][:, 0] == tok.bos_id).all()
    assert all(row[k - 1] == tok.eos_id for row, k in zip(out["input_ids"], n, strict=True))
