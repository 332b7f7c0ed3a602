"""The main text of a web page as sections, read with trafilatura.

trafilatura finds the article in real pages better than our tag rules (token F1 0.959 against
0.880 on the 181 pages of Zyte's article-extraction benchmark, see ``benchmarks/bench_extraction.py``).
Its XML output keeps the structure the chunker needs: ``<head rend="h2">`` headings, ``<p>``,
``<list><item>``, ``<quote>`` and ``<table><row><cell>``. Code blocks are left out, as in the rest of
the text path.
"""

from __future__ import annotations

import logging

from lxml import etree

from nlp.clean import clean_text
from nlp.models import Section

logger = logging.getLogger(__name__)

_PARAGRAPHS = ("p", "quote", "item")


def _text(node: etree._Element) -> str:
    return clean_text(" ".join(node.itertext()))


def _level(node: etree._Element) -> int:
    rend = node.get("rend") or ""
    return int(rend[1]) if len(rend) == 2 and rend[0] == "h" and rend[1] in "123456" else 2


def _add(sections: list[Section], text: str | None) -> None:
    text = clean_text(text or "")
    if text:
        sections[-1].paragraphs.append(text)


def _walk(node: etree._Element, sections: list[Section]) -> None:
    # Text can sit directly in a container or after a child (``<head>…</head>Text``): lxml keeps
    # it in ``.text`` and in each child's ``.tail``.
    _add(sections, node.text)
    for child in node:
        if isinstance(child.tag, str):
            _block(child, sections)
        _add(sections, child.tail)


def _block(node: etree._Element, sections: list[Section]) -> None:
    tag = node.tag
    if tag == "head":
        text = _text(node)
        if text:
            sections.append(Section(heading=text, level=_level(node)))
    elif tag in _PARAGRAPHS:
        if node.find(".//list") is not None:
            _walk(node, sections)
        else:
            _add(sections, _text(node))
    elif tag == "row":
        cells = (_text(c) for c in node if isinstance(c.tag, str))
        _add(sections, " | ".join(c for c in cells if c))
    elif tag in ("list", "table", "div", "main"):
        _walk(node, sections)
    elif tag not in ("code", "graphic"):
        # Inline markup (hi, ref, lb) outside a paragraph is still prose; code and images are not.
        _add(sections, _text(node))


def main_text_sections(html: str) -> list[Section]:
    """Headings and paragraphs of the page's main text; ``[]`` when trafilatura finds none."""
    import trafilatura

    try:
        xml = trafilatura.extract(html, output_format="xml", include_comments=False,
                                  include_tables=True, include_formatting=False)
    except Exception as exc:  # trafilatura raises many kinds on odd markup; the rules take over
        logger.debug("trafilatura failed: %s", exc)
        return []
    if not xml:
        return []
    try:
        root = etree.fromstring(xml.encode("utf-8"))
    except etree.XMLSyntaxError as exc:
        logger.debug("trafilatura returned unreadable XML: %s", exc)
        return []
    main = root.find("main")
    if main is None:
        return []
    sections = [Section(heading=None, level=0)]
    _walk(main, sections)
    return [s for s in sections if s.heading or s.paragraphs]
