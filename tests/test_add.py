"""`ar.py add`: real PDFs and images become a book's pages; bad input fails in one line, leaving nothing."""
import json

import pypdfium2 as pdfium
import pytest
from PIL import Image

from tests.conftest import REAL_SCANS, run_ar


def only_error_line(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ar: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_pdf_becomes_pages_at_300_dpi(books_dir):
    r = run_ar("add", str(REAL_SCANS / "multipage.pdf"), "--json", books_dir=books_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pages"] == 6
    pages = sorted((books_dir / "multipage" / "source").glob("page_*.png"))
    assert [p.name for p in pages] == [f"page_{n:04d}.png" for n in range(1, 7)]
    with Image.open(pages[0]) as image:
        assert round(image.info["dpi"][0]) == 300
    one = run_ar("add", str(REAL_SCANS / "c02-22.pdf"), books_dir=books_dir)
    assert one.returncode == 0 and one.stdout.startswith("added c02-22: 1 page in "), one.stdout


def test_a_folder_of_images_keeps_their_natural_order(books_dir, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for n, shade in ((10, 10), (2, 200), (1, 100)):
        Image.new("L", (40, 60), shade).save(folder / f"scan{n}.jpg")
    r = run_ar("add", str(folder), "--id", "mine", books_dir=books_dir)
    assert r.returncode == 0, r.stderr
    shades = []
    for p in sorted((books_dir / "mine" / "source").glob("page_*.png")):
        with Image.open(p) as image:
            shades.append(image.getpixel((0, 0)))
    assert shades == [100, 200, 10]


def _empty_pdf(path):
    pdf = pdfium.PdfDocument.new()
    pdf.save(str(path))
    pdf.close()


@pytest.mark.parametrize("make, needle", [
    (lambda d: REAL_SCANS / "invalid.pdf", "not a readable PDF"),
    (lambda d: (d / "empty.pdf").write_bytes(b"") or d / "empty.pdf", "empty file"),
    (lambda d: _empty_pdf(d / "none.pdf") or d / "none.pdf", "not a readable PDF (no pages found in it)"),
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "not a readable image"),
])
def test_bad_sources_fail_in_one_line_and_leave_no_book(books_dir, tmp_path, make, needle):
    src = make(tmp_path)
    r = run_ar("add", str(src), "--id", "bad", books_dir=books_dir)
    assert r.returncode == 1
    only_error_line(r, str(src.name), needle)
    assert list(books_dir.iterdir()) == []  # no half-made book, no temp folder


@pytest.mark.parametrize("content, needle", [(b"", "empty file"), (b"just text", "not a page image")])
def test_a_folder_with_a_bad_file_fails_naming_it(books_dir, tmp_path, content, needle):
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("L", (40, 60), 255).save(folder / "p1.png")
    bad = folder / ("p2.png" if not content else "p2.txt")
    bad.write_bytes(content)
    r = run_ar("add", str(folder), "--id", "bad", books_dir=books_dir)
    assert r.returncode == 1
    only_error_line(r, bad.name, needle)
    assert list(books_dir.iterdir()) == []


@pytest.mark.parametrize("book_id", ["../x", "/etc", "a/b", "", "..", ".hidden"])
def test_book_ids_are_names_not_paths(books_dir, book_id):
    r = run_ar("add", str(REAL_SCANS / "c02-22.pdf"), "--id", book_id, books_dir=books_dir)
    assert r.returncode == 2
    only_error_line(r, "invalid book id")
    assert list(books_dir.iterdir()) == []
    r = run_ar("status", book_id, books_dir=books_dir)
    assert r.returncode == 2 and "invalid book id" in r.stderr


def test_an_existing_book_is_not_overwritten(books_dir):
    assert run_ar("add", str(REAL_SCANS / "c02-22.pdf"), "--id", "b", books_dir=books_dir).returncode == 0
    before = (books_dir / "b" / "source" / "page_0001.png").read_bytes()
    r = run_ar("add", str(REAL_SCANS / "multipage.pdf"), "--id", "b", books_dir=books_dir)
    assert r.returncode == 1
    only_error_line(r, "already exists")
    assert (books_dir / "b" / "source" / "page_0001.png").read_bytes() == before
    assert len(list((books_dir / "b" / "source").iterdir())) == 1


def test_a_folder_of_pdfs_and_page_folders_adds_one_book_each_skipping_and_refusing(books_dir, tmp_path):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "Moby Dick.pdf").write_bytes((REAL_SCANS / "c02-22.pdf").read_bytes())
    (shelf / "moby-dick").mkdir()  # its id would clash with the PDF's: made unique
    Image.new("L", (40, 60), 255).save(shelf / "moby-dick" / "p1.png")
    (shelf / "broken.pdf").write_bytes(b"")
    (shelf / "notes.txt").write_text("not a book")
    (shelf / "bad-pages").mkdir()
    (shelf / "bad-pages" / "p1.png").write_bytes(b"")
    (shelf / "multipage.pdf").write_bytes((REAL_SCANS / "multipage.pdf").read_bytes())
    r = run_ar("add", str(shelf), "--json", books_dir=books_dir)
    assert r.returncode == 1  # some were refused
    report = json.loads(r.stdout)
    status = {b["book"]: (b["status"], b.get("pages")) for b in report["books"]}
    assert status == {"bad-pages": ("refused", None), "broken": ("refused", None), "Moby-Dick": ("added", 1),
                      "moby-dick-2": ("added", 1), "multipage": ("added", 6), "notes": ("refused", None)}
    errors = [line for line in r.stderr.splitlines() if line.startswith("ar: error: ")]
    assert len(errors) == 3 and "Traceback" not in r.stderr
    assert any("broken.pdf: empty file (0 bytes)" in e for e in errors)
    assert any("notes.txt: not a PDF nor a folder of page images" in e for e in errors)
    assert any("p1.png: empty file" in e for e in errors)
    assert sorted(p.name for p in books_dir.iterdir()) == ["Moby-Dick", "moby-dick-2", "multipage"]

    # again, with the broken one mended: what is there is skipped and said so, the rest is added
    (shelf / "broken.pdf").write_bytes((REAL_SCANS / "c02-22.pdf").read_bytes())
    (shelf / "notes.txt").unlink()
    (shelf / "bad-pages" / "p1.png").unlink()
    Image.new("L", (40, 60), 255).save(shelf / "bad-pages" / "p1.png")
    again = run_ar("add", str(shelf), books_dir=books_dir)
    assert again.returncode == 0, again.stderr
    assert "skipped multipage: already added" in again.stdout
    assert "added broken: 1 page" in again.stdout and "2 added, 3 skipped, 0 refused" in again.stdout


def test_names_that_clash_even_in_case_or_are_no_id_get_valid_unique_ids(tmp_path):
    from infra.books import unique_book_ids, validate_book_id

    paths = [tmp_path / n for n in ("..pdf", "a b.pdf", "a-b", "A  B", "-x-")]
    for p in paths:
        p.mkdir() if p.suffix != ".pdf" else p.write_bytes(b"%PDF-")
    ids = unique_book_ids(paths)
    assert ids == ["book", "a-b", "a-b-2", "A-B-3", "x"]
    assert all(validate_book_id(i) == i for i in ids)


def test_many_books_take_no_id(books_dir, tmp_path):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "one.pdf").write_bytes((REAL_SCANS / "c02-22.pdf").read_bytes())
    r = run_ar("add", str(shelf), "--id", "x", books_dir=books_dir)
    assert r.returncode == 2
    only_error_line(r, "--id names one book")
