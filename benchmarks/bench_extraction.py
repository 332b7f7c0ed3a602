"""Article extraction on a public benchmark: ours, trafilatura and the page's full text, side by side.

    git clone https://github.com/scrapinghub/article-extraction-benchmark /tmp/aeb
    python benchmarks/bench_extraction.py /tmp/aeb [--show PAGE_ID] [--worst 10]

The data set is Zyte's article-extraction benchmark: 181 real news and blog pages (``html/*.html.gz``)
with the article body marked by hand (``ground-truth.json``). No one on this project wrote them.

Each page's bytes are decoded the way ``covercraft`` decodes a download (``nlp.fetch.decode_bytes``),
then given to:

- ``covercraft``: ``nlp.extract.extract_html``, what a run uses (the article text, title excluded);
- ``rules``: the same without trafilatura, the fallback path alone;
- ``trafilatura``: ``trafilatura.extract`` with its defaults (comments off, tables on);
- ``full text``: every text node of ``<body>`` outside scripts and styles (the floor).

The score is token F1: the bag of lower-cased word tokens (``\\w+``, counts respected) of the
extracted text against the hand-marked body, per page; the table prints the mean over pages (macro)
and pooled counts (micro), and how many pages came back empty although their article is not.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bs4 import BeautifulSoup

from nlp.errors import EmptyArticleError
from nlp.extract import extract_html
from nlp.fetch import decode_bytes

_WORD = re.compile(r"\w+", re.UNICODE)


def tokens(text: str) -> Counter:
    return Counter(w.lower() for w in _WORD.findall(text))


def prf(pred: Counter, gold: Counter) -> tuple[float, float, float, int, int, int]:
    """Precision, recall, F1 and the counts behind them (true positives, predicted, gold)."""
    tp = sum((pred & gold).values())
    n_pred, n_gold = sum(pred.values()), sum(gold.values())
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f, tp, n_pred, n_gold


def ours(html: str, main_text: bool = True) -> str:
    try:
        return extract_html(html, main_text=main_text).text
    except EmptyArticleError:
        return ""


def rules(html: str) -> str:
    return ours(html, main_text=False)


def trafilatura_text(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, include_comments=False, include_tables=True) or ""


def full_text(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(["script", "style", "noscript", "template"]):
        tag.decompose()
    return (soup.body or soup).get_text(" ")


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "covercraft": ours,
    "rules": rules,
    "trafilatura": trafilatura_text,
    "full text": full_text,
}


def load_pages(root: Path) -> list[tuple[str, str, str]]:
    """(page id, decoded HTML, hand-marked article body) for every page of the benchmark."""
    truth = json.loads((root / "ground-truth.json").read_text(encoding="utf-8"))
    pages = []
    for page_id in sorted(truth):
        raw = gzip.decompress((root / "html" / f"{page_id}.html.gz").read_bytes())
        html, _ = decode_bytes(raw)
        pages.append((page_id, html, truth[page_id].get("articleBody", "")))
    return pages


def data_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def score(pages, extract: Callable[[str], str]) -> dict:
    rows = []
    for page_id, html, gold_text in pages:
        pred, gold = tokens(extract(html)), tokens(gold_text)
        rows.append((page_id, *prf(pred, gold)))
    tp = sum(r[4] for r in rows)
    n_pred = sum(r[5] for r in rows)
    n_gold = sum(r[6] for r in rows)
    micro_p, micro_r = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return {
        "rows": rows,
        "precision": sum(r[1] for r in rows) / len(rows),
        "recall": sum(r[2] for r in rows) / len(rows),
        "f1": sum(r[3] for r in rows) / len(rows),
        "micro_f1": 2 * micro_p * micro_r / (micro_p + micro_r) if micro_p + micro_r else 0.0,
        "empty": sum(1 for r in rows if r[5] == 0 and r[6] > 0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="checkout of scrapinghub/article-extraction-benchmark")
    ap.add_argument("--only", choices=sorted(EXTRACTORS), action="append",
                    help="score only these extractors (repeatable)")
    ap.add_argument("--worst", type=int, default=0, metavar="N",
                    help="list the N pages where covercraft scores lowest")
    ap.add_argument("--show", metavar="PAGE_ID", help="print covercraft's extra and missing tokens")
    args = ap.parse_args(argv)
    if not (args.data / "ground-truth.json").is_file():
        print(f"error: {args.data} has no ground-truth.json: pass a checkout of "
              "scrapinghub/article-extraction-benchmark", file=sys.stderr)
        return 2
    pages = load_pages(args.data)
    names = args.only or list(EXTRACTORS)
    print(f"data set: scrapinghub/article-extraction-benchmark @ {data_commit(args.data)}, "
          f"{len(pages)} pages")
    print(f"{'extractor':12s} {'F1':>6s} {'P':>6s} {'R':>6s} {'micro F1':>9s} {'empty':>6s} {'s':>6s}")
    results = {}
    for name in names:
        t0 = time.perf_counter()
        res = results[name] = score(pages, EXTRACTORS[name])
        print(f"{name:12s} {res['f1']:6.3f} {res['precision']:6.3f} {res['recall']:6.3f} "
              f"{res['micro_f1']:9.3f} {res['empty']:6d} {time.perf_counter() - t0:6.1f}")
    if args.worst and "covercraft" in results:
        others = {n: {r[0]: r[3] for r in res["rows"]} for n, res in results.items()}
        print(f"\nworst {args.worst} pages for covercraft (F1 of each extractor):")
        for row in sorted(results["covercraft"]["rows"], key=lambda r: r[3])[:args.worst]:
            cells = "  ".join(f"{n} {others[n][row[0]]:.3f}" for n in names)
            print(f"  {row[0][:16]}  {cells}")
    if args.show:
        page = next((p for p in pages if p[0].startswith(args.show)), None)
        if page is None:
            print(f"error: no page id starts with {args.show}", file=sys.stderr)
            return 2
        pred, gold = tokens(ours(page[1])), tokens(page[2])
        print("extra:", " ".join(sorted((pred - gold).elements())))
        print("missing:", " ".join(sorted((gold - pred).elements())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
