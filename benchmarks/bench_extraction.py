"""Extraction quality on the saved pages in tests/nlp_pages against examples/ground_truth.

    /work/venv/bin/python benchmarks/bench_extraction.py [--show-diff PAGE]
    python benchmarks/bench_extraction.py --extractor trafilatura   # where trafilatura is installed

``--extractor trafilatura`` scores trafilatura (``bare_extraction``, comments off) on the same HTML
pages, decoded by the same charset code, for comparison (Markdown pages are skipped).

Token-level precision/recall/F1 (bag of lower-cased word tokens, counts respected) of
``title + article text`` against the hand-labelled ground truth, per page and overall (micro:
pooled counts; macro: mean of per-page F1). Precision falls when boilerplate leaks in (menus,
comments, ads); recall falls when article text is lost.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

from nlp.fetch import fetch_article

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "tests" / "nlp_pages"
TRUTH = ROOT / "examples" / "ground_truth"
_WORD = re.compile(r"\w+", re.UNICODE)


def tokens(text: str) -> Counter:
    return Counter(w.lower() for w in _WORD.findall(text))


def prf(pred: Counter, gold: Counter) -> tuple[float, float, float, int, int, int]:
    tp = sum((pred & gold).values())
    p = tp / max(sum(pred.values()), 1)
    r = tp / max(sum(gold.values()), 1)
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f, tp, sum(pred.values()), sum(gold.values())


def extract_covercraft(page: Path) -> str | None:
    art = fetch_article(str(page))
    return art.title + "\n" + art.text


def extract_trafilatura(page: Path) -> str | None:
    import trafilatura

    from nlp.fetch import decode_bytes

    if page.suffix not in (".html", ".htm"):
        return None
    html, _ = decode_bytes(page.read_bytes())
    doc = trafilatura.bare_extraction(html, include_comments=False, include_tables=True,
                                      with_metadata=True)
    if doc is None:
        return ""
    doc = doc if isinstance(doc, dict) else doc.as_dict()
    return (doc.get("title") or "") + "\n" + (doc.get("text") or "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--show-diff", metavar="PAGE", help="print extra/missing tokens of one page")
    ap.add_argument("--extractor", choices=["covercraft", "trafilatura"], default="covercraft")
    args = ap.parse_args()
    extract = extract_covercraft if args.extractor == "covercraft" else extract_trafilatura
    rows = []
    tot_tp = tot_pred = tot_gold = 0
    t0 = time.perf_counter()
    for page in sorted(PAGES.iterdir()):
        truth = TRUTH / (page.stem + ".txt")
        if not truth.exists():
            continue
        text = extract(page)
        if text is None:
            continue
        pred = tokens(text)
        gold = tokens(truth.read_text(encoding="utf-8"))
        p, r, f, tp, n_pred, n_gold = prf(pred, gold)
        tot_tp, tot_pred, tot_gold = tot_tp + tp, tot_pred + n_pred, tot_gold + n_gold
        rows.append((page.name, p, r, f))
        if args.show_diff and args.show_diff in page.name:
            print("extra:", sorted((pred - gold).elements()))
            print("missing:", sorted((gold - pred).elements()))
    elapsed = time.perf_counter() - t0
    if not rows:
        print("no pages with ground truth found", file=sys.stderr)
        return 1
    print(f"{'page':42s} {'precision':>9s} {'recall':>7s} {'F1':>6s}")
    for name, p, r, f in rows:
        print(f"{name:42s} {p:9.3f} {r:7.3f} {f:6.3f}")
    mp = tot_tp / max(tot_pred, 1)
    mr = tot_tp / max(tot_gold, 1)
    mf = 2 * mp * mr / (mp + mr) if mp + mr else 0.0
    macro = sum(f for *_, f in rows) / len(rows)
    print(f"{'overall (micro)':42s} {mp:9.3f} {mr:7.3f} {mf:6.3f}")
    print(f"{'overall (macro F1)':42s} {'':9s} {'':7s} {macro:6.3f}")
    print(f"{len(rows)} pages in {elapsed:.2f} s ({args.extractor})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
