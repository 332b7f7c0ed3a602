"""Article extraction from HTML, Markdown and plain text.

HTML goes down a chain and the first step that finds an article wins (``Article.extractor``):

1. ``trafilatura``: the page's main text from trafilatura (:mod:`nlp.main_text`), with the
   subheadings it drops (styled ``<div>`` lines above a paragraph) put back from step 2;
2. ``rules``: our BeautifulSoup rules. Drop never-text markup (scripts, styles, code blocks) and
   boilerplate by tag, ARIA role and class/id words (cookie banners, ads, comments, share bars,
   related posts), never the block that holds most of the page's prose or a wrapper around it;
   take the content root (the ``<article>`` around that prose, ``<main>``, or the densest block)
   and walk it in document order into headings, paragraphs and list items;
3. ``page text``: every sentence-like block of the page, so a page with an article is never empty.

A result counts as an article from about 20 words (100 letters) up; less is a menu or a login
wall, and :class:`EmptyArticleError` says so. The title comes from the page's metadata and
headings (see :func:`extract_html`). Markdown is rendered to HTML with markdown-it-py (CommonMark)
and walked like step 2's root; code blocks are dropped like in HTML.
"""

from __future__ import annotations

import logging
import re

from bs4 import BeautifulSoup, Comment, Doctype, NavigableString, Tag

from nlp.clean import clean_text
from nlp.errors import EmptyArticleError
from nlp.main_text import main_text_sections
from nlp.models import Article, Section

logger = logging.getLogger(__name__)

# Elements whose content is never article prose.
_DROP_TAGS = (
    "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed",
    "form", "button", "input", "select", "textarea", "label", "pre", "code", "video", "audio",
    "map", "dialog", "head", "link", "meta",
)
# Boilerplate containers (outside and inside the content root).
_BOILERPLATE_TAGS = ("nav", "aside", "menu")
_BOILERPLATE_ROLES = {
    "navigation", "complementary", "contentinfo", "banner", "search", "dialog", "alertdialog",
    "menu", "menubar", "toolbar", "alert",
}
# class/id words marking boilerplate. Matched against whole words of class/id (split on - _ and
# case changes) so that "ad" never matches "head" or "download".
_BOILERPLATE_WORDS = {
    "ad", "ads", "adsbygoogle", "advert", "advertisement", "advertising", "adslot", "adunit",
    "sponsor", "sponsored", "promo", "promoted", "banner", "cookie", "cookies", "consent", "gdpr",
    "cmp", "comment", "comments", "disqus", "respond", "reply", "replies", "share", "sharing",
    "social", "newsletter", "subscribe", "subscription", "signup", "related", "recommended",
    "popular", "trending", "breadcrumb", "breadcrumbs", "sidebar", "widget", "popup", "modal",
    "overlay", "footer", "masthead", "navbar", "nav", "menu", "pagination", "pager", "tags",
    "tagcloud", "byline", "author", "bio", "meta", "toc", "skip", "outbrain", "taboola",
    "paywall", "toolbar", "cta", "donate", "disclaimer", "copyright", "legal", "syndication",
    "header",
}
# Weak boilerplate words lose against a content word ("article-meta" goes, "meta-content" stays).
_WEAK_WORDS = {"meta", "author", "bio", "byline", "tags", "toc", "banner", "widget", "print"}
_CONTENT_WORDS = {"content", "article", "body", "story", "main", "text", "prose"}
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_LEAF_BLOCKS = ("p", "li", "dd", "dt", "blockquote", "figcaption", "td", "th", "summary")
_BLOCKS = set(_HEADINGS) | set(_LEAF_BLOCKS) | {
    "div", "section", "article", "main", "ul", "ol", "dl", "table", "tbody", "thead", "tr",
    "figure", "header", "footer", "details", "hr", "br", "body", "html", "center", "address",
}
_BLOCK_LIST = sorted(_BLOCKS - {"br"})
_WORD_SPLIT = re.compile(r"[-_\s]+|(?<=[a-z])(?=[A-Z])")


def _attr_words(tag: Tag) -> set[str]:
    values: list[str] = []
    for name in ("class", "id"):
        v = tag.get(name)
        if isinstance(v, list):
            values.extend(v)
        elif v:
            values.append(str(v))
    words: set[str] = set()
    for v in values:
        words.update(w.lower() for w in _WORD_SPLIT.split(v) if w)
    return words


def _is_hidden(tag: Tag) -> bool:
    if tag.has_attr("hidden") or tag.get("aria-hidden") == "true":
        return True
    style = str(tag.get("style") or "").replace(" ", "").lower()
    return "display:none" in style or "visibility:hidden" in style


def _is_boilerplate(tag: Tag) -> bool:
    if tag.name in _BOILERPLATE_TAGS:
        return True
    if str(tag.get("role") or "").lower() in _BOILERPLATE_ROLES:
        return True
    if _is_hidden(tag):
        return True
    words = _attr_words(tag)
    hits = words & _BOILERPLATE_WORDS
    if not hits:
        return False
    return not (words & _CONTENT_WORDS and hits <= _WEAK_WORDS)


def _strip(soup: BeautifulSoup) -> None:
    """Remove HTML comments, never-text elements and boilerplate, in place.

    No rule removes the block that holds most of the page's prose (found before any boilerplate
    goes) or an element around it: a page-wide ``<form>``, or a wrapper whose class says "sidebar"
    or "widget", loses its own markup, not the post inside it.
    """
    for node in soup.find_all(string=lambda s: isinstance(s, (Comment, Doctype))):
        node.extract()
    for tag in soup.find_all([t for t in _DROP_TAGS if t != "form"]):
        # Inline <code> inside a sentence is part of the prose ("run `pip install`") only when it
        # is short; block code lives in <pre> and goes.
        if tag.name == "code" and tag.find_parent("pre") is None and len(tag.get_text()) <= 40:
            tag.unwrap()
            continue
        if not getattr(tag, "decomposed", False):
            tag.decompose()
    body = soup.body or soup
    prose = _density_root(body)
    protected = {id(prose)} | {id(p) for p in prose.parents}
    for form in soup.find_all("form"):
        if id(form) in protected:
            form.unwrap()
        elif not getattr(form, "decomposed", False):
            form.decompose()
    for tag in list(soup.find_all(True)):
        if getattr(tag, "decomposed", False) or tag.name in ("html", "body", "article", "main"):
            continue
        if id(tag) in protected:
            continue
        if tag.name in ("header", "footer"):
            # Site header/footer go; inside the post a <header> holds its title, a <footer> tags.
            if tag.name == "footer" or tag.find_parent(["article", "main"]) is None:
                if not tag.find(["article", "main"]):
                    tag.decompose()
            continue
        if not _is_boilerplate(tag):
            continue
        # Like the <header> tag: a "header" block inside the post holds its title and standfirst.
        if _attr_words(tag) & _BOILERPLATE_WORDS == {"header"} and tag.find_parent(["article", "main"]):
            continue
        # A class like "page has-sidebar" on a wrapper must not take the post with it.
        if tag.name not in _BOILERPLATE_TAGS and tag.find(["article", "main"]) is not None:
            continue
        tag.decompose()


def _text_len(tag: Tag) -> int:
    return len(clean_text(tag.get_text(" ")))


def _link_len(tag: Tag) -> int:
    return sum(len(clean_text(a.get_text(" "))) for a in tag.find_all("a"))


_INLINE = {"a", "em", "strong", "b", "i", "u", "span", "small", "mark", "abbr", "cite", "q",
           "sub", "sup", "time", "code", "s", "del", "ins", "font", "br"}


def _own_text_len(tag: Tag) -> int:
    """Text directly in ``tag`` (its strings and inline children), not in nested blocks."""
    parts = []
    for child in tag.children:
        if isinstance(child, NavigableString):
            parts.append(str(child))
        elif isinstance(child, Tag) and child.name in _INLINE:
            parts.append(child.get_text(" "))
    return len(clean_text(" ".join(parts)))


def _density_root(body: Tag) -> Tag:
    """The block whose paragraphs hold the most non-link text (a small readability).

    A ``<p>``-like block credits its parent fully and its grandparent half; a ``<div>`` holding
    text directly (old ``<br><br>`` layouts) credits itself and its parent. A candidate's score
    is scaled by ``1 - link density``. Falls back to ``body``.
    """
    scores: dict[int, float] = {}
    nodes: dict[int, Tag] = {}
    for node in body.find_all(["p", "li", "blockquote", "pre", "td", "div", "section"]):
        if node.name in ("div", "section", "td"):
            n = _own_text_len(node)
            start = node
        else:
            n = _text_len(node)
            start = node.parent
        if n < 25:
            continue
        # Commas mark sentences of prose rather than menus.
        text = node.get_text()
        s = 1.0 + min(n / 100.0, 3.0 if start is node.parent else 30.0) + min(text.count(","), 30) * 0.5
        parent = start
        for weight in (1.0, 0.5):
            if not isinstance(parent, Tag) or parent.name in ("html", "[document]"):
                break
            scores[id(parent)] = scores.get(id(parent), 0.0) + s * weight
            nodes[id(parent)] = parent
            parent = parent.parent
    best, best_score = body, 0.0
    for key, score in scores.items():
        node = nodes[key]
        total = _text_len(node) or 1
        score *= 1.0 - min(_link_len(node) / total, 1.0)
        if score > best_score:
            best, best_score = node, score
    return best


def _content_root(soup: BeautifulSoup) -> Tag:
    body = soup.body or soup
    articles = [a for a in body.find_all("article") if _text_len(a) >= 200]
    if articles:
        # Archive pages list many <article> teasers and posts end with <article> cards of related
        # posts: the post is the article around the page's main prose, else the longest one.
        prose = _density_root(body)
        around = [a for a in articles if a is prose or a in prose.parents]
        return around[-1] if around else max(articles, key=_text_len)
    for cand in (body.find("main"), body.find(attrs={"role": "main"})):
        if isinstance(cand, Tag) and _text_len(cand) >= 200:
            return cand
    return _density_root(body)


def _inline_text(node: Tag | NavigableString) -> str:
    if isinstance(node, NavigableString):
        return str(node)
    parts: list[str] = []
    for child in node.descendants:
        if isinstance(child, NavigableString):
            parts.append(str(child))
        elif child.name == "br":
            parts.append(" ")
    return "".join(parts)


# Post metadata lines that sit inside the content root ("8 min read", "Posted on", "By Jane").
_META_LINE = re.compile(
    r"\b\d+\s*(?:min|mins|minutes?)\s+read\b|^(?:posted|filed|published|updated|written)\b"
    r"|^last (?:updated|modified)\b"
    r"|^by\s+\S+(?:\s+\S+)?\s*(?:[·|,–—-]|$)|\b\d+\s+comments?\b",
    re.I,
)


def _is_meta_line(text: str) -> bool:
    return len(text.split()) <= 16 and bool(_META_LINE.search(text))


class _Collector:
    """Walks a content root in document order and fills sections."""

    def __init__(self) -> None:
        self.sections: list[Section] = [Section(heading=None, level=0)]
        self._inline: list[str] = []

    def flush(self) -> None:
        text = clean_text("".join(self._inline))
        self._inline = []
        if text and not _is_meta_line(text):
            self.sections[-1].paragraphs.append(text)

    def heading(self, text: str, level: int) -> None:
        self.flush()
        text = clean_text(text)
        if text:
            self.sections.append(Section(heading=text, level=level))

    def paragraph(self, text: str) -> None:
        self.flush()
        text = clean_text(text)
        if text and not _is_meta_line(text):
            self.sections[-1].paragraphs.append(text)

    def walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                self._inline.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name
            if name in _HEADINGS:
                self.heading(_inline_text(child), int(name[1]))
            elif name in _LEAF_BLOCKS and not child.find(_BLOCK_LIST):
                text = clean_text(_inline_text(child))
                links = sum(len(clean_text(a.get_text(" "))) for a in child.find_all("a"))
                # A short paragraph made of links ("Jump to recipe · Print") is navigation.
                if name == "p" and text and links >= 0.8 * len(text) and len(text.split()) < 12:
                    self.flush()
                    continue
                self.paragraph(text)
            elif name in ("br", "hr"):
                self.flush()
            elif name in _BLOCKS or name in _LEAF_BLOCKS:
                self.flush()
                self.walk(child)
                self.flush()
            elif child.find(_BLOCK_LIST):
                # An inline wrapper around blocks (<font> around a whole old-style page): walk
                # through it; its own text joins the running paragraph.
                self.walk(child)
            else:
                # Inline element (a, em, strong, span, …): part of the running paragraph.
                self._inline.append(_inline_text(child))
        # Text that trails directly in a block belongs to that block.

    def result(self) -> list[Section]:
        self.flush()
        return [s for s in self.sections if s.heading or s.paragraphs]


def _meta_title(soup: BeautifulSoup) -> str:
    for attrs in ({"property": "og:title"}, {"name": "og:title"}, {"name": "twitter:title"}):
        tag = soup.find("meta", attrs=attrs)
        if isinstance(tag, Tag) and tag.get("content"):
            return clean_text(str(tag["content"]))
    return ""


_TITLE_SUFFIX = re.compile(r"\s+[|–—·»:~/-]{1,3}\s+[^|–—·»:~/]{1,40}$")


def extract_html(html: str, source: str = "", *, main_text: bool = True) -> Article:
    """Extract title and sections from an HTML document.

    The text comes from trafilatura (:mod:`nlp.main_text`); when it finds nothing, from the tag rules
    of this module; when those find nothing either, from every paragraph of the page. ``Article.
    extractor`` says which one it was. Title: ``og:title`` (or ``twitter:title``), else the post's
    first ``<h1>``, else ``<title>`` with a trailing " | Site name" removed; a heading equal to the
    title is not repeated as a section. ``main_text=False`` skips trafilatura (the rules alone).
    Raises :class:`EmptyArticleError` when the page has no article text.
    """
    soup = BeautifulSoup(html, "html.parser")
    meta_title = _meta_title(soup)
    title_tag = soup.find("title")
    doc_title = clean_text(title_tag.get_text()) if isinstance(title_tag, Tag) else ""
    standfirst = _standfirst(soup, {meta_title, _TITLE_SUFFIX.sub("", doc_title)})
    _strip(soup)
    root = _content_root(soup)
    # An <h1> outside the post is usually the site's name: then <title> names the post better.
    h1 = root.find("h1")
    h1_text = clean_text(_inline_text(h1)) if isinstance(h1, Tag) else ""
    any_h1 = soup.find("h1")
    title = (meta_title or h1_text or _TITLE_SUFFIX.sub("", doc_title) or doc_title
             or (clean_text(_inline_text(any_h1)) if isinstance(any_h1, Tag) else ""))

    rules = _collect_rules(root)
    extractor, sections = "trafilatura", main_text_sections(html) if main_text else []
    if _is_article(sections):
        sections = _restore_subheadings(sections, rules)
    else:
        extractor, sections = "rules", rules
    if not _is_article(sections):
        extractor, sections = "page text", _whole_page(html)
    sections = _drop_title(sections, {title, h1_text})
    # A subtitle that sat beside the title, outside the content root, leads the text.
    if standfirst and sections and not any(standfirst in p for s in sections for p in s.paragraphs):
        if sections[0].heading is None:
            sections[0].paragraphs.insert(0, standfirst)
        else:
            sections.insert(0, Section(heading=None, level=0, paragraphs=[standfirst]))
    if not _is_article(sections):
        raise EmptyArticleError(
            f"no article text found in {source or 'the page'}: it may need JavaScript to render; "
            "save the rendered page as HTML or pass the post as a Markdown/text file"
        )
    logger.debug("extracted %s with %s", source or "the page", extractor)
    return Article(source=source, title=title, sections=sections, extractor=extractor)


def _collect_rules(root: Tag) -> list[Section]:
    collector = _Collector()
    collector.walk(root)
    return collector.result()


def _is_subheading(text: str) -> bool:
    return len(text.split()) <= 10 and not text.endswith((".", "!", "?", ":", ";", ","))


def _restore_subheadings(main: list[Section], rules: list[Section]) -> list[Section]:
    """Put back the subheadings trafilatura drops (a styled ``<div>`` or short line above a
    paragraph): a short line the rules found right before a paragraph that both extractors kept
    becomes that paragraph's heading. The chunker and topics read headings, so they matter."""
    blocks: list[tuple[str, int]] = []
    for sec in rules:
        if sec.heading:
            blocks.append((sec.heading, sec.level or 2))
        blocks.extend((p, 0) for p in sec.paragraphs)
    kept = {s.heading for s in main if s.heading} | {p for s in main for p in s.paragraphs}
    heading_before: dict[str, tuple[str, int]] = {}
    for (text, level), (after, _) in zip(blocks, blocks[1:], strict=False):
        if text not in kept and after in kept and _is_subheading(text):
            heading_before[after] = (text, level or 3)
    if not heading_before:
        return main
    out: list[Section] = []
    for sec in main:
        out.append(Section(heading=sec.heading, level=sec.level))
        for p in sec.paragraphs:
            if p in heading_before and out[-1].paragraphs:
                text, level = heading_before[p]
                out.append(Section(heading=text, level=level))
            out[-1].paragraphs.append(p)
    return out


def _chars(text: str) -> int:
    """Letters and digits, the measure of text length that holds for languages without spaces."""
    return sum(1 for c in text if c.isalnum())


def _is_article(sections: list[Section]) -> bool:
    """A menu ("Home · Blog") or a login wall ("Members only. Email, Password, Sign in") is not."""
    return sum(_chars(p) for s in sections for p in s.paragraphs) >= _MIN_ARTICLE_CHARS


# Fewer letters than this in paragraphs (about 20 English words) is not a post, whichever
# extractor found them.
_MIN_ARTICLE_CHARS = 100
# The last resort keeps sentences, not menu items: blocks of at least this many letters.
_PAGE_TEXT_MIN_BLOCK_CHARS = 35


def _whole_page(html: str) -> list[Section]:
    """Last resort: the page's sentence-like blocks in order, parsed afresh so that no rule has
    dropped any of them."""
    soup = BeautifulSoup(html, "html.parser")
    root = soup.body or soup
    for tag in root.find_all(["script", "style", "noscript", "template", "svg", "pre", "button",
                              "select", "textarea", "label", "nav"]):
        tag.decompose()
    collector = _Collector()
    collector.walk(root)
    sections = []
    for sec in collector.result():
        paragraphs = [p for p in sec.paragraphs if _chars(p) >= _PAGE_TEXT_MIN_BLOCK_CHARS]
        if paragraphs:
            sections.append(Section(heading=sec.heading, level=sec.level, paragraphs=paragraphs))
    return sections


_STANDFIRST_WORDS = {"subtitle", "standfirst", "dek", "deck", "excerpt", "lede", "strapline",
                     "subheading", "subhead", "summary", "intro"}


def _standfirst(soup: BeautifulSoup, titles: set[str]) -> str:
    """The subtitle printed right after the post's ``<h1>`` (Substack's ``h3.subtitle``, a
    news standfirst), found before boilerplate removal can take the title's header with it."""
    titles = {clean_text(t).casefold() for t in titles if t}
    for h1 in soup.find_all("h1"):
        if clean_text(_inline_text(h1)).casefold() not in titles:
            continue
        for sib in h1.find_next_siblings(limit=2):
            if not isinstance(sib, Tag) or sib.name not in ("h2", "h3", "h4", "p", "div"):
                continue
            text = clean_text(_inline_text(sib))
            marked = bool(_attr_words(sib) & _STANDFIRST_WORDS)
            if 20 <= len(text) <= 300 and (marked or sib.name in ("h2", "h3")) \
                    and not sib.find(["a", "time"]):
                return text
        return ""
    return ""


def _drop_title(sections: list[Section], titles: set[str]) -> list[Section]:
    """The post's title is not a section: remove a heading or paragraph that repeats it among
    the first blocks (keeping that section's paragraphs under the previous heading)."""
    titles = {clean_text(t).casefold() for t in titles if t}
    for i, sec in enumerate(sections[:3]):
        if sec.heading and clean_text(sec.heading).casefold() in titles:
            rest = sections[:i] + sections[i + 1:]
            if sec.paragraphs:
                if i > 0:
                    rest[i - 1].paragraphs.extend(sec.paragraphs)
                else:
                    rest.insert(0, Section(heading=None, level=0, paragraphs=sec.paragraphs))
            return [s for s in rest if s.heading or s.paragraphs]
        if sec.paragraphs and clean_text(sec.paragraphs[0]).casefold() in titles:
            sec.paragraphs.pop(0)
            return [s for s in sections if s.heading or s.paragraphs]
    return sections


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n(?:---|\.\.\.)\s*\n", re.S)
_FM_TITLE = re.compile(r"^title\s*:\s*(.+?)\s*$", re.M)


def extract_markdown(text: str, source: str = "") -> Article:
    """Extract title and sections from Markdown (CommonMark + YAML front matter).

    Title: front matter ``title:``, else the first ``# heading``. Fenced/indented code blocks,
    images and raw HTML comments are dropped; links keep their text.
    """
    from markdown_it import MarkdownIt

    text = text.lstrip("\ufeff")
    title = ""
    m = _FRONT_MATTER.match(text)
    if m:
        t = _FM_TITLE.search(m.group(1))
        if t:
            title = t.group(1).strip().strip("'\"")
        text = text[m.end():]
    html = MarkdownIt("commonmark").enable("table").render(text)
    soup = BeautifulSoup(html, "html.parser")
    for img in soup.find_all("img"):
        img.decompose()
    _strip_code(soup)
    collector = _Collector()
    collector.walk(soup)
    sections = collector.result()
    if not title and sections and sections[0].level == 1 and sections[0].heading:
        title = sections[0].heading
    sections = _drop_title(sections, {title})
    if not any(s.paragraphs for s in sections):
        raise EmptyArticleError(
            f"no text found in {source or 'the Markdown document'}: it has no paragraphs outside "
            "code blocks; check that the file is the post itself"
        )
    return Article(source=source, title=title, sections=sections, extractor="markdown")


def _strip_code(soup: BeautifulSoup) -> None:
    for node in soup.find_all(string=lambda s: isinstance(s, Comment)):
        node.extract()
    for tag in soup.find_all(["pre", "script", "style"]):
        tag.decompose()
    for tag in soup.find_all("code"):
        if len(tag.get_text()) <= 40:
            tag.unwrap()
        else:
            tag.decompose()


def extract_text(text: str, source: str = "") -> Article:
    """Plain text: blank-line separated paragraphs; a short first line without a full stop is
    the title."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    paras = [clean_text(p) for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if p]
    title = ""
    if paras and len(paras[0]) <= 120 and not paras[0].endswith((".", "!", "?")):
        title = paras.pop(0)
    if not paras:
        raise EmptyArticleError(f"{source or 'the text'} is empty: pass a file with the post's text")
    return Article(source=source, title=title, sections=[Section(paragraphs=paras)], extractor="text")
