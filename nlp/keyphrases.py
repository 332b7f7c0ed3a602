"""Offline keyphrase extraction: statistical, no model, deterministic.

Candidates are 1–3-word runs between stopwords, punctuation and vague words (RAKE's idea);
each candidate of a chunk is scored by

    score = frequency × specificity × length × heading/title boost × position × spread

- frequency: ``1 + log(count in chunk)`` times ``1 + 0.5 log(count in document)`` — a theme of
  the post outranks a word that happens to repeat in one paragraph;
- specificity: how rare its words are in general English. With no corpus on the machine we use
  the rank of the word in the cl100k BPE vocabulary — BPE merges frequent words first, so " the"
  has rank 279 and " espresso" 66521; words split into several tokens count as rare;
- length: phrases of 2–3 words that recur (or appear in a heading/title) beat their single words;
- boosts for words in the chunk's heading and the article's title, and earlier positions.

Normalisation is "lemma-ish": lower case, possessives and plural -s/-es/-ies removed, so
"Meetings" and "meeting" count as one; the phrase shown is the most frequent surface form.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from dataclasses import dataclass, field

from nlp.stopwords import BREAKERS, META_WORDS, STOPWORDS, WEAK_NOUNS

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’&+\-]*[A-Za-z0-9+]|[A-Za-z0-9]|[^\sA-Za-z0-9]")


def lemma(word: str) -> str:
    """Lower-cased, possessive and plural endings removed: "Companies'" → "company"."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    w = w.strip("'")
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("sses", "shes", "ches", "xes")):
        return w[:-2]
    if len(w) > 5 and w.endswith("oes"):  # tomatoes, potatoes, heroes
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "ous", "ics")):
        return w[:-1]
    return w


def phrase_key(phrase: str) -> tuple[str, ...]:
    """Normalised content tokens of a phrase (stopwords dropped), for matching and merging."""
    toks = [lemma(t) for t in _TOKEN.findall(phrase) if t[0].isalnum()]
    return tuple(t for t in toks if t not in STOPWORDS) or tuple(toks)


@functools.cache
def specificity(word: str) -> float:
    """0.3–1.0: how unusual ``word`` is in general English (cl100k BPE rank as a proxy)."""
    from nlp.chunk import _encoding

    toks = _encoding().encode(" " + word.lower())
    if len(toks) > 1:
        return 1.0
    rank = toks[0]
    return max(0.3, min(1.0, (math.log(max(rank, 2)) / math.log(40000)) ** 1.5))


def _is_breaker(tok: str) -> bool:
    low = tok.lower().replace("’", "'")
    if not tok[0].isalnum():
        return True
    if low in STOPWORDS or low in BREAKERS or low in META_WORDS:
        return True
    if low.isdigit() and not (len(low) == 4 and low[:2] in ("19", "20")):
        return True
    # Adverbs ("quickly") break phrases; a few -ly nouns do not.
    if low.endswith("ly") and len(low) > 5 and low not in {"family", "supply", "assembly", "butterfly", "anomaly", "italy", "july", "monopoly", "rally"}:
        return True
    return len(low) == 1 and not low.isdigit()


@dataclass
class _Cand:
    key: tuple[str, ...]
    surfaces: Counter = field(default_factory=Counter)
    count: int = 0
    first_pos: float = 1.0
    # Surfaces seen where a capital means a name, not the start of a sentence or heading.
    mid_surfaces: Counter = field(default_factory=Counter)


def _candidates(text: str) -> dict[tuple[str, ...], _Cand]:
    """All 1–3-grams of non-breaking tokens in ``text`` with counts and first relative position."""
    return _scan(text)[0]


def _scan(text: str, caseless_prefix: int = 0) -> tuple[dict[tuple[str, ...], _Cand], Counter]:
    """Candidates of ``text`` and the counts of every non-breaking word (lemmas).

    Capitals in the first ``caseless_prefix`` characters (a Title Case title) say nothing about
    names."""
    matches = list(_TOKEN.finditer(text))
    tokens = [m.group(0) for m in matches]
    # A token starts a sentence/heading when a newline or sentence punctuation precedes it.
    initial = [i == 0 or m.start() < caseless_prefix or "\n" in text[matches[i - 1].end():m.start()]
               or tokens[i - 1] in {".", "!", "?", ":", "…", "\"", "“"} for i, m in enumerate(matches)]
    n = max(len(tokens), 1)
    cands: dict[tuple[str, ...], _Cand] = {}
    words: Counter = Counter()
    run: list[tuple[int, str]] = []

    def flush() -> None:
        for i in range(len(run)):
            for size in (1, 2, 3):
                if i + size > len(run):
                    break
                words = run[i:i + size]
                key = tuple(lemma(w) for _, w in words)
                if size == 1 and key[0] in WEAK_NOUNS:
                    continue
                if all(k in WEAK_NOUNS for k in key):
                    continue
                # A phrase does not end in a weak noun's modifier only ("time" in "time management"
                # is fine, but a 3-gram may not start with a weak noun: "day remote work").
                if size == 3 and key[0] in WEAK_NOUNS:
                    continue
                c = cands.setdefault(key, _Cand(key))
                c.count += 1
                surface = " ".join(w for _, w in words)
                c.surfaces[surface] += 1
                if not initial[words[0][0]]:
                    c.mid_surfaces[surface] += 1
                c.first_pos = min(c.first_pos, words[0][0] / n)
        run.clear()

    for i, tok in enumerate(tokens):
        if _is_breaker(tok):
            flush()
        else:
            run.append((i, tok))
            words[lemma(tok)] += 1
    flush()
    return cands, words


def _display(c: _Cand) -> str:
    """Most frequent surface form, lower-cased except acronyms and words capitalised where a
    capital is not just the start of a sentence or heading ("Porto", "Python loop")."""
    surface, _ = c.surfaces.most_common(1)[0]
    mids = [s.split() for s in c.mid_surfaces]
    out = []
    for i, w in enumerate(surface.split()):
        if len(w) > 1 and w.isupper():
            out.append(w)
        elif w[:1].isupper() and mids and all(m[i][:1].isupper() for m in mids):
            out.append(w)
        else:
            out.append(w.lower())
    # "homeowner's" → "homeowner": a topic names the thing, not its owner.
    out[-1] = re.sub(r"['’]s$", "", out[-1])
    return " ".join(out)


def _contains(longer: tuple[str, ...], shorter: tuple[str, ...]) -> bool:
    n = len(shorter)
    return any(longer[i:i + n] == shorter for i in range(len(longer) - n + 1))


@dataclass
class Keyphrase:
    """A scored phrase of one chunk."""

    phrase: str
    key: tuple[str, ...]
    score: float


def extract_keyphrases(chunks: list[tuple[str, str | None]], title: str = "",
                       top_n: int = 5) -> list[list[Keyphrase]]:
    """Top ``top_n`` keyphrases for each ``(text, heading)`` chunk, scores normalised so the
    best phrase of the document scores 1.0.

    Overlapping picks inside one chunk are avoided: a phrase sharing a word with an already
    chosen phrase is skipped, so a chunk yields "sourdough starter" and not also "starter" or
    "stiff starter".
    """
    # The title is the author's own summary: it counts as text of the first chunk.
    scans = [_scan(f"{title}.\n{text}", len(title) + 1) if i == 0 and title else _scan(text)
             for i, (text, _) in enumerate(chunks)]
    doc_count: Counter = Counter()
    doc_words: Counter = Counter()
    chunk_freq: Counter = Counter()
    for cands, words in scans:
        doc_words.update(words)
        for key, c in cands.items():
            doc_count[key] += c.count
            chunk_freq[key] += 1
    title_words = {lemma(t) for t in _TOKEN.findall(title) if t[0].isalnum()} - STOPWORDS
    title_keys = set(_candidates(title)) if title else set()
    n_chunks = max(len(chunks), 1)

    results: list[list[Keyphrase]] = []
    scored_all: list[list[tuple[float, _Cand]]] = []
    for (_text, heading), (cands, words) in zip(chunks, scans, strict=True):
        head_words = {lemma(t) for t in _TOKEN.findall(heading or "") if t[0].isalnum()} - STOPWORDS
        head_keys = set(_candidates(heading)) if heading else set()

        def word_score(w: str, words: Counter = words, head_words: set = head_words) -> float:
            score = (1.0 + math.log(max(words[w], 1))) * (1.0 + 0.5 * math.log(max(doc_words[w], 1)))
            score *= specificity(w)
            if w in title_words:
                score *= 1.3
            if w in head_words:
                score *= 1.15
            return score * (0.5 if w in WEAK_NOUNS else 1.0)

        scored: list[tuple[float, _Cand]] = []
        for key, c in cands.items():
            n = len(key)
            # A multi-word phrase must recur or be named by the title/heading: one-off word
            # pairs are mostly accidents of syntax ("hydration ferments").
            if n > 1 and doc_count[key] < 2 and key not in title_keys and key not in head_keys:
                continue
            # RAKE-like: a phrase is worth the sum of its words, damped by its length.
            score = sum(word_score(w) for w in key) / math.sqrt(n)
            if n > 1 and key in title_keys:
                score *= 1.5
            if n > 1 and key in head_keys:
                score *= 1.3
            position = 1.1 - 0.2 * c.first_pos
            spread = 1.0 + 0.3 * (chunk_freq[key] - 1) / n_chunks
            scored.append((score * position * spread, c))
        scored.sort(key=lambda sc: (-sc[0], sc[1].key))
        scored_all.append(scored)

    best = max((s[0][0] for s in scored_all if s), default=1.0) or 1.0
    for scored in scored_all:
        chosen: list[Keyphrase] = []
        by_key = {c.key: (score, c) for score, c in scored}
        for score, c in scored:
            # Prefer a longer phrase holding this one when it scores nearly as well:
            # "coffee chats" over "chats".
            supers = [by_key[k] for k in by_key if len(k) > len(c.key) and _contains(k, c.key)
                      and by_key[k][0] >= 0.6 * score]
            if supers:
                score, c = max(supers, key=lambda sc: (sc[0], sc[1].key))
            # ...but a three-word phrase whose two-word edge scores nearly as well is trimmed:
            # "electric ferries" rather than "pilots electric ferries".
            if len(c.key) == 3:
                edges = [by_key[k] for k in (c.key[:2], c.key[1:]) if k in by_key
                         and by_key[k][0] >= 0.75 * score]
                if edges:
                    score, c = max(edges, key=lambda sc: (sc[0], sc[1].key))
            # Distinct topics only: a phrase sharing a word with a better one repeats it
            # ("stiff starter" after "sourdough starter").
            ks = set(c.key)
            if any(ks & set(k.key) for k in chosen):
                continue
            chosen.append(Keyphrase(_display(c), c.key, round(score / best, 4)))
            if len(chosen) >= top_n:
                break
        results.append(chosen)
    return results
