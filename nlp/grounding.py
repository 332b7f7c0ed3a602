"""From a post's topics to concepts a model can draw, offline: topic → concept, and why.

A model with a fixed concept list (the pictogram model ships ``concepts.json``: each concept's name
and keywords) draws only what is on that list, so a free-text prompt such as "rooftop solar
installation costs" gives it nothing to hold on to. Grounding maps the ranked topics to concepts:

1. a topic that *is* a concept's name ("hot beverage") or one of its keywords ("coffee");
2. else a word of the topic that is a name or a keyword ("solar panels" → "sun" via "solar");

with singular and plural forms treated alike. Of a topic's words, the one that fewest concepts share
is tried first; a word several concepts share goes to the earlier-listed one. Up to ``max_concepts``
distinct concepts are taken from the best-ranked topics, and a background colour from the topics'
colour words (else white; never a colour that is part of a chosen concept's name). The result says,
per concept, which topic and which word led to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nlp.keyphrases import lemma
from nlp.models import Topic

# The background colours the pictogram model knows (its training captions name these).
BACKGROUNDS = ("white", "black", "grey", "red", "orange", "yellow", "green", "teal", "blue", "navy",
               "purple", "pink")
_COLOUR_WORDS = {**{c: c for c in BACKGROUNDS}, "gray": "grey", "violet": "purple", "turquoise": "teal",
                 "crimson": "red", "gold": "yellow", "golden": "yellow", "dark blue": "navy"}
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")


def _key(text: str) -> tuple[str, ...]:
    return tuple(lemma(w) for w in _WORD.findall(text.lower()))


@dataclass(frozen=True)
class Match:
    """One concept chosen for the prompt: the topic it came from and why."""

    topic: str
    concept: str
    why: str


@dataclass(frozen=True)
class Grounding:
    matches: list[Match] = field(default_factory=list)
    background: str = "white"
    background_why: str = "no colour named: the default"
    unmatched: list[str] = field(default_factory=list)  # topics that named nothing the model knows

    @property
    def concepts(self) -> list[str]:
        return [m.concept for m in self.matches]

    def prompt(self) -> str:
        """A caption in the form the model was trained on: "a rocket and a laptop on blue"."""
        if not self.matches:
            return ""
        phrases = [_article(c) for c in self.concepts]
        subject = " and ".join(phrases)
        return subject if self.background == "white" else f"{subject} on {self.background}"

    def record(self) -> dict:
        """For the manifest: topic → concept and why, and the background."""
        return {"concepts": [vars(m) for m in self.matches], "background": self.background,
                "background_why": self.background_why, "unmatched_topics": list(self.unmatched)}


def _article(phrase: str) -> str:
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"


class ConceptIndex:
    """Names and keywords of a model's concepts, looked up by their normalised words."""

    def __init__(self, concepts: Sequence[tuple[str, Sequence[str]]]):
        self.names = [name for name, _ in concepts]
        self._by_name: dict[tuple[str, ...], int] = {}
        self._by_keyword: dict[tuple[str, ...], list[int]] = {}
        for i, (name, keywords) in enumerate(concepts):
            self._by_name.setdefault(_key(name), i)
            for kw in {_key(k) for k in keywords} | {_key(name)}:
                if kw:
                    self._by_keyword.setdefault(kw, []).append(i)

    @classmethod
    def from_file(cls, path: str | Path) -> ConceptIndex:
        """``concepts.json``: a list of ``{"name": ..., "keywords": [...]}``."""
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls([(r["name"], r.get("keywords", [])) for r in rows])

    def __len__(self) -> int:
        return len(self.names)

    def _best(self, key: tuple[str, ...]) -> int | None:
        """The earliest-listed concept with this keyword (indices are stored in list order)."""
        found = self._by_keyword.get(key)
        return found[0] if found else None

    def lookup(self, phrase: str) -> tuple[int, str] | None:
        """(concept index, why) for a topic phrase, or None."""
        key = _key(phrase)
        if not key:
            return None
        if key in self._by_name:
            return self._by_name[key], f"the topic is the concept's name {self.names[self._by_name[key]]!r}"
        whole = self._best(key)
        if whole is not None:
            return whole, f"the topic {phrase!r} is a keyword of {self.names[whole]!r}"
        # Single words of the topic, the rarest first (a specific noun beats "guide", "tips").
        words = sorted({(w,) for w in key}, key=lambda k: len(self._by_keyword.get(k, ())) or 10**6)
        for word in words:
            hit = self._best(word)
            if hit is not None:
                return hit, f"the word {word[0]!r} of {phrase!r} is a keyword of {self.names[hit]!r}"
        return None


def ground(topics: Sequence[Topic | str], index: ConceptIndex, max_concepts: int = 2) -> Grounding:
    """Concepts (at most ``max_concepts``, distinct) and a background for ranked ``topics``."""
    phrases = [t.phrase if isinstance(t, Topic) else str(t) for t in topics]
    matches: list[Match] = []
    unmatched: list[str] = []
    for phrase in phrases:
        if len(matches) >= max_concepts:
            break
        hit = index.lookup(phrase)
        if hit is None:
            unmatched.append(phrase)
            continue
        concept, why = index.names[hit[0]], hit[1]
        if concept not in {m.concept for m in matches}:
            matches.append(Match(phrase, concept, why))
    background, background_why = "white", "no colour named: the default"
    # A colour that is part of a chosen concept ("red circle") is the drawing's, not the background's:
    # a red circle on red would vanish.
    own = {w for m in matches for w in _WORD.findall(m.concept.lower())}
    for phrase in phrases:
        text = phrase.lower()
        colour = next((c for word, c in _COLOUR_WORDS.items()
                       if re.search(rf"\b{word}\b", text) and word not in own), None)
        if colour:
            background, background_why = colour, f"the topic {phrase!r} names {colour}"
            break
    return Grounding(matches, background, background_why, unmatched)
