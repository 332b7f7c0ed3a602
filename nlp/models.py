"""Data passed between the text stages (fetch → chunk → topics → combine → prompt).

All are pydantic models so that flows can put them in Prefect results and the manifest with
``model_dump()`` / ``model_dump_json()``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class Section(BaseModel):
    """A heading (None for text before the first heading) and the paragraphs under it.

    ``level`` is the heading level 1–6 (0 for the headless lead section). List items are
    paragraphs of their own.
    """

    heading: str | None = None
    level: int = 0
    paragraphs: list[str] = Field(default_factory=list)


def render_blocks(sections: list[Section]) -> list[str]:
    """Headings and paragraphs in reading order: the blocks that make up ``Article.text``."""
    blocks: list[str] = []
    for sec in sections:
        if sec.heading:
            blocks.append(sec.heading)
        blocks.extend(p for p in sec.paragraphs if p)
    return blocks


class Article(BaseModel):
    """An extracted post.

    ``text`` is the headings and paragraphs joined by blank lines (``"\\n\\n"``); chunk offsets
    index into it. When built without ``text`` it is rendered from ``sections``. ``extractor``
    names what produced the text: ``trafilatura``, ``rules`` or ``page text`` for HTML,
    ``markdown`` or ``text`` for files.
    """

    source: str
    title: str = ""
    sections: list[Section] = Field(default_factory=list)
    text: str = ""
    extractor: str = ""

    @model_validator(mode="after")
    def _fill_text(self) -> Article:
        if not self.text:
            self.text = "\n\n".join(render_blocks(self.sections))
        return self


class Chunk(BaseModel):
    """A piece of ``Article.text``: ``text == article.text[start_char:end_char]``.

    ``heading`` is the heading of the section the chunk starts in (context for the extractor),
    ``n_tokens`` the tiktoken cl100k count of ``text``.
    """

    index: int
    heading: str | None = None
    text: str
    n_tokens: int
    start_char: int
    end_char: int
    title: str = ""


class Topic(BaseModel):
    """A key phrase with its salience ``score`` (0–1, higher is more important), the chunks it
    was found in and the extractor that produced it (``"llm:<model>"``, ``"offline"``,
    ``"merged"``)."""

    phrase: str
    score: float
    chunk_indices: list[int] = Field(default_factory=list)
    extractor: str = "offline"
    variants: list[str] = Field(default_factory=list)


class TopicResult(BaseModel):
    """Topics of every chunk, which extractor produced them, tokens used and errors met.

    ``extractor`` is ``"llm:<model>"`` or ``"offline"`` (also when the endpoint failed and the
    offline extractor took over: ``errors`` then says why). ``usage`` holds
    ``prompt_tokens``/``completion_tokens``/``requests``.
    """

    topics: list[Topic] = Field(default_factory=list)
    extractor: str = "offline"
    usage: dict[str, int] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)
    n_chunks: int = 0


class ImagePrompt(BaseModel):
    """The prompt for the image generator.

    ``text`` is short and visual with the most important words first; ``negative`` is a
    comma-separated list for the unconditional branch; ``source`` says whether an LLM wrote it
    (``grounded``: built from the concepts a fixed-vocabulary model knows);
    ``usage`` holds the tokens the LLM call used (empty for templates).
    """

    text: str
    negative: str = ""
    style: str = "illustration"
    topics: list[str] = Field(default_factory=list)
    source: Literal["llm", "template", "grounded"] = "template"
    usage: dict[str, int] = Field(default_factory=dict)
    # For a model with a concept list: topic → concept and why, and the background (nlp.grounding).
    grounding: dict | None = None
