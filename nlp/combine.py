"""Merge the per-chunk topics of a post into a short ranked list.

1. Topics are visited from the highest score down; each joins the first cluster whose
   representative it matches, or starts a new cluster. Matching is semantic when an ``embed``
   function is given (cosine similarity of the phrase embeddings ≥ ``threshold``), lexical
   otherwise: same normalised key ("Meetings" = "meeting"), one key contained in the other
   ("starter" ⊂ "sourdough starter"), or stem Jaccard ≥ 0.5 ("remote teams" ~ "remote team
   members"). Exact key matches always merge, with or without ``embed``.
2. A cluster's phrase is its best-scored member, or a longer member that contains it and scores
   at least half as much — "sourdough starter" is a better brief than "starter".
3. Rank by salience × coverage: ``max member score × (0.5 + 0.5 √(chunks covered / chunks))``,
   normalised so the first topic scores 1.0, and keep the top N.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from nlp.keyphrases import phrase_key
from nlp.models import Topic, TopicResult

_SUFFIX = re.compile(r"(ations?|ments?|ings?|ers?|ed|ness|ity|al|ly)$")


def _stem(token: str) -> str:
    """Crude stem for overlap tests only ("marketing", "marketer" → "market")."""
    s = _SUFFIX.sub("", token) if len(token) > 5 else token
    return s if len(s) >= 3 else token


def lexical_match(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two normalised phrase keys name the same or an overlapping topic."""
    if not a or not b:
        return False
    if tuple(a) == tuple(b):
        return True
    sa, sb = {_stem(t) for t in a}, {_stem(t) for t in b}
    if sa <= sb or sb <= sa:
        return True
    return len(sa & sb) / len(sa | sb) >= 0.5


class _Cluster:
    def __init__(self, topic: Topic, key: tuple[str, ...], vec: np.ndarray | None):
        self.members: list[tuple[Topic, tuple[str, ...]]] = [(topic, key)]
        self.key = key
        self.vec = vec

    def add(self, topic: Topic, key: tuple[str, ...]) -> None:
        self.members.append((topic, key))

    def representative(self) -> Topic:
        # Members of the same key are one phrase seen in several chunks: sum their weight.
        by_key: dict[tuple[str, ...], list[Topic]] = {}
        for t, k in self.members:
            by_key.setdefault(k, []).append(t)
        best_key = self.key
        best = max(t.score for t in by_key[best_key])
        for k, ts in by_key.items():
            if k != best_key and set(self.key) <= set(k) and len(k) > len(best_key) \
                    and max(t.score for t in ts) >= 0.5 * best:
                best_key = k
        rep = max(by_key[best_key], key=lambda t: t.score)
        return rep

    def merged(self, n_chunks: int) -> Topic:
        rep = self.representative()
        chunks = sorted({i for t, _ in self.members for i in t.chunk_indices})
        salience = max(t.score for t, _ in self.members)
        coverage = len(chunks) / max(n_chunks, 1)
        variants = []
        for t, _ in self.members:
            if t.phrase.lower() != rep.phrase.lower() and t.phrase.lower() not in {v.lower() for v in variants}:
                variants.append(t.phrase)
        extractors = {t.extractor for t, _ in self.members}
        return Topic(phrase=rep.phrase, score=salience * (0.5 + 0.5 * math.sqrt(min(coverage, 1.0))),
                     chunk_indices=chunks,
                     extractor=rep.extractor if len(extractors) == 1 else "+".join(sorted(extractors)),
                     variants=variants)


def combine_topics(
    result_or_topics: TopicResult | Sequence[Topic],
    top_n: int = 6,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    threshold: float = 0.85,
) -> list[Topic]:
    """Merged, ranked topics (at most ``top_n``; scores in (0, 1], the first 1.0).

    ``embed(phrases) -> float array [len(phrases), dim]`` switches merging to semantic
    similarity (e.g. the core's CLIP text tower); ``threshold`` is the cosine above which two
    phrases are one topic.
    """
    if top_n < 1:
        raise ValueError(f"top_n={top_n}: keep at least 1 topic (text.top_topics)")
    if isinstance(result_or_topics, TopicResult):
        topics = list(result_or_topics.topics)
        n_chunks = result_or_topics.n_chunks
    else:
        topics = list(result_or_topics)
        n_chunks = 0
    topics = [t for t in topics if t.phrase.strip()]
    if not topics:
        return []
    n_chunks = n_chunks or len({i for t in topics for i in t.chunk_indices}) or 1
    topics.sort(key=lambda t: (-t.score, t.phrase.lower()))
    keys = [phrase_key(t.phrase) for t in topics]

    vecs: np.ndarray | None = None
    if embed is not None:
        vecs = np.asarray(embed([t.phrase for t in topics]), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(topics):
            raise ValueError(f"embed returned shape {vecs.shape}; expected [{len(topics)}, dim]")
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-8)

    clusters: list[_Cluster] = []
    for i, (topic, key) in enumerate(zip(topics, keys, strict=True)):
        vec = vecs[i] if vecs is not None else None
        home = None
        for c in clusters:
            if key == c.key or any(key == k for _, k in c.members):
                home = c
                break
            if vec is not None and c.vec is not None:
                if float(vec @ c.vec) >= threshold:
                    home = c
                    break
            elif lexical_match(key, c.key):
                home = c
                break
        if home is None:
            clusters.append(_Cluster(topic, key, vec))
        else:
            home.add(topic, key)

    merged = [c.merged(n_chunks) for c in clusters]
    merged.sort(key=lambda t: (-t.score, t.phrase.lower()))
    top = merged[0].score or 1.0
    return [t.model_copy(update={"score": round(t.score / top, 4)}) for t in merged[:top_n]]
