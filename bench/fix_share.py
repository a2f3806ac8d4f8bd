"""The share of pages sent to fix, and why: the sample book and the real scans, each through
`ar.py process` against the local server (its faithful corrector; no fault).

Fix costs several times what correct does a page (a dearer model, the OCR text and the first
pass in its prompt, and the page's image), so how many pages go there is most of what
a book costs beyond its first pass. A page goes to fix when the first pass was unsure, gave
no valid answer, or changed more than a correction explains (pipeline/faithful.py), or when
the OCR read over 5% of its words under confidence 60. The figures: pages sent over pages
with text, per book and for all together, each reason's count (a page may have several),
and what a page cost in correct and in fix (the default models, the local server's prices).

    python -m bench.fix_share [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from infra.books import Book
from pipeline.faithful import ocr_doubts
from pipeline.registry import STAGES
from tests.conftest import REAL_SCANS, ROOT
from tests.simserver import Sim
from tools.make_sample import make as make_sample

SOURCES = {"sample": ROOT / "books" / "sample" / "source", "c02-22": REAL_SCANS / "c02-22.pdf",
           "linn": REAL_SCANS / "linn.pdf", "multipage": REAL_SCANS / "multipage.pdf",
           "cardinal": REAL_SCANS / "cardinal.pdf"}


def ar(*args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "ar.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ar.py {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def reasons(ocr: dict, corrected: dict) -> list[str]:
    """Why fix took the page (pipeline/fix.py's needs_fix, spelled out)."""
    why = [k for k in ("unsure", "invalid_answer", "rejected_text") if corrected.get(k)]
    return why + (["ocr_doubts"] if ocr_doubts(ocr) else [])


def book_figures(book: Book, cost: dict) -> dict:
    pages = range(1, book.page_count() + 1)
    ocr = {p: STAGES["ocr"].read_page(book, p) for p in pages}
    with_text = [p for p in pages if ocr[p]["text"].strip()]
    sent = {p: reasons(ocr[p], STAGES["correct"].read_page(book, p)) for p in with_text}
    sent = {p: why for p, why in sent.items() if why}
    by_reason: dict[str, int] = {}
    for why in sent.values():
        for k in why:
            by_reason[k] = by_reason.get(k, 0) + 1
    spent = {s: cost["stages"].get(s, {}).get("cost_usd", 0.0) for s in ("correct", "fix")}
    return {"pages": len(with_text), "to_fix": sorted(sent), "share": len(sent) / len(with_text) if with_text else 0,
            "reasons": by_reason, "cost_usd": spent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    make_sample(ROOT / "books" / "sample")  # its page images, if not made yet
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-fix-share-") as d:
        tmp = Path(d)
        server = Sim()
        env = {**os.environ, "AR_BOOKS_DIR": str(tmp / "books"), "AR_CACHE_DIR": str(tmp / "cache"),
               "OPENROUTER_BASE_URL": server.url, "OPENROUTER_API_KEY": server.key}
        try:
            for name, source in SOURCES.items():
                print(f"  {name} ...", file=sys.stderr, flush=True)
                ar("add", str(source), "--id", name, env=env)
                ar("process", name, env=env)
                cost = json.loads(ar("cost", name, "--json", env=env))
                figures[name] = book_figures(Book(tmp / "books" / name), cost)
        finally:
            server.stop()
            shutil.rmtree(tmp / "books", ignore_errors=True)
    pages = sum(f["pages"] for f in figures.values())
    sent = sum(len(f["to_fix"]) for f in figures.values())
    per_page = {"correct": sum(f["cost_usd"]["correct"] for f in figures.values()) / pages,
                "fix": sum(f["cost_usd"]["fix"] for f in figures.values()) / max(1, sent)}
    report = {"books": figures, "pages": pages, "to_fix": sent, "share": sent / pages,
              "cost_per_page_usd": per_page}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name, f in figures.items():
        print(f"{name:10} {len(f['to_fix'])}/{f['pages']} pages to fix ({f['share']:.0%}) {f['to_fix']} "
              f"reasons {f['reasons']}")
    print(f"pages sent to fix: {sent}/{pages} = {sent / pages:.0%}; a page costs ${per_page['correct']:.5f} "
          f"in correct, ${per_page['fix']:.5f} in fix ({per_page['fix'] / per_page['correct']:.1f}x)")


if __name__ == "__main__":
    main()
