"""What turning pages upright and levelling them adds to the OCR of a page, in seconds.

One page at a time (one tesseract process, OMP_THREAD_LIMIT=1, as the OCR stage runs one per
core), on two page sets: the sample book (books/sample/source, made by tools.make_sample if
missing: pages skewed by up to 1.5 degrees, so most are levelled) and
tests/data/real-scans/multipage.pdf rendered at 300 dpi by infra.sources.import_source.
For each page, the best of RUNS of:
  - bare:   `tesseract PAGE stdout -l eng tsv` on the scan as it is (what ar did before);
  - osd:    Tesseract's OSD on the page at half size, as ar runs it (PGM encoding included);
  - skew:   loading the page, its ink copy and the projection-profile search;
  - ar:     pipeline.ocr.ocr_page, all of it (load, OSD, skew, the turned copy, OCR).
Prints the mean per page of each and what ar adds to bare, in seconds and percent.

    .venv/bin/python -m bench.ocr_orientation
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra.sources import import_source
from pipeline import orientation
from pipeline.ocr import _load, _skew, ocr_page, run_tesseract

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "books" / "sample" / "source"
MULTIPAGE = ROOT / "tests" / "data" / "real-scans" / "multipage.pdf"
RUNS = 2


def best(fn, runs: int = RUNS) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def measure(label: str, pages: list[Path]) -> None:
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    rows = []
    for page in pages:
        bare, _ = best(lambda: subprocess.run(["tesseract", str(page), "stdout", "-l", "eng", "tsv"],
                                              capture_output=True, env=env, check=True))
        loaded = _load(page)
        osd, _ = best(lambda: asyncio.run(run_tesseract("stdin", "--psm", "0", stdin=orientation.osd_input(
            loaded.image))) if loaded.ink_fraction >= orientation.BLANK_INK else None)
        skew, _ = best(lambda: _skew(_load(page), 0))
        ar, out = best(lambda: asyncio.run(ocr_page(page)))
        rows.append((bare, osd, skew, ar))
        print(f"  {page.name}: bare {bare:.2f} s, osd {osd:.2f} s, skew {skew:.2f} s, ar {ar:.2f} s "
              f"(rotated {out['rotated']}, deskewed {out['deskewed']})")
    mean = [sum(col) / len(rows) for col in zip(*rows)]
    bare, osd, skew, ar = mean
    print(f"{label}: {len(rows)} pages, mean per page: bare {bare:.2f} s, OSD {osd:.2f} s, "
          f"skew {skew:.3f} s, ar {ar:.2f} s: +{ar - bare:.2f} s (+{(ar - bare) / bare:.0%})")


def main() -> None:
    if not SAMPLE.is_dir() or not list(SAMPLE.glob("page_*.png")):
        subprocess.run([sys.executable, "-m", "tools.make_sample"], cwd=ROOT, check=True)
    version = subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout
    print(f"{os.cpu_count()} cores; {version.splitlines()[0]}; "
          "load average %.2f %.2f %.2f" % os.getloadavg())
    measure("sample", sorted(SAMPLE.glob("page_*.png")))
    with tempfile.TemporaryDirectory(prefix="bench-osd-") as d:
        rendered = Path(d) / "multipage"
        import_source(MULTIPAGE, rendered)
        measure("multipage", sorted(rendered.glob("page_*.png")))


if __name__ == "__main__":
    main()
