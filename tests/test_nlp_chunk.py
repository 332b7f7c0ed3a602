"""Chunking properties on seeded random articles: limits, boundaries, overlap, no text lost."""

from __future__ import annotations

import random

import pytest

from nlp.chunk import chunk_article, count_tokens, split_sentences
from nlp.models import Article, Section

WORDS = ("coffee team remote async standup garden tomato balcony ferry harbour battery palette "
         "colour brand launch metric customer support pandas column vector loop cloud bill "
         "instance storage archive sourdough starter flour water yeast morning ritual").split()


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    if n > 6 and rng.random() < 0.3:
        words.insert(3, rng.choice(["e.g.", "Dr. Okafor", "approx.", "3.5", "U.S."]))
    return words[0].capitalize() + " " + " ".join(words[1:]) + rng.choice([".", ".", "!", "?"])


def random_article(seed: int) -> tuple[Article, list[tuple[str, bool]]]:
    """An article and its sentences/headings in order (``(text, is_heading)``)."""
    rng = random.Random(seed)
    sections, pieces = [], []
    for si in range(rng.randint(1, 6)):
        heading = None if si == 0 and rng.random() < 0.5 else f"Section {si} {rng.choice(WORDS)}"
        if heading:
            pieces.append((heading, True))
        paras = []
        for _ in range(rng.randint(0 if heading else 1, 5)):
            sents = []
            for _ in range(rng.randint(1, 6)):
                n = rng.choice([3, 8, 15, 25, 40]) if rng.random() > 0.04 else rng.randint(250, 500)
                sents.append(_sentence(rng, n))
            pieces.extend((s, False) for s in sents)
            paras.append(" ".join(sents))
        sections.append(Section(heading=heading, level=2 if heading else 0, paragraphs=paras))
    return Article(source=f"seed-{seed}", title="Random", sections=sections), pieces


def _spans(article: Article, pieces):
    """Character spans of each sentence/heading in article.text, located independently."""
    spans, pos = [], 0
    for text, is_heading in pieces:
        at = article.text.index(text, pos)
        spans.append((at, at + len(text), is_heading))
        pos = at + len(text)
    return spans


SEEDS = range(30)


@pytest.mark.parametrize("max_tokens, overlap", [(60, 0), (60, 20), (150, 30), (400, 50)])
def test_chunk_properties(max_tokens, overlap):
    saw_overlap = False
    for seed in SEEDS:
        article, pieces = random_article(seed)
        chunks = chunk_article(article, max_tokens=max_tokens, overlap=overlap)
        text = article.text
        spans = _spans(article, pieces)
        starts = {s for s, _, _ in spans}
        ends = {e for _, e, _ in spans}
        long_spans = [(s, e) for s, e, _ in spans if count_tokens(text[s:e]) > max_tokens]

        covered = bytearray(len(text))
        for i, c in enumerate(chunks):
            assert c.index == i
            # A slice of the article, within the token limit.
            assert c.text == text[c.start_char:c.end_char]
            assert c.n_tokens == count_tokens(c.text) <= max_tokens
            for k in range(c.start_char, c.end_char):
                covered[k] = 1
            # Boundaries: sentence/heading boundaries, or a word boundary inside an over-long sentence.
            for pos, edge, gap in ((c.start_char, starts, -1), (c.end_char, ends, 0)):
                if pos not in edge:
                    inside = [sp for sp in long_spans if sp[0] < pos < sp[1]]
                    assert inside, f"seed {seed}: chunk {i} cuts a sentence at {pos}"
                    # ...and then between words: whitespace just before a start / at an end.
                    assert text[pos + gap].isspace(), f"seed {seed}: chunk {i} cuts a word"
            # A heading inside a chunk (not at its start) comes with its whole section.
            for s, _e, is_heading in spans:
                if is_heading and c.start_char < s < c.end_char:
                    nxt = [h for h, _, ih in spans if ih and h > s]
                    section_end = max(e2 for s2, e2, _ in spans if s2 < (nxt[0] if nxt else len(text) + 1))
                    assert c.end_char >= section_end, f"seed {seed}: chunk {i} splits a packed section"
        # No text lost.
        lost = [k for k, ch in enumerate(text) if not ch.isspace() and not covered[k]]
        assert not lost, f"seed {seed}: characters {lost[:5]} not in any chunk"
        # Overlap: whole sentences, at most `overlap` tokens, never across a heading.
        for a, b in zip(chunks, chunks[1:], strict=False):
            assert b.start_char > a.start_char and b.end_char > a.end_char
            if b.start_char < a.end_char:
                saw_overlap = True
                shared = text[b.start_char:a.end_char]
                assert count_tokens(shared) <= overlap
                assert b.start_char in starts and a.end_char in ends
                assert not any(ih and b.start_char <= s < a.end_char for s, _, ih in spans)
    if overlap:
        assert saw_overlap, "overlap was never used"


def test_zero_overlap_means_disjoint():
    for seed in SEEDS:
        chunks = chunk_article(random_article(seed)[0], max_tokens=50, overlap=0)
        for a, b in zip(chunks, chunks[1:], strict=False):
            assert b.start_char >= a.end_char


def test_small_sections_are_packed_and_long_ones_follow_headings():
    sec = [Section(heading=f"Part {i}", level=2, paragraphs=[f"Short text number {i}."]) for i in range(3)]
    art = Article(source="x", title="t", sections=sec)
    chunks = chunk_article(art, max_tokens=400)
    assert len(chunks) == 1 and chunks[0].heading == "Part 0"
    long_para = " ".join(f"Sentence {i} is about coffee and tea." for i in range(40))
    art = Article(source="x", title="t", sections=[
        Section(paragraphs=["Intro sentence."]),
        Section(heading="Long part", level=2, paragraphs=[long_para]),
    ])
    chunks = chunk_article(art, max_tokens=100, overlap=20)
    assert chunks[0].text == "Intro sentence."
    assert chunks[1].text.startswith("Long part\n\nSentence 0")
    assert all(c.heading == "Long part" for c in chunks[1:])


def test_long_sentence_is_split_inside_at_spaces():
    sentence = " ".join(["photosynthesis"] * 300) + "."
    art = Article(source="x", sections=[Section(paragraphs=["Before.", sentence, "After."])])
    chunks = chunk_article(art, max_tokens=50, overlap=10)
    assert all(c.n_tokens <= 50 for c in chunks)
    inner = [c for c in chunks if "photosynthesis" in c.text]
    assert len(inner) >= 6
    # Cut only between words: every piece is a whole word.
    assert all(set(c.text.split()) <= {"photosynthesis", "photosynthesis.", "Before.", "After."}
               for c in inner)
    url = "https://example.com/" + "a1b2c3" * 200  # one "word" over the limit
    art = Article(source="x", sections=[Section(paragraphs=[url])])
    chunks = chunk_article(art, max_tokens=20, overlap=0)
    assert "".join(c.text for c in chunks) == url and all(c.n_tokens <= 20 for c in chunks)


def test_sentence_splitter():
    text = ("Dr. Smith met Mr. Jones at 9 a.m. on Monday. They talked about the U.S. market, e.g. "
            "coffee. Prices rose 3.5% in May! Did it last? “Yes,” he said. Then they left.")
    sents = [text[s:e] for s, e in split_sentences(text)]
    assert sents == [
        "Dr. Smith met Mr. Jones at 9 a.m. on Monday.",
        "They talked about the U.S. market, e.g. coffee.",
        "Prices rose 3.5% in May!",
        "Did it last?",
        "“Yes,” he said.",
        "Then they left.",
    ]


def test_count_tokens_matches_cl100k():
    from nlp.chunk import _encoding

    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    # published cl100k_base ids, so the offline copy is the real encoding
    assert _encoding().encode("hello world") == [15339, 1917]
    assert _encoding().encode(" sourdough") == [20897, 67, 1409]
    assert count_tokens("<|endoftext|>") > 1  # special tokens are plain text here


def test_bad_arguments():
    art = Article(source="x", sections=[Section(paragraphs=["Text."])])
    with pytest.raises(ValueError, match="at least 8"):
        chunk_article(art, max_tokens=4)
    with pytest.raises(ValueError, match="overlap=300"):
        chunk_article(art, max_tokens=400, overlap=300)
    assert chunk_article(Article(source="x", text="")) == []


def test_text_only_article_and_edited_text():
    art = Article(source="x", text="First paragraph here.\n\nSecond one. With two sentences.")
    chunks = chunk_article(art, max_tokens=8, overlap=0)
    assert [c.text for c in chunks] == ["First paragraph here.\n\nSecond one.", "With two sentences."]
    # sections that do not match the text: the rendered sections are chunked (with a warning)
    edited = Article(source="x", sections=[Section(paragraphs=["Real text."])], text="Other.")
    assert [c.text for c in chunk_article(edited)] == ["Real text."]
