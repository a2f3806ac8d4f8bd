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


def ocr_done_book(books_dir: Path, book_id: str, pages: int) -> Book:
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
            atomic_write_json(out / page_file(p, ".json"), {"page": p, "text": page_text(p),
                                                            "mean_confidence": 90.0})
            ledger.mark_done("ocr", p, run_id)
    ledger.end_run(run_id, "done")
    ledger.close()
    return book
