"""How close `ar.py process` gets to the provider's limit, and what ar itself costs per page.

(a) Throughput: `ar.py process BOOK --stages correct --workers 32`, the whole command timed
    (start-up, price list, resolving nothing, every page, the cost report), against the
    local server with a latency of L = 200 ms. With C = 32 calls in flight the limit is
    C / L = 160 pages/s; the figure is pages/s as a fraction of it. Goal >= 0.9.
(b) Overhead at L = 0: the CPU time (user + system, from wait4) of the `ar.py` process per
    corrected page, the server's CPU apart (it runs in its own process). Marginal: the
    difference between a large and a small book over the difference in pages, so start-up
    (imports, price list) is not spread over the pages. Goal <= 2 ms.

    python -m bench.throughput [--pages 2000] [--repeat 3]
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


def run_process(book_id: str, books_dir: Path, server: Sim, cache: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the ar process) of one `ar.py process ... --stages correct`."""
    env = {**os.environ, "AR_BOOKS_DIR": str(books_dir), "OPENROUTER_BASE_URL": server.url,
           "OPENROUTER_API_KEY": server.key, "AR_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "ar.py"), "process", book_id, "--stages", "correct",
                             "--workers", str(WORKERS)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"ar.py process {book_id} exited {proc.returncode}: {proc.stderr.read().decode()}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def throughput(tmp: Path, pages: int, repeat: int) -> float:
    server = Sim("--latency-ms", str(LATENCY_S * 1000))
    try:
        limit = WORKERS / LATENCY_S
        rates = []
        for i in range(repeat):
            ocr_done_book(tmp / "books", f"tp{i}", pages)
            wall, cpu = run_process(f"tp{i}", tmp / "books", server, tmp / "cache")
            rates.append(pages / wall)
            print(f"  run {i + 1}: {pages} pages in {wall:.2f} s = {pages / wall:.1f} pages/s "
                  f"({pages / wall / limit:.3f} of {limit:.0f}); ar CPU {cpu:.2f} s")
        return statistics.median(rates) / limit
    finally:
        server.stop()


def overhead(tmp: Path, small: int, large: int, repeat: int) -> float:
    server = Sim()
    try:
        per_page = []
        for i in range(repeat):
            cpu = {}
            for n in (small, large):
                ocr_done_book(tmp / "books", f"oh{i}-{n}", n)
                _, cpu[n] = run_process(f"oh{i}-{n}", tmp / "books", server, tmp / "cache")
            per_page.append((cpu[large] - cpu[small]) / (large - small) * 1e3)
            print(f"  run {i + 1}: ar CPU {cpu[small]:.2f} s for {small} pages, {cpu[large]:.2f} s for "
                  f"{large}: {per_page[-1]:.2f} ms a page (whole run: {cpu[large] / large * 1e3:.2f} ms a page)")
        return statistics.median(per_page)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as d:
        tmp = Path(d)
        print(f"(a) throughput, L = {LATENCY_S * 1000:.0f} ms, --workers {WORKERS}")
        ratio = throughput(tmp, args.pages, args.repeat)
        print("(b) ar's CPU per page at L = 0")
        cpu_ms = overhead(tmp, 100, args.pages, args.repeat)
    print(f"throughput: {ratio:.3f} of C/L = {WORKERS / LATENCY_S:.0f} pages/s (goal >= 0.9); "
          f"ar CPU per page at L = 0: {cpu_ms:.2f} ms (goal <= 2)")


if __name__ == "__main__":
    main()
