"""Topic extraction per chunk: an OpenAI-compatible LLM when configured, the offline keyphrase
extractor otherwise — and for any chunk whose LLM call failed after its retries.

The result says which produced the topics (``TopicResult.extractor`` and each
``Topic.extractor``), the tokens used and every error met, for the manifest.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, Field

from nlp.keyphrases import extract_keyphrases
from nlp.llm import LLMSettings, MalformedAnswer, StructuredCaller, Usage
from nlp.models import Chunk, Topic, TopicResult

__all__ = ["LLMSettings", "extract_topics", "extract_offline", "extract_llm"]

logger = logging.getLogger(__name__)


class _LLMTopic(BaseModel):
    phrase: str = Field(min_length=2, max_length=80, description="2–5 word noun phrase")
    salience: float = Field(ge=0.0, le=1.0, description="importance in this chunk, 0–1")


class ChunkTopics(BaseModel):
    """The schema the LLM answers with for one chunk."""

    topics: list[_LLMTopic] = Field(min_length=1, max_length=20)


_SYSTEM = (
    "You pick the key topics of one part of a blog post, to brief an illustrator drawing its "
    "cover image. Return concrete noun phrases of 1-5 words that name what the part is about "
    "(subjects, objects, places, activities), most important first, each with a salience from 0 "
    "to 1. No generic words (tips, guide, post, introduction), no full sentences. Answer with a "
    'JSON object only: {"topics": [{"phrase": "...", "salience": 0.9}, ...]}.'
)


def _messages(chunk: Chunk, top_n: int) -> list[dict[str, str]]:
    context = f"Post title: {chunk.title or '(none)'}\nSection: {chunk.heading or '(none)'}\n"
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": f"{context}Give at most {top_n} topics.\n\nText:\n{chunk.text}"},
    ]


def extract_offline(chunks: list[Chunk], top_n_per_chunk: int = 5) -> list[Topic]:
    """Statistical keyphrases of every chunk (see :mod:`nlp.keyphrases`)."""
    title = chunks[0].title if chunks else ""
    per_chunk = extract_keyphrases([(c.text, c.heading) for c in chunks], title=title,
                                   top_n=top_n_per_chunk)
    return [Topic(phrase=k.phrase, score=k.score, chunk_indices=[c.index], extractor="offline")
            for c, kps in zip(chunks, per_chunk, strict=True) for k in kps]


class _Breaker:
    """After the endpoint is found down or timing out, the remaining chunks skip it."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.reason = ""


def extract_llm(chunks: list[Chunk], llm: LLMSettings, client=None) -> TopicResult:
    """Topics of each chunk from the endpoint, ``llm.concurrency`` chunks at a time.

    Chunks whose call fails (after the client's retries, or after ``fix_attempts`` malformed
    answers) get offline topics; when the endpoint is unreachable or timing out, chunks not yet
    started skip it. ``extractor`` is ``"offline"`` if no chunk got LLM topics.
    """
    import openai

    usage = Usage()
    caller = StructuredCaller(llm, client=client, usage=usage)
    breaker = _Breaker()
    errors: list[str] = []
    lock = threading.Lock()

    def one(chunk: Chunk) -> list[Topic] | None:
        if breaker.open.is_set():
            return None
        try:
            answer = caller.call(_messages(chunk, llm.top_n_per_chunk), ChunkTopics, "chunk_topics")
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            # Unreachable or too slow after all retries: stop hammering it.
            breaker.open.set()
            msg = f"chunk {chunk.index}: {type(err).__name__}: {err}"
        except (openai.APIStatusError, MalformedAnswer) as err:
            msg = f"chunk {chunk.index}: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
            if isinstance(err, openai.AuthenticationError | openai.NotFoundError | openai.PermissionDeniedError):
                breaker.open.set()  # the same for every chunk
        else:
            seen: set[str] = set()
            topics = []
            for t in sorted(answer.topics, key=lambda t: -t.salience)[: llm.top_n_per_chunk]:
                phrase = " ".join(t.phrase.split()).strip(" .,;:")
                if phrase and phrase.lower() not in seen:
                    seen.add(phrase.lower())
                    topics.append(Topic(phrase=phrase, score=t.salience, chunk_indices=[chunk.index],
                                        extractor=llm.label))
            return topics
        logger.warning("LLM topics failed, offline extractor used: %s", msg)
        with lock:
            errors.append(msg)
        return None

    with ThreadPoolExecutor(max_workers=min(llm.concurrency, max(len(chunks), 1))) as pool:
        answers = list(pool.map(one, chunks))

    missing = [c for c, a in zip(chunks, answers, strict=True) if a is None]
    if breaker.open.is_set() and any(a is None for a in answers):
        skipped = sum(1 for a in answers if a is None) - len(errors)
        if skipped > 0:
            errors.append(f"{skipped} chunk(s) skipped the endpoint after it failed")
    offline: dict[int, list[Topic]] = {}
    if missing:
        # Offline scores are computed over the whole post so that they are comparable.
        for t in extract_offline(chunks, llm.top_n_per_chunk):
            offline.setdefault(t.chunk_indices[0], []).append(t)
    topics: list[Topic] = []
    for c, a in zip(chunks, answers, strict=True):
        topics.extend(a if a is not None else offline.get(c.index, []))
    any_llm = any(a is not None for a in answers)
    return TopicResult(topics=topics, extractor=llm.label if any_llm else "offline",
                       usage=usage.as_dict(), errors=errors, n_chunks=len(chunks))


def extract_topics(chunks: list[Chunk], llm: LLMSettings | None = None, client=None) -> TopicResult:
    """Topics of every chunk.

    ``llm`` None or unconfigured (no base URL and no ``OPENAI_API_KEY``) → offline extractor.
    ``client`` lets callers pass a ready ``openai.OpenAI`` (tests, connection reuse).
    """
    if not chunks:
        return TopicResult(extractor="offline", n_chunks=0)
    if llm is None or not llm.configured:
        topics = extract_offline(chunks, llm.top_n_per_chunk if llm else 5)
        return TopicResult(topics=topics, extractor="offline", usage={}, n_chunks=len(chunks))
    return extract_llm(chunks, llm, client=client)
