"""The text half of Covercraft: from a blog post to an image prompt.

Stages (one Prefect task each in ``flows/``), all plain functions on pydantic models
(:mod:`nlp.models`), no I/O except fetching:

- :func:`nlp.fetch.fetch_article` — http(s) URL or local .html/.md/.txt → :class:`~nlp.models.Article`
  (SSRF-checked, pinned connections, size/time limits, charset handling; :mod:`nlp.extract`);
- :func:`nlp.chunk.chunk_article` — heading- and sentence-aware chunks of ≤ N cl100k tokens;
- :func:`nlp.topics.extract_topics` — per-chunk topics from an OpenAI-compatible LLM, or the
  offline keyphrase extractor (:mod:`nlp.keyphrases`) when none is configured or it fails;
- :func:`nlp.combine.combine_topics` — merged, ranked topics (lexical or embedding similarity);
- :func:`nlp.prompt.build_prompt`, :func:`nlp.prompt.moderate`, :func:`nlp.prompt.optimise_prompt`.

Errors are :class:`nlp.errors.NlpError` subclasses whose message is one actionable line.
"""
