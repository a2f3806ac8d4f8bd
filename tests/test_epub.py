"""book.epub: EPUB 3 that epubcheck (the W3C's validator, Debian package epubcheck, installed
by tools/bootstrap.sh) accepts, with a table of contents, footnotes and a page list of the
printed page numbers."""
import io
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

from pipeline.layout import analyse
from pipeline.merge import build, epub_book
from tests.typeset import Page, book


def epubcheck(path) -> subprocess.CompletedProcess:
    """Debian's /usr/bin/epubcheck is the jar itself (run through binfmt where set up): run by java."""
    found = shutil.which("epubcheck")
    assert found, "epubcheck is not installed: run tools/bootstrap.sh"
    return subprocess.run(["java", "-jar", str(Path(found).resolve()), str(path)], capture_output=True, text=True,
                          timeout=300)


def typeset_book() -> dict:
    prose = "The library opened at nine, and the first visitor was always the"
    pages = []
    for n, title in enumerate(["CHAPTER I", "CHAPTER II"]):
        opening = Page().heading(title).body(prose, indent=True).body("same man, who read the papers1 and")
        pages.append(opening.footnote(f"1 A note of chapter {n + 1} & more.").folio(str(2 * n + 1)))
        pages.append(Page().header("THE QUIET SHELF").body("talked of the weather.", short=True)
                     .body(prose, indent=True).body("end.", short=True).folio(str(2 * n + 2)))
    return book(*pages)


def test_the_epub_is_valid_with_contents_footnotes_and_printed_page_numbers(tmp_path):
    pages = typeset_book()
    layouts = analyse(pages)
    named = {"title": "The Quiet Shelf", "author": "A. Keeper"}
    data = epub_book(build(layouts, {p: o["text"] for p, o in pages.items()}), layouts, named, "eng", 0.0)
    path = tmp_path / "book.epub"
    path.write_bytes(data)
    checked = epubcheck(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with zipfile.ZipFile(path) as z:
        assert z.namelist()[0] == "mimetype" and z.read("mimetype") == b"application/epub+zip"
        nav = z.read("OEBPS/nav.xhtml").decode()
        opf = z.read("OEBPS/content.opf").decode()
        notes = z.read("OEBPS/notes.xhtml").decode()
        chapter = z.read("OEBPS/c002.xhtml").decode()
    assert re.findall(r'href="c\d+.xhtml">([^<]+)<', nav) == ["CHAPTER I", "CHAPTER II"]
    assert re.findall(r'#page-\d+">(\d+)<', nav) == ["1", "2", "3", "4"]  # printed, not scan, numbers
    assert "<dc:creator>A. Keeper</dc:creator>" in opf and "<dc:language>en</dc:language>" in opf
    assert 'epub:type="footnote" id="note-2"' in notes and "A note of chapter 2 &amp; more." in notes
    assert 'papers<a epub:type="noteref" href="notes.xhtml#note-2">2</a> and <span epub:type="pagebreak"' in chapter
    assert chapter.index('id="page-3"') < chapter.index("<h1>CHAPTER II</h1>")  # the page opens the chapter


def test_an_invalid_epub_is_refused_by_the_check(tmp_path):
    """The check can fail: a book without its package document is refused."""
    pages = typeset_book()
    layouts = analyse(pages)
    data = epub_book(build(layouts, {p: o["text"] for p, o in pages.items()}), layouts,
                     {"title": "x", "author": None}, "eng", 0.0)
    broken = tmp_path / "broken.epub"
    with zipfile.ZipFile(io.BytesIO(data)) as z, zipfile.ZipFile(broken, "w") as out:
        for name in z.namelist():
            if name != "OEBPS/content.opf":
                out.writestr(name, z.read(name))
    assert epubcheck(broken).returncode != 0
