"""Books for the benchmarks: built quickly, the way ar itself would have left them."""
from __future__ import annotations

import re
from pathlib import Path

from infra.books import Book, page_file
from infra.checkpoint import Ledger
from infra.storage import atomic_write_json
from pipeline.registry import STAGES
from tests.conftest import ROOT, make_book

TRUTH = ROOT / "books" / "sample" / "truth"


def page_text(page: int) -> str:
    """About 2,400 characters of the sample's prose (a real book page), with the OCR slips
    the local server's corrector fixes ('tbe', 'rn' for 'm'), different on every page."""
    pages = sorted(TRUTH.glob("page_*.txt"))
    text = "\n\n".join(pages[(page + i) % len(pages)].read_text() for i in range(3))
    text = re.sub(r"\bthe\b", "tbe", text, count=3)
    return re.sub(r"\bm(\w+)", r"rn\1", text, count=2)


def blank_scan() -> bytes:
    """A white page as a PNG: what an estimate can open and size (a vision stage's image tokens)."""
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("L", (1275, 1650), 255).save(out, "PNG", dpi=(150, 150))
    return out.getvalue()


def ocr_page(page: int, boxes: bool) -> dict:
    """The OCR stage's output for a page; with `boxes`, each word's box and confidence in one
    block, as Tesseract's reading gives them (about the size of a real page's output)."""
    text = page_text(page)
    out = {"page": page, "text": text, "mean_confidence": 90.0}
    if boxes:
        lines = [{"bbox": [100, 100 + 30 * i, 1000, 28], "text": line, "confidence": 90.0,
                  "words": [{"text": w, "confidence": 90.0, "bbox": [100 + 60 * j, 100 + 30 * i, 55, 28]}
                            for j, w in enumerate(line.split())]}
                 for i, line in enumerate(text.splitlines()) if line.strip()]
        out["blocks"] = [{"bbox": [100, 100, 1000, 30 * len(lines)], "confidence": 90.0, "lines": lines}]
    return out


def ocr_done_book(books_dir: Path, book_id: str, pages: int, boxes: bool = False) -> Book:
    """A book of `pages` blank scans whose OCR is done: outputs and ledger both."""
    book = Book(make_book(books_dir, book_id, pages))
    scan = blank_scan()
    for image in book.source_pages():
        image.write_bytes(scan)
    out = STAGES["ocr"].folder(book)
    out.mkdir()
    ledger = Ledger.open_writer(book.ledger_path)
    run_id = ledger.start_run(0, "bench: ocr done")
    with ledger.snapshot():
        for p in range(1, pages + 1):
            page = ocr_page(p, boxes)
            atomic_write_json(out / page_file(p, ".json"), page)
            ledger.mark_done("ocr", p, run_id, chars=len(page["text"]))
    ledger.end_run(run_id, "done")
    ledger.close()
    return book
