"""Pipelining: `ar.py process --stages ocr,correct` against the two stages run one after the other.

The book: the sample book's five page scans, repeated to PAGES pages. Its OCR is timed
first, alone (`--stages ocr`), then its correction alone (`--stages correct`) against the
local server with a latency L chosen so that correction takes about as long as the OCR did
(L = T_ocr * workers / pages). Then a fresh copy runs both stages in one command. Every
figure is the wall time of the whole `ar.py` command. If a page went to correction only
once the OCR of the whole book was done, the one command would take the sum; if pages flow,
about the longer of the two. Goal: one command <= 0.6 of the sum.

    python -m bench.pipelining [--pages 40]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import ROOT
from tests.simserver import Sim
from tools.make_sample import make as make_sample

SAMPLE = ROOT / "books" / "sample"
WORKERS = 2  # few calls in flight: the last page's correction (one L) is the tail past the OCR


def ar(*args: str, env: dict) -> float:
    """Wall seconds of one `ar.py` command (which must succeed)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "ar.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ar.py {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return time.perf_counter() - start


def scans(folder: Path, pages: int) -> Path:
    make_sample(SAMPLE)  # its page images, if not made yet
    sample = sorted((SAMPLE / "source").glob("page_*.png"))
    folder.mkdir()
    for n in range(pages):
        shutil.copy(sample[n % len(sample)], folder / f"scan_{n + 1:04d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipelining-") as d:
        tmp = Path(d)
        folder = scans(tmp / "scans", args.pages)
        env = {**os.environ, "AR_BOOKS_DIR": str(tmp / "books"), "AR_CACHE_DIR": str(tmp / "cache"),
               "AR_WORKERS": str(WORKERS)}
        for book in ("apart", "together"):
            ar("add", str(folder), "--id", book, env=env)
        ocr = ar("process", "apart", "--stages", "ocr", env=env)
        latency_ms = ocr * WORKERS / args.pages * 1000
        server = Sim("--latency-ms", f"{latency_ms:.0f}")
        try:
            env.update(OPENROUTER_BASE_URL=server.url, OPENROUTER_API_KEY=server.key)
            correct = ar("process", "apart", "--stages", "correct", env=env)
            together = ar("process", "together", "--stages", "ocr,correct", env=env)
        finally:
            server.stop()
    print(f"  {args.pages} pages, {WORKERS} workers, L = {latency_ms:.0f} ms; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"  ocr alone {ocr:.2f} s, correct alone {correct:.2f} s, sum {ocr + correct:.2f} s; "
          f"ocr,correct in one command {together:.2f} s")
    print(f"pipelining: one command / the stages one after the other = {together / (ocr + correct):.2f} "
          f"(goal <= 0.6)")


if __name__ == "__main__":
    main()
