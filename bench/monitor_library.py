"""What one refresh of the library's live view costs (`ar.py monitor` with no BOOK, redrawn
every 0.5 s): the first, which reads every book's ledger, and the next ones, which read only
the books running or whose files moved (pipeline/live.py's Watcher).

    python -m bench.monitor_library [--books 1000] [--pages 5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.books import ocr_done_book
from infra.books import Library
from pipeline.live import Watcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=1000)
    parser.add_argument("--pages", type=int, default=5, help="pages of each book")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-monitor-library-") as d:
        for n in range(args.books):
            ocr_done_book(Path(d), f"b{n:04d}", args.pages)
        watcher = Watcher(Library(Path(d)), [], None)
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            report = watcher.refresh()
            seconds.append(time.perf_counter() - start)
        assert len(report["books"]) == args.books
    print(f"{args.books} books: the first refresh {seconds[0]:.2f} s, the next ones "
          f"{' '.join(f'{s:.3f}' for s in seconds[1:])} s")


if __name__ == "__main__":
    main()
