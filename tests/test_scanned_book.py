"""A scanned book end to end through the real `ar.py` (real Tesseract, the local server): the
page numbers Tesseract's page reading leaves out, and an EPUB that the same pages make again
byte for byte.

The pages are bench/structure.py's first book (its seed 1000), pages 4 to 6: a lone folio "2"
in the top left corner of the first, none on the second (a chapter's opening), "4" on the
third. Tesseract's reading of the whole page returns neither number (asserted below: the
OCR text has no line of them); the second reading of the margins does.
"""
import json
import re
import shutil
import time
import zipfile

import pytest

from bench.structure import make_book
from tests.conftest import llm_env, run_ar
from tests.simserver import Sim

PRINTED = {1: "2", 2: "3", 3: "4"}  # scan page -> its printed number (3: between two folios)


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scanned")
    made, scans = tmp / "made", tmp / "scans"
    made.mkdir()
    scans.mkdir()
    make_book(1000, 12, made)
    for n, page in enumerate((4, 5, 6), start=1):
        shutil.copy(made / f"p{page:03d}.png", scans / f"p{n:03d}.png")
    server = Sim()
    env = llm_env(server, tmp)
    books = tmp / "books"
    try:
        for args in (("add", str(scans), "--id", "b"), ("process", "b")):
            r = run_ar(*args, books_dir=books, env=env)
            assert r.returncode == 0, r.stdout + r.stderr
        first_epub = (books / "b" / "book.epub").read_bytes()
        time.sleep(1.1)  # a merge that took the clock's time would now take another second
        for args in (("clean", "b", "merge"), ("process", "b")):
            r = run_ar(*args, books_dir=books, env=env)
            assert r.returncode == 0, r.stdout + r.stderr
    finally:
        server.stop()
    return books / "b", first_epub


def test_a_lone_folio_the_page_reading_misses_is_read_in_the_margin_and_mapped_not_kept_as_text(book):
    root, _ = book
    ocr = {p: json.loads((root / "ocr" / f"page_{p:04d}.json").read_text()) for p in PRINTED}
    for p in (1, 3):
        assert PRINTED[p] not in ocr[p]["text"].split(), "the first reading returned the folio: no case to test"
        assert [(w["band"], w["text"]) for w in ocr[p]["margins"]] == [("top", PRINTED[p])]
        assert all(w["confidence"] > 0 and len(w["bbox"]) == 4 for w in ocr[p]["margins"])
    page_map = json.loads((root / "structured" / "page_map.json").read_text())["pages"]
    assert {m["scan"]: m["printed"] for m in page_map} == PRINTED
    assert [m["margin"] for m in page_map] == [True, False, True]
    md = (root / "book.md").read_text()
    body = re.sub(r"<!--.*?-->", "", md)
    assert not re.search(r"(^|\s)[24](\s|$)", body), md  # evidence for the page map, never text
    assert "the worst of times" in md or "Yes." in md  # the body is there


def test_merging_the_same_pages_again_gives_the_same_epub(book):
    """(tests/test_epub.py has epubcheck validate a book made with such a date.)"""
    root, first = book
    again = (root / "book.epub").read_bytes()
    assert again == first
    with zipfile.ZipFile(root / "book.epub") as z:
        opf = z.read("OEBPS/content.opf").decode()
    modified = re.search(r'dcterms:modified">([^<]+)<', opf).group(1)
    newest = max(p.stat().st_mtime for p in (root / "fixed").glob("page_*.json"))
    assert modified == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest))  # its text's date
