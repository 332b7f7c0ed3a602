"""Extraction on the saved pages (tests/nlp_pages) and on small HTML/Markdown snippets."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from nlp.errors import EmptyArticleError
from nlp.extract import extract_html, extract_markdown, extract_text
from nlp.fetch import decode_bytes, fetch_article

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "tests" / "nlp_pages"
TRUTH = ROOT / "examples" / "ground_truth"

# page: (title, headings that must be found, text that must be kept, boilerplate that must go)
EXPECT = {
    "remote-rituals-wordpress.html": (
        "Five Morning Rituals That Keep Remote Teams Connected",
        ["2. Coffee roulette", "5. A weekly demo with cameras on"],
        ["Rotate pairs so nobody meets", "showing up for each other"],
        ["Try ChatFlow", "We use cookies", "Leave a Reply", "Recent Posts", "Asking for a friend",
         "Posted on", "Tagged", "Skip to content", "Share this", "Onboarding a remote engineer"],
    ),
    "sourdough-cp1252.html": (
        "The Lazy Baker’s Sourdough Starter",
        ["Why a stiff starter is more forgiving", "Living with a lazy starter"],
        ["think crème fraîche, not vinegar", "Don’t panic", "24 °C", "“hooch”"],
        ["personalised ads", "Jump to recipe", "Feeding ratio", "nail polish", "Montreal bagels",
         "Claire bakes", "9 min read"],
    ),
    "balcony-tomatoes-latin1.html": (
        "Balcony tomatoes in a cold climate",
        ["Choose varieties that ripen early", "Keep the heat in"],
        ["Herr Müller", "señora García", "above 10 °C", "Grüße from the balcony"],
        ["Blog Archive", "Retired teacher", "Newer Post", "clogging", "Powered by Blogger",
         "Munich balcony since 2009"],
    ),
    "cloud-bill-no-article.html": (
        "How we cut our cloud bill by 40% without touching the code",
        [],
        ["Rightsizing the database", "The cheapest server is the one you turn off",
         "60 terabytes of forgotten Docker layers"],
        ["Start free trial", "Enjoyed this post", "Upgrading Postgres", "All rights reserved",
         "Back to all posts", "8 min read"],
    ),
    "color-palette-medium.html": (
        "The quiet power of a color palette",
        ["Two brand colours, three supporting ones", "Pick the accent last"],
        ["A red can, a blue bird", "Consistency is what turns a colour", "two neutrals and one accent"],
        ["Member-only", "--brand-primary", "4.2K Followers", "client meeting", "Figma plugins",
         "Sign in"],
    ),
    "electric-ferries-news.html": (
        "City pilots electric ferries on the harbour route",
        ["Concerns about winter service"],
        ["Two battery-powered boats", "“As long as it leaves on time", "sea trials last week"],
        ["BREAKING", "Advertisement", "New cycle bridge", "Who pays", "Most read", "312 partners",
         "Night buses", "Chidi Okafor"],
    ),
    "porto-weekend-utf8-bom.html": (
        "A slow weekend in Porto: azulejos, port cellars and the best pastel de nata",
        ["Saturday: tiles and trams", "Where to find the best pastel de nata", "Practical notes"],
        ["São Bento", "façade", "🇵🇹", "Até já!", "The Andante card"],
        ["Subscribe now", "Three days in Lisbon", "Published with Ghost", "6 min read"],
    ),
    "pandas-vectorization-tutorial.html": (
        "Speeding up pandas with vectorization: a practical guide",
        ["Why loops are slow", "When apply is fine"],
        ["With iterrows() the overhead", "run %timeit in Jupyter"],
        ["orders.iterrows():", "np.where(", "On this page", "Disqus", "20,000 data people",
         "cookie policy", "MIT licensed"],
    ),
    "newsletter-substack.html": (
        "Pricing is a product decision",
        ["Charge for the value metric", "Three tiers, one obvious choice"],
        ["Why the page with the numbers deserves as much design", "pushes teams to share one login",
         "procurement-heavy enterprise sales"],
        ["Thanks for reading", "Sign in", "Discussion about this post", "doubled our conversion",
         "Recommendations from", "Collection notice", "♡"],
    ),
    "travel-table-layout-iso8859-15.html": (
        "Cycling the Danube from Passau to Vienna",
        [],
        ["Schlögener Schlinge", "costs about 3 € a glass", "Practical tips",
         "Seven days, 330 kilometres"],
        ["Guestbook", "visitors since", "Last updated", "Touring by bicycle", "Best viewed",
         "Baltic coast"],
    ),
    "launch-checklist.md": (
        "Our product launch checklist, refined over twelve launches",
        ["Four weeks before", "Launch day", "The week after"],
        ["one-sentence story", "no amount of social media will fix that"],
        ["git tag", "indented code", "TODO", "launch-day.jpg", "Tomás Ruiz"],
    ),
}


def _f1(pred: str, gold: str) -> float:
    p, g = (Counter(w.lower() for w in re.findall(r"\w+", t)) for t in (pred, gold))
    tp = sum((p & g).values())
    prec, rec = tp / max(sum(p.values()), 1), tp / max(sum(g.values()), 1)
    return 2 * prec * rec / (prec + rec) if tp else 0.0


def _rules(name: str):
    """The tag rules alone (the fallback path) on a saved page."""
    html, _ = decode_bytes((PAGES / name).read_bytes())
    return extract_html(html, str(PAGES / name), main_text=False)


@pytest.mark.parametrize("name", sorted(n for n in EXPECT if n.endswith(".html")))
def test_saved_pages_rules(name):
    title, headings, keep, drop = EXPECT[name]
    art = _rules(name)
    assert art.title == title and art.extractor == "rules"
    found = [s.heading for s in art.sections]
    for h in headings:
        assert h in found, f"heading {h!r} missing from {found}"
    for text in keep:
        assert text in art.text, f"{text!r} lost"
    for text in drop:
        assert text not in art.text, f"boilerplate {text!r} kept"
    assert "\ufffd" not in art.text
    # The title is not repeated as the first block.
    assert not art.text.startswith(title)
    gold = (TRUTH / (Path(name).stem + ".txt")).read_text(encoding="utf-8")
    assert _f1(art.title + "\n" + art.text, gold) >= 0.95


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_saved_pages(name):
    """What a run uses: trafilatura for HTML (measured on a public benchmark, not on these pages),
    markdown-it for Markdown. Title, decoding and the bulk of the text must hold on every page."""
    title = EXPECT[name][0]
    art = fetch_article(str(PAGES / name))
    assert art.title == title
    assert art.extractor == ("markdown" if name.endswith(".md") else "trafilatura")
    assert "\ufffd" not in art.text and not art.text.startswith(title)
    gold = (TRUTH / (Path(name).stem + ".txt")).read_text(encoding="utf-8")
    assert _f1(art.title + "\n" + art.text, gold) >= 0.93


def test_text_is_blocks_joined():
    art = fetch_article(str(PAGES / "remote-rituals-wordpress.html"))
    blocks = []
    for s in art.sections:
        blocks += ([s.heading] if s.heading else []) + s.paragraphs
    assert art.text == "\n\n".join(blocks)
    # list items are paragraphs of their own
    coffee = next(s for s in art.sections if s.heading == "2. Coffee roulette")
    assert coffee.paragraphs[-1] == "Rotate pairs so nobody meets the same colleague twice in a month."


def test_archive_page_picks_the_longest_article():
    teaser = "<article><h2>Other post</h2><p>Short teaser text for another post.</p></article>"
    body = "<p>" + "Long article text about mountain huts and alpine hiking. " * 10 + "</p>"
    html = f"<html><body>{teaser}<article><h1>Huts</h1>{body}</article>{teaser}</body></html>"
    art = extract_html(html, main_text=False)
    assert art.title == "Huts" and "teaser" not in art.text


def test_class_words_do_not_over_match():
    html = ("<html><body><div class='page has-sidebar'><div class='post-header'><h1>Downloads</h1>"
            "</div><div class='thread-head'><p>"
            + "A shadow fell over the download page while we read about headless browsers. " * 5
            + "</p></div></div><div class='sidebar'><p>Sidebar text here.</p></div></body></html>")
    art = extract_html(html, main_text=False)
    assert "shadow fell" in art.text and "Sidebar" not in art.text


def test_hidden_and_inline_code():
    html = ("<html><body><main><h1>T</h1><p>Run <code>pip install covercraft</code> to start, then "
            "read the manual carefully before you change any of the defaults in the file.</p>"
            "<p style='display: none'>Hidden tracking text.</p><p hidden>Also hidden.</p>"
            "<p>Second paragraph of the post with enough words to count as article text.</p>"
            "</main></body></html>")
    art = extract_html(html, main_text=False)
    assert "pip install covercraft" in art.text and "hidden" not in art.text.lower()


def test_inline_wrappers_around_blocks_keep_paragraphs():
    html = ("<html><body><table><tr><td><font face='Verdana'><h2>Old page</h2>First paragraph "
            "with enough words to be the article text of this old page.<p>Second paragraph, also "
            "long enough to be article text on its own line.<p>Third one, the last paragraph of "
            "the old page.</font></td></tr></table></body></html>")
    art = extract_html(html, main_text=False)
    assert art.sections[0].paragraphs == [
        "First paragraph with enough words to be the article text of this old page.",
        "Second paragraph, also long enough to be article text on its own line.",
        "Third one, the last paragraph of the old page.",
    ]


def test_empty_html_raises_clear_error():
    with pytest.raises(EmptyArticleError, match="JavaScript"):
        extract_html("<html><body><div id='root'></div><script>render()</script></body></html>")


def test_markdown_details():
    md = ("Intro paragraph before any heading, with *emphasis* and a [link](http://x.y).\n\n"
          "Setext heading\n--------------\n\n> A quoted line\n> continues here.\n\n"
          "| a | b |\n|---|---|\n| cell one | cell two |\n\n~~~\nfenced tilde code\n~~~\n")
    art = extract_markdown(md, "post.md")
    assert art.title == ""
    assert art.sections[0].paragraphs[0] == (
        "Intro paragraph before any heading, with emphasis and a link.")
    assert art.sections[1].heading == "Setext heading"
    assert "A quoted line continues here." in art.sections[1].paragraphs
    assert "cell one" in art.text and "fenced tilde" not in art.text
    with pytest.raises(EmptyArticleError):
        extract_markdown("```\nonly code\n```\n")


def test_plain_text():
    art = extract_text("My title\n\nFirst paragraph.\nStill first.\n\nSecond paragraph.")
    assert art.title == "My title"
    assert art.sections[0].paragraphs == ["First paragraph. Still first.", "Second paragraph."]


# --- never empty on a page that has an article ------------------------------------------------

_POST = "".join(
    f"<p>Paragraph {i} of the post says something about heat pumps, tariffs and winter, "
    f"with commas, clauses and enough words to read as prose.</p>" for i in range(6))


@pytest.mark.parametrize("wrapper", [
    "<div class='content-sidebar-wrap'>{}</div>",          # a theme's layout wrapper
    "<div class='widget Blog' id='Blog1'>{}</div>",         # Blogger wraps the post in a widget
    "<div class='site-header-overlay'>{}</div>",
    "<div class='pagination-container'>{}</div>",
    "<form action='/search'><input name='q'>{}</form>",     # ASP.NET pages sit inside one <form>
])
def test_rules_never_drop_the_block_with_the_text(wrapper):
    html = ("<html><body><nav><a href='/'>Home</a></nav>"
            + wrapper.format(_POST) + "<footer>© 2025 Example</footer></body></html>")
    art = extract_html(html, main_text=False)
    assert "Paragraph 0 of the post" in art.text and "Paragraph 5 of the post" in art.text
    assert "Home" not in art.text and "2025" not in art.text


def test_rules_pick_the_article_around_the_prose_not_the_longest():
    related = "<article class='card'>" + "<h3>Another post with a long title</h3>" * 40 + "</article>"
    html = f"<html><body><article><h1>Heat pumps</h1>{_POST}</article>{related}</body></html>"
    art = extract_html(html, main_text=False)
    assert "Paragraph 3" in art.text and "Another post" not in art.text


def test_falls_back_to_rules_then_page_text(monkeypatch):
    html = f"<html><body><div class='widget'>{_POST}</div></body></html>"
    assert extract_html(html).extractor == "trafilatura"
    monkeypatch.setattr("nlp.extract.main_text_sections", lambda html: [])
    assert extract_html(html).extractor == "rules"
    monkeypatch.setattr("nlp.extract._collect_rules", lambda root: [])
    art = extract_html(html)
    assert art.extractor == "page text" and "Paragraph 5 of the post" in art.text


@pytest.mark.parametrize("html", [
    "<html><body><nav><a href='/'>Home</a> <a href='/blog'>Blog</a></nav></body></html>",
    "<html><body><h1>Members only</h1><form action='/login'><label>Email <input name='e'></label>"
    "<label>Password <input type='password'></label><button>Sign in to keep reading</button>"
    "</form><p>Not a member? Join now.</p></body></html>",
])
def test_menus_and_login_walls_are_not_articles(html):
    with pytest.raises(EmptyArticleError, match="no article text"):
        extract_html(html)


@pytest.mark.parametrize("charset, text", [
    ("shift_jis", "東京の屋上に太陽光パネルを設置する費用と手順について、実際の見積もりをもとに説明します。"),
    ("windows-1251", "Солнечные панели на крыше окупаются за семь лет, если правильно выбрать инвертор и угол."),
    ("iso-8859-7", "Τα ηλιακά πάνελ στην ταράτσα αποσβένονται σε επτά χρόνια με τη σωστή γωνία."),
])
def test_other_languages_and_declared_encodings(charset, text):
    page = (f"<html><head><meta charset='{charset}'><title>Post</title></head><body><article>"
            + f"<h1>Post</h1><p>{text}</p><p>{text}</p><p>{text}</p></article></body></html>")
    html, enc = decode_bytes(page.encode(charset))
    art = extract_html(html)
    assert text in art.text and "\ufffd" not in art.text
