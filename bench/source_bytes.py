"""Bytes and time per source page: `ar.py add` now (infra/sources.py) against the old ways.

For each real input (tests/data/real-scans: multipage.pdf, c02-22.pdf, cardinal.pdf; the
sample book's pages made by `python -m tools.make_sample`), per page on average:
  rgb      the page as an RGB PNG at PIL's default compression (zlib 6), rendered at 300 dpi
  main     what ar stored before: a PDF rendered in gray at 300 dpi, an image as it came (zlib 6)
  now      what import_source stores: the scan's dpi (300..400), smallest exact mode (zlib 6)
  now z9   the same pages at zlib level 9 (PIL's optimize=True is the same), and its extra time
  add s    seconds per page to add, main's way and now (render + checks + PNG), one core

    .venv/bin/python -m bench.source_bytes
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

from infra.sources import import_source

ROOT = Path(__file__).resolve().parents[1]
SCANS = ROOT / "tests" / "data" / "real-scans"
SAMPLE = ROOT / "books" / "sample" / "source"


def png_bytes(image: Image.Image, **options) -> int:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.tell()


def old_pages(src: Path):
    """The pages as main's infra/sources.py made them (and as RGB), with the time it took."""
    if src.is_dir():
        for path in sorted(src.glob("page_*.png")):
            start = time.perf_counter()
            with Image.open(path) as image:
                image.load()
                main = png_bytes(image)
            yield main, time.perf_counter() - start, png_bytes(image.convert("RGB"))
        return
    pdf = pdfium.PdfDocument(str(src))
    for page in pdf:
        start = time.perf_counter()
        main = png_bytes(page.render(scale=300 / 72, grayscale=True).to_pil(), dpi=(300, 300))
        took = time.perf_counter() - start
        yield main, took, png_bytes(page.render(scale=300 / 72, rev_byteorder=True).to_pil())
    pdf.close()


def measure(src: Path) -> dict:
    old = list(old_pages(src))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        n = import_source(src, Path(tmp) / "source")
        took = time.perf_counter() - start
        now = z9 = z9_extra = 0.0
        for path in sorted((Path(tmp) / "source").glob("page_*.png")):
            now += path.stat().st_size
            with Image.open(path) as image:
                image.load()
                t0 = time.perf_counter()
                png_bytes(image)
                t1 = time.perf_counter()
                z9 += png_bytes(image, compress_level=9)
                z9_extra += (time.perf_counter() - t1) - (t1 - t0)
    return {"pages": n, "rgb": sum(o[2] for o in old) / n, "main": sum(o[0] for o in old) / n,
            "now": now / n, "z9": z9 / n, "z9_extra_s": z9_extra / n,
            "main_s": sum(o[1] for o in old) / n, "now_s": took / n}


def main() -> int:
    sources = [SCANS / "multipage.pdf", SCANS / "c02-22.pdf", SCANS / "cardinal.pdf"]
    if list(SAMPLE.glob("page_*.png")):
        sources.append(SAMPLE)
    else:
        print("(no sample pages: make them with python -m tools.make_sample)", file=sys.stderr)
    print(f"{'source':<15}{'pages':>6}{'rgb KB':>9}{'main KB':>9}{'now KB':>9}{'now/rgb':>9}{'now/main':>9}"
          f"{'z9 KB':>9}{'z9 +s':>7}{'main s':>8}{'now s':>7}")
    for src in sources:
        r = measure(src)
        name = "sample book" if src == SAMPLE else src.name
        print(f"{name:<15}{r['pages']:>6}{r['rgb'] / 1e3:>9.0f}{r['main'] / 1e3:>9.0f}{r['now'] / 1e3:>9.0f}"
              f"{r['now'] / r['rgb']:>9.2f}{r['now'] / r['main']:>9.2f}{r['z9'] / 1e3:>9.0f}{r['z9_extra_s']:>7.2f}"
              f"{r['main_s']:>8.2f}{r['now_s']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
