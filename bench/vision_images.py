"""What --vision sends for a page, before (the source PNG as it is) and now (infra/images.py):
bytes on the wire (base64 included), pixels, the token bound the budget reserves, and the
time to make it, for each page of the real scans in tests/data/real-scans.

    .venv/bin/python -m bench.vision_images
"""
from __future__ import annotations

import base64
import io
import tempfile
import time
from pathlib import Path

from PIL import Image

from infra.images import image_tokens_bound
from infra.llm_client import image_part
from infra.sources import import_source

ROOT = Path(__file__).resolve().parents[1]
SCANS = ROOT / "tests" / "data" / "real-scans"
OLD_IMAGE_TOKENS_BOUND = 2000  # what the budget reserved for any image before


def main() -> None:
    print(f"{'page':<20} {'source px':>11} {'before MB':>9} {'now px':>11} {'now KB':>7} {'type':>10} "
          f"{'tokens':>6} {'ms':>5}")
    before_total = now_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for pdf in ("c02-22.pdf", "linn.pdf", "multipage.pdf"):
            out = Path(tmp) / pdf
            import_source(SCANS / pdf, out)
            for page in sorted(out.glob("page_*.png")):
                with Image.open(page) as src:
                    source_px = src.size
                before = len(base64.b64encode(page.read_bytes()))
                start = time.perf_counter()
                url = image_part(page)["image_url"]["url"]
                took = time.perf_counter() - start
                mime, data = url.removeprefix("data:").split(";base64,")
                with Image.open(io.BytesIO(base64.b64decode(data))) as sent:
                    now_px = sent.size
                before_total, now_total = before_total + before, now_total + len(url)
                print(f"{pdf[:-4] + '/' + page.stem[-4:]:<20} {'x'.join(map(str, source_px)):>11} "
                      f"{before / 1e6:>9.2f} {'x'.join(map(str, now_px)):>11} {len(url) / 1e3:>7.0f} "
                      f"{mime:>10} {image_tokens_bound(url):>6} {took * 1000:>5.0f}")
    print(f"all pages: {before_total / 1e6:.2f} MB before, {now_total / 1e6:.2f} MB now "
          f"({before_total / now_total:.1f}x less); token bound before: {OLD_IMAGE_TOKENS_BOUND} for any image")


if __name__ == "__main__":
    main()
