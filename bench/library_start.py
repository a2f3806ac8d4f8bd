"""What checking a library costs before its run: the estimate of every book.

`ar.py process --all --dry-run` on a library of OCR'd books (pages the size of Tesseract's
output: each word's box and confidence) against the local server: what a run with a budget
(a book's, or --library-budget) does before its first call, and what a dry run reports. Two
ways: page lengths as the OCR's done-marks keep them in each ledger (schema 4), and as a
ledger from before kept them (chars NULL: every page read); with --postgresql, also with the
books' ledgers imported into one PostgreSQL database (a real server, started here). Each with
`--stages correct` and with every stage (fix's share of pages comes from the OCR's doubts).

    python -m bench.library_start [--books 50] [--pages 400] [--postgresql]
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.books import ocr_done_book
from tests.conftest import ROOT
from tests.simserver import Sim


def ar(books_dir: Path, server: Sim, cache: Path, *args: str, ledger: str | None = None) -> float:
    env = {**os.environ, "AR_BOOKS_DIR": str(books_dir), "OPENROUTER_BASE_URL": server.url,
           "OPENROUTER_API_KEY": server.key, "AR_CACHE_DIR": str(cache)}
    env.pop("AR_LEDGER", None)
    if ledger:
        env["AR_LEDGER"] = ledger
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "ar.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ar.py {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
    return time.perf_counter() - start


def dry_run(books_dir: Path, server: Sim, cache: Path, *stages: str, ledger: str | None = None) -> float:
    return ar(books_dir, server, cache, "process", "--all", *stages, "--dry-run", "--json", ledger=ledger)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=50)
    parser.add_argument("--pages", type=int, default=400, help="pages of each book")
    parser.add_argument("--postgresql", action="store_true", help="also with the ledgers in PostgreSQL")
    args = parser.parse_args()
    pages = args.books * args.pages
    server = Sim()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-library-start-") as d:
            books_dir, cache = Path(d) / "books", Path(d) / "cache"
            for n in range(args.books):
                ocr_done_book(books_dir, f"b{n:04d}", args.pages, boxes=True)
            dry_run(books_dir, server, cache, "--stages", "correct")  # the price list cached, the files warm
            figures = {}
            for label, stages in (("correct", ("--stages", "correct")), ("every stage", ())):
                figures[f"{label}, lengths kept"] = dry_run(books_dir, server, cache, *stages)
            if args.postgresql:
                from tests.pgserver import PgServer

                pg = PgServer().start()
                try:
                    url = pg.new_database()
                    ar(books_dir, server, cache, "ledger", "import", "--all", ledger=url)
                    for label, stages in (("correct", ("--stages", "correct")), ("every stage", ())):
                        figures[f"{label}, PostgreSQL"] = dry_run(books_dir, server, cache, *stages, ledger=url)
                    for path in books_dir.glob("*/checkpoint.db.imported"):
                        path.rename(path.with_suffix(""))
                finally:
                    pg.stop()
            for n in range(args.books):  # as ledgers from before schema 4 left them
                with sqlite3.connect(books_dir / f"b{n:04d}" / "checkpoint.db") as db:
                    db.execute("UPDATE pages SET chars = NULL")
            for label, stages in (("correct", ("--stages", "correct")), ("every stage", ())):
                figures[f"{label}, every page read"] = dry_run(books_dir, server, cache, *stages)
    finally:
        server.stop()
    for label, seconds in figures.items():
        print(f"  {label:<28} {seconds:6.2f} s: {1000 * seconds / args.books:6.1f} ms a book, "
              f"{1e6 * seconds / pages:6.1f} us a page")
    print(f"{args.books} books of {args.pages} pages: the estimate before a run of `--stages correct`, "
          f"{1000 * figures['correct, lengths kept'] / args.books:.1f} ms a book with lengths kept "
          f"(every page read: {1000 * figures['correct, every page read'] / args.books:.1f} ms)")


if __name__ == "__main__":
    main()
