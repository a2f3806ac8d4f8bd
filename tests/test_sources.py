"""Every page of every input becomes a page, upright, at its scan's resolution, exactly and compactly
(infra/sources.py, what `ar.py add` does). Made from the real scans in tests/data/real-scans."""
import io
import math
import subprocess

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageChops, ImageStat

from infra.books import Book
from infra.errors import SourceError
from infra.sources import _smallest_mode, import_source
from tests.conftest import REAL_SCANS

ORIENTATION = 0x0112  # the EXIF tag


def render(pdf_name: str, index: int = 0, dpi: float = 300, **options) -> Image.Image:
    pdf = pdfium.PdfDocument(str(REAL_SCANS / pdf_name))
    try:
        return pdf[index].render(scale=dpi / 72, rev_byteorder=True, **options).to_pil()
    finally:
        pdf.close()


def add(src, tmp_path) -> Book:
    import_source(src, tmp_path / "book" / "source")
    return Book(tmp_path / "book")


def pages(book: Book) -> list[Image.Image]:
    out = []
    for path in book.source_pages():
        with Image.open(path) as image:
            image.load()
            out.append(image)
    return out


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is None


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("L"), b.convert("L"))).mean)


@pytest.fixture(scope="module")
def linn() -> Image.Image:
    """The linn brochure page, upright, in gray: a real scan."""
    return render("linn.pdf", dpi=150).convert("L")


# 1. EXIF orientation


def test_a_jpeg_is_stored_upright_as_its_exif_orientation_says(tmp_path, linn):
    # Pixels stored turned, with the tag that tells a viewer how to turn them back (EXIF:
    # 3 = turn 180 degrees, 6 = turn 90 clockwise, 8 = turn 90 counter-clockwise).
    folder = tmp_path / "photos"
    folder.mkdir()
    for n, (tag, stored) in enumerate([(None, linn), (3, linn.rotate(180)),
                                       (6, linn.rotate(90, expand=True)), (8, linn.rotate(-90, expand=True))], 1):
        exif = Image.Exif()
        if tag:
            exif[ORIENTATION] = tag
        stored.save(folder / f"photo{n}.jpg", quality=95, exif=exif.tobytes())
    book = add(folder, tmp_path)
    for n, page in enumerate(pages(book), 1):
        assert page.size == linn.size, n
        assert mean_difference(page, linn) < 2, n  # JPEG noise only; a turned page differs by ~40
    tsv = subprocess.run(["tesseract", str(book.source_image(3)), "stdout"], capture_output=True, text=True,
                         check=True).stdout
    expected = set((REAL_SCANS / "linn.txt").read_text().split())
    assert len(expected & set(tsv.split())) > 0.7 * len(expected)


# 2. Multi-page TIFF


def real_frames() -> list[Image.Image]:
    """Three real scans: gray, gray (a colour scan of a gray page, stored gray), colour."""
    return [render("linn.pdf", dpi=100).convert("L"), render("c02-22.pdf", dpi=100).convert("L"),
            render("multipage.pdf", 2, dpi=100)]


def test_every_frame_of_a_multipage_tiff_is_a_page_in_order(tmp_path):
    frames = real_frames()
    tiff = tmp_path / "scan.tif"
    frames[0].save(tiff, save_all=True, append_images=frames[1:], compression="tiff_deflate")
    book = add(tiff, tmp_path)
    stored = pages(book)
    assert len(stored) == 3
    assert all(same(page, frame) for page, frame in zip(stored, frames))


def test_a_tiff_in_a_folder_puts_its_frames_in_its_place(tmp_path, linn):
    frames = real_frames()
    folder = tmp_path / "scans"
    folder.mkdir()
    first, last = linn, linn.rotate(180)
    first.save(folder / "scan1.png")
    frames[0].save(folder / "scan2.tiff", save_all=True, append_images=frames[1:])
    last.save(folder / "scan10.png")
    stored = pages(add(folder, tmp_path))
    assert len(stored) == 5
    assert all(same(page, image) for page, image in zip(stored, [first, *frames, last]))


# 3. PDF pages at their scan's resolution


def embedded_image(pdf_path) -> Image.Image:
    """The scan inside a one-image PDF page, decoded."""
    pdf = pdfium.PdfDocument(str(pdf_path))
    try:
        return next(pdf[0].get_objects(filter=(pdfium.raw.FPDF_PAGEOBJ_IMAGE,))).get_bitmap().to_pil()
    finally:
        pdf.close()


def pdf_of(image: Image.Image, path, dpi: int):
    image.save(path, "PDF", resolution=dpi)
    return path


def test_a_pdf_page_is_rendered_at_its_images_own_dpi_within_300_to_400(tmp_path, linn):
    top = linn.crop((0, 0, 1275, 600))  # 8.5 x 4 inches at 150 dpi
    stored = {}
    for dpi in (600, 350, 150):
        scan = top.resize((1275 * dpi // 150, 600 * dpi // 150))
        pdf = pdf_of(scan, tmp_path / f"{dpi}.pdf", dpi)
        [page] = pages(add(pdf, tmp_path / str(dpi)))
        stored[dpi] = (page.size, round(page.info["dpi"][0]))
        if dpi == 350:  # at its own resolution, pixel for pixel: the scan itself
            assert same(page, embedded_image(pdf))
    assert stored == {600: ((3400, 1600), 400), 350: ((2975, 1400), 350), 150: ((2550, 1200), 300)}


def test_pages_of_mixed_size_each_get_their_own_size_and_a_bilevel_scan_stays_exact(tmp_path):
    book = add(REAL_SCANS / "multipage.pdf", tmp_path / "multi")
    pdf = pdfium.PdfDocument(str(REAL_SCANS / "multipage.pdf"))
    points = [pdf[i].get_size() for i in range(len(pdf))]
    pdf.close()
    stored = pages(book)
    assert [p.size for p in stored] == [(math.ceil(w * 300 / 72 - 1e-6), math.ceil(h * 300 / 72 - 1e-6)) for w, h in points]
    assert stored[1].size == (9000, 9000)  # its 9000-pixel image, pixel for pixel
    # cardinal.pdf: 300-dpi JBIG2 black and white, each page turned: kept black and white, exactly
    cardinal = pages(add(REAL_SCANS / "cardinal.pdf", tmp_path / "cardinal"))
    assert [p.mode for p in cardinal] == ["1"] * 4
    assert same(cardinal[0], embedded_image(REAL_SCANS / "cardinal.pdf"))


def text_pdf(path, text: str, size: tuple[int, int] = (612, 792)):
    """A one-page PDF whose only content is `text` in Helvetica: a text layer, no image."""
    stream = f"BT /F1 24 Tf 72 700 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Contents 4 0 R" % size
               + b" /Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for n, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % n + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    path.write_bytes(out.getvalue())
    return path


def test_a_page_without_an_image_is_rendered_at_300_dpi(tmp_path):
    [page] = pages(add(text_pdf(tmp_path / "text.pdf", "Hello"), tmp_path))
    assert page.size == (2550, 3300) and round(page.info["dpi"][0]) == 300


def test_a_page_too_large_to_render_is_refused_and_leaves_nothing(tmp_path):
    poster = text_pdf(tmp_path / "poster.pdf", "Big", size=(14400, 14400))  # 200 inches square
    with pytest.raises(SourceError, match=r"poster.pdf: page 1: page too large \(200x200 inches at 300 dpi\)"):
        import_source(poster, tmp_path / "book" / "source")
    assert list((tmp_path / "book").iterdir()) == []


# 4. The text layer


def test_a_pdfs_text_layer_is_kept_beside_its_page_and_only_where_there_is_one(tmp_path):
    book = add(text_pdf(tmp_path / "text.pdf", "The quick brown fox jumps over the lazy dog"), tmp_path / "text")
    assert (book.source_dir / "page_0001.txt").read_text(encoding="utf-8") == "The quick brown fox jumps over the lazy dog"
    # multipage.pdf: page 4 carries a text layer from an earlier OCR, the others none
    book = add(REAL_SCANS / "multipage.pdf", tmp_path / "multi")
    assert sorted(p.name for p in book.source_dir.glob("*.txt")) == ["page_0004.txt"]
    layer = (book.source_dir / "page_0004.txt").read_text(encoding="utf-8")
    assert "No vote" in layer and "\r" not in layer
    assert book.page_count() == 6  # the text files are not pages
    book = add(REAL_SCANS / "linn.pdf", tmp_path / "linn")
    assert list(book.source_dir.glob("*.txt")) == []


# 5. Compact, and exact


def test_each_page_is_kept_in_the_smallest_mode_that_keeps_what_it_shows(linn):
    gray = render("multipage.pdf", 4)  # an 8-bit gray scan, scaled: R = G = B everywhere
    assert _smallest_mode(gray).mode == "L" and same(_smallest_mode(gray), gray)
    # a colour JPEG scan of a gray page: yellowed paper and chroma noise, no coloured ink
    tinted = render("c02-22.pdf")
    assert _smallest_mode(tinted).mode == "L" and same(_smallest_mode(tinted), tinted.convert("L"))
    assert _smallest_mode(render("multipage.pdf", 5)).mode == "RGB"  # a chart in colour
    rubric = gray.convert("RGB")
    rubric.paste((200, 30, 30), (100, 100, 100 + rubric.width // 5, 140))  # a red rule, 0.25% of the page
    assert _smallest_mode(rubric).mode == "RGB" and same(_smallest_mode(rubric), rubric)
    bilevel = linn.point(lambda v: 255 if v > 128 else 0)
    assert _smallest_mode(bilevel.convert("RGB")).mode == "1"
    assert same(_smallest_mode(bilevel), bilevel)
    bilevel.putpixel((10, 10), 254)
    assert _smallest_mode(bilevel).mode == "L"


def test_a_colour_scan_of_a_gray_page_is_stored_gray_in_half_the_bytes(tmp_path):
    book = add(REAL_SCANS / "c02-22.pdf", tmp_path)
    with Image.open(book.source_image(1)) as page:
        assert page.mode == "L"
    colour = io.BytesIO()
    render("c02-22.pdf").save(colour, "PNG")
    assert book.source_image(1).stat().st_size < colour.tell() / 2


def test_a_gray_scan_takes_far_fewer_bytes_than_an_rgb_png(tmp_path):
    book = add(REAL_SCANS / "cardinal.pdf", tmp_path)
    old = io.BytesIO()
    render("cardinal.pdf").save(old, "PNG")
    assert book.source_image(1).stat().st_size < old.tell() / 3
