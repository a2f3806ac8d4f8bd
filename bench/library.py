"""How close one run of several books gets to the provider's limit, with and without a library budget.

`ar.py process b1 b2 ... --stages correct --workers 32`, the whole command timed, against the
local server with a latency of L = 200 ms: with C = 32 calls in flight for all the books
together (one client), the limit is C / L = 160 pages/s; the figure is pages/s over it. Then
the same with `--library-budget` (large enough never to stop): every call then also reserves
and settles in library.db (three short SQLite transactions), which is what that costs.

    python -m bench.library [--books 4] [--pages 500] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.books import ocr_done_book
from tests.conftest import ROOT
from tests.simserver import Sim

WORKERS = 32
LATENCY_S = 0.2


def run(books_dir: Path, ids: list[str], server: Sim, cache: Path, extra: tuple[str, ...]) -> float:
    env = {**os.environ, "AR_BOOKS_DIR": str(books_dir), "OPENROUTER_BASE_URL": server.url,
           "OPENROUTER_API_KEY": server.key, "AR_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "ar.py"), "process", *ids, "--stages", "correct",
                        "--workers", str(WORKERS), *extra], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"ar.py process exited {r.returncode}: {r.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=4)
    parser.add_argument("--pages", type=int, default=500, help="pages of each book")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    limit = WORKERS / LATENCY_S
    total = args.books * args.pages
    rates: dict[str, list[float]] = {"no library budget": [], "--library-budget": []}
    server = Sim("--latency-ms", str(LATENCY_S * 1000), "--chunk-tokens", "0")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-library-") as d:
            tmp = Path(d)
            for i in range(args.repeat):
                for label, extra in (("no library budget", ()), ("--library-budget", ("--library-budget", "1000"))):
                    books_dir = tmp / f"{i}-{len(extra)}"
                    ids = [f"b{n}" for n in range(args.books)]
                    for book_id in ids:
                        ocr_done_book(books_dir, book_id, args.pages)
                    wall = run(books_dir, ids, server, tmp / "cache", extra)
                    rates[label].append(total / wall)
                    print(f"  run {i + 1}, {label}: {args.books} books, {total} pages in {wall:.2f} s = "
                          f"{rates[label][-1]:.1f} pages/s ({rates[label][-1] / limit:.3f} of {limit:.0f})")
    finally:
        server.stop()
    print("; ".join(f"{label}: {statistics.median(r) / limit:.3f} of C/L" for label, r in rates.items())
          + f" (median of {args.repeat}; {args.books} books of {args.pages} pages, C = {WORKERS}, "
          f"L = {LATENCY_S * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
