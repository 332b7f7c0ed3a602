"""Offline topics, merging and template prompts: pure functions and the saved pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nlp.chunk import chunk_article
from nlp.combine import combine_topics, lexical_match
from nlp.errors import ModerationError
from nlp.fetch import fetch_article
from nlp.keyphrases import extract_keyphrases, lemma, phrase_key
from nlp.models import ImagePrompt, Topic, TopicResult
from nlp.prompt import (
    DEFAULT_NEGATIVE,
    STYLE_PRESETS,
    PromptSettings,
    blocklist_hits,
    build_prompt,
    moderate,
    optimise_prompt,
)
from nlp.topics import extract_topics

PAGES = Path(__file__).parent / "nlp_pages"


def _topics(name: str, top_n: int = 6) -> list[Topic]:
    art = fetch_article(str(PAGES / name))
    return combine_topics(extract_topics(chunk_article(art, 400, 50)), top_n=top_n)


# What a marketer would call the post about: the first topic, and ones that must be in the top 6.
PAGE_TOPICS = {
    "sourdough-cp1252.html": ("sourdough starter", {"wild yeast", "rye flour"}),
    "remote-rituals-wordpress.html": ("remote teams", {"morning rituals", "coffee roulette"}),
    "electric-ferries-news.html": ("electric ferries", {"harbour route"}),
    "balcony-tomatoes-latin1.html": ("balcony tomatoes", {"cold climate"}),
    "cloud-bill-no-article.html": ("cloud bill", {"spot instances", "lifecycle rules"}),
    "color-palette-medium.html": ("color palette", {"brand colours"}),
    "porto-weekend-utf8-bom.html": (None, {"pastel de nata", "Porto", "port cellars"}),
    "launch-checklist.md": ("launch checklist", {"one-sentence story", "landing page"}),
}


@pytest.mark.parametrize("name", sorted(PAGE_TOPICS))
def test_offline_topics_on_saved_pages(name):
    first, must = PAGE_TOPICS[name]
    topics = _topics(name)
    phrases = [t.phrase for t in topics]
    if first:
        assert phrases[0] == first, phrases
    assert must <= set(phrases), phrases
    assert topics[0].score == 1.0 and all(0 < t.score <= 1 for t in topics)
    assert [t.score for t in topics] == sorted((t.score for t in topics), reverse=True)
    # distinct: no phrase's words are all inside another's
    keys = [set(phrase_key(p)) for p in phrases]
    assert not any(a <= b for i, a in enumerate(keys) for j, b in enumerate(keys) if i != j)


def test_lemma_and_keys():
    assert [lemma(w) for w in ["Companies", "tomatoes", "classes", "bus", "analysis", "Baker’s",
                               "boxes", "news"]] == [
        "company", "tomato", "class", "bus", "analysis", "baker", "box", "new"]
    assert phrase_key("The Remote Teams") == ("remote", "team")


def test_keyphrases_break_at_stopwords_and_vague_words():
    text = ("We really love making great coffee. Great coffee needs fresh beans, and fresh beans "
            "need a good grinder. The grinder matters more than the machine.")
    (kps,) = extract_keyphrases([(text, None)], title="Coffee at home", top_n=5)
    phrases = [k.phrase for k in kps]
    assert phrases[0] in {"coffee", "fresh beans", "grinder"}
    assert not any(w in p.split() for p in phrases for w in ("really", "great", "making", "the"))
    assert "fresh beans" in phrases


def test_heading_and_title_boost():
    body = "Plants need light. Plants need water. Tomatoes need heat. Basil needs sun."
    (no_head,) = extract_keyphrases([(body, None)])
    (head,) = extract_keyphrases([(body, "Basil")])
    assert head.index(next(k for k in head if k.phrase == "basil")) < \
        no_head.index(next(k for k in no_head if k.phrase == "basil"))


def test_combine_merges_plurals_containment_and_overlap():
    topics = [
        Topic(phrase="sourdough starter", score=0.9, chunk_indices=[0]),
        Topic(phrase="Sourdough starters", score=0.7, chunk_indices=[2]),
        Topic(phrase="starter", score=0.8, chunk_indices=[1]),
        Topic(phrase="rye flour", score=0.5, chunk_indices=[1]),
        Topic(phrase="flour", score=0.4, chunk_indices=[3]),
        Topic(phrase="dutch oven", score=0.6, chunk_indices=[3]),
    ]
    merged = combine_topics(TopicResult(topics=topics, n_chunks=4), top_n=6)
    assert [t.phrase for t in merged] == ["sourdough starter", "dutch oven", "rye flour"]
    assert merged[0].chunk_indices == [0, 1, 2]
    assert set(merged[0].variants) == {"Sourdough starters", "starter"}
    # salience × coverage: full coverage keeps 0.9, one chunk of four keeps 0.6 × 0.75
    assert merged[1].score == pytest.approx(0.6 * 0.75 / 0.9 / (0.5 + 0.5 * np.sqrt(3 / 4)), rel=1e-3)
    assert combine_topics(topics, top_n=2)[1].phrase == "dutch oven"
    with pytest.raises(ValueError, match="at least 1"):
        combine_topics(topics, top_n=0)
    assert combine_topics([]) == []


def test_combine_prefers_the_longer_phrase_when_close():
    topics = [Topic(phrase="starter", score=1.0, chunk_indices=[0]),
              Topic(phrase="sourdough starter", score=0.6, chunk_indices=[1])]
    assert combine_topics(topics)[0].phrase == "sourdough starter"
    topics[1] = Topic(phrase="sourdough starter", score=0.3, chunk_indices=[1])
    assert combine_topics(topics)[0].phrase == "starter"


def test_lexical_match():
    assert lexical_match(("remote", "team"), ("remote", "team", "member"))
    assert lexical_match(("marketing",), ("content", "marketer"))  # stems: market
    assert not lexical_match(("coffee", "chat"), ("hallway", "chat"))
    assert not lexical_match((), ("x",))


def test_combine_with_embeddings():
    vectors = {"cloud costs": [1, 0, 0], "infrastructure spending": [0.95, 0.1, 0],
               "spot instances": [0, 1, 0], "cloud bill": [0.97, 0, 0.05]}
    topics = [Topic(phrase=p, score=s, chunk_indices=[i]) for i, (p, s) in
              enumerate([("cloud costs", 1.0), ("infrastructure spending", 0.8),
                         ("spot instances", 0.7), ("cloud bill", 0.5)])]
    calls = []

    def embed(phrases):
        calls.append(list(phrases))
        return np.array([vectors[p] for p in phrases], dtype=np.float32)

    merged = combine_topics(topics, embed=embed)
    assert [t.phrase for t in merged] == ["cloud costs", "spot instances"]
    assert set(merged[0].variants) == {"infrastructure spending", "cloud bill"}
    assert len(calls) == 1
    with pytest.raises(ValueError, match="embed returned shape"):
        combine_topics(topics, embed=lambda p: np.zeros((1, 3)))


def test_template_prompt():
    topics = [Topic(phrase="sourdough starter", score=1.0), Topic(phrase="starter jar", score=0.9),
              Topic(phrase="rye flour", score=0.6), Topic(phrase="wild yeast", score=0.5),
              Topic(phrase="oven", score=0.2)]
    p = build_prompt(topics, "The lazy starter", PromptSettings(style="Pencil_Sketch"))
    assert p.source == "template" and p.style == "pencil sketch"
    assert p.text == "sourdough starter, starter jar, rye flour, pencil sketch, graphite on paper, fine lines"
    assert p.topics == ["sourdough starter", "starter jar", "rye flour"]
    assert p.negative.startswith("color, photo, painting, text, letters")
    short = build_prompt(topics, "t", PromptSettings(max_words=8, negative_words=["people", "Text"]))
    assert short.text.split(", ")[0] == "sourdough starter"
    assert len(short.text.replace(",", " ").split()) <= 8
    assert short.negative.split(", ")[:3] == ["people", "Text", "photo"]
    linked = build_prompt(topics[:1], "t", PromptSettings(platform="linkedin"))
    assert linked.text.endswith("professional, clean composition")
    assert build_prompt([], "Why we moved to Lisbon", PromptSettings()).text.startswith("Why we moved to Lisbon")
    with pytest.raises(ValueError, match="unknown style 'crayon'.*photo"):
        PromptSettings(style="crayon")
    assert {"photo", "illustration", "pencil sketch", "flat vector", "3d render", "watercolor"} <= set(STYLE_PRESETS)


def test_plain_style_is_the_subject_alone():
    topics = [Topic(phrase="red circle", score=1.0), Topic(phrase="blue square", score=0.2)]
    for platform in (None, "linkedin", "instagram"):
        p = build_prompt(topics, "t", PromptSettings(style="plain", platform=platform))
        assert (p.text, p.style) == ("red circle", "plain"), platform
    # no style negatives, the defaults only
    assert build_prompt(topics, "t", PromptSettings(style="none")).negative == ", ".join(DEFAULT_NEGATIVE)
    long = build_prompt([Topic(phrase=" ".join(["word"] * 30), score=1.0)], "t", PromptSettings(style="plain", max_words=6))
    assert long.text == " ".join(["word"] * 6)


def test_blocklist_moderation():
    assert blocklist_hits("Two Corpses in a field", ["corpse"]) == ["corpse"]
    assert blocklist_hits("a gorgeous sunset", ["gore"]) == []
    assert blocklist_hits("a Child Abuse poster", ["child abuse"]) == ["child abuse"]
    prompt = ImagePrompt(text="a beer garden at sunset, illustration")
    moderate(prompt, [])
    with pytest.raises(ModerationError, match="'beer'") as err:
        moderate(prompt, ["beer", "wine"])
    assert err.value.reason == "blocklist" and err.value.matched == ["beer"]
    with pytest.raises(ModerationError, match="nude"):
        moderate("nude portrait, oil painting")
    moderate("nude portrait, oil painting", use_default=False)


def test_optimise_offline_rounds():
    topics = [Topic(phrase="red circle", score=1.0), Topic(phrase="white cups", score=0.8),
              Topic(phrase="coffee shop", score=0.6)]
    start = build_prompt(topics, "Our new logo", PromptSettings(style="flat vector"))
    seen = []

    def score(text):
        seen.append(text)
        return 1.0 if text.startswith("white cups") else 0.1

    res = optimise_prompt(start, score, rounds=3, topics=topics, blocklist=["coffee"])
    assert len(res.rounds) == 4 and res.rounds[0].text == start.text
    assert res.best.text.startswith("white cups") and res.best_score == 1.0
    assert sum(r.kept for r in res.rounds) == 1
    # a variant containing a blocked word is recorded, not scored
    refused = [r for r in res.rounds if r.score == float("-inf")]
    assert refused and all("coffee" in r.text for r in refused)
    assert seen == [r.text for r in res.rounds if r.score != float("-inf")]
    assert len({r.text for r in res.rounds}) == len(res.rounds)  # never the same prompt twice
