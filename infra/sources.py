"""A book's page images from what the user has: a PDF, an image, or a folder of images.

Every page of every input: each page of a PDF (rendered at its scan's own resolution, with
its text layer kept beside it), each frame of a multi-page TIFF, each image the way a viewer
shows it (EXIF orientation applied). Each page is stored as one lossless PNG in the smallest
mode that keeps what it shows (1-bit, gray, or RGB where there is coloured ink), with its dpi
in the PNG (Tesseract reads it).

All or nothing: pages are made in a temporary folder beside the destination and renamed
into place at the end; on any error nothing is left behind.
"""
from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from infra.books import page_file
from infra.errors import SourceError

MIN_DPI, MAX_DPI = 300, 400  # below 300 Tesseract misreads; above 400 pages grow, reading doesn't improve
MAX_PIXELS = 200_000_000  # a page larger than this is not a scan but a mistake (or a bomb)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def import_source(src: Path, dest: Path) -> int:
    """Fill `dest` (which must not exist) with page_0001.png ...; returns the page count."""
    if not src.exists():
        raise SourceError(f"{src}: no such file or folder")
    if dest.exists():
        raise SourceError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        if src.is_dir():
            pages = _from_folder(src, work)
        elif src.suffix.lower() == ".pdf" or _starts_with(src, b"%PDF-"):
            pages = _from_pdf(src, work)
        else:
            pages = _from_images([src], work)
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return pages


def books_in_folder(folder: Path) -> list[Path] | None:
    """What `ar.py add FOLDER` makes of a folder: None when it is one book (it holds page
    images, as a book's folder does); else its PDFs and sub-folders, one book each, and any
    other file (refused when added), in natural order."""
    entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=_natural)
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return None
    if not any(p.is_dir() or p.suffix.lower() == ".pdf" for p in entries):
        return None  # nothing of a library: as one book, it is refused with the reason why
    return entries


def check_book_source(path: Path) -> None:
    """What a folder of books may hold: PDFs and folders of page images."""
    if not (path.is_dir() or path.suffix.lower() == ".pdf" or _starts_with(path, b"%PDF-")):
        raise SourceError(f"{path}: not a PDF nor a folder of page images (in a folder of books, "
                          "each book is one of those)")


def _from_pdf(pdf_path: Path, out: Path) -> int:
    import pypdfium2 as pdfium

    if pdf_path.stat().st_size == 0:
        raise SourceError(f"{pdf_path}: empty file (0 bytes)")
    try:
        pdf = pdfium.PdfDocument(str(pdf_path))
    except pdfium.PdfiumError as e:
        reason = str(e).lower()
        if "password" in reason:
            raise SourceError(f"{pdf_path}: the PDF is encrypted (password-protected); decrypt it first") from None
        if "(pdfium: success)" in reason:  # PDFium refuses a document without pages, and says no more
            raise SourceError(f"{pdf_path}: not a readable PDF (no pages found in it)") from None
        raise SourceError(f"{pdf_path}: not a readable PDF ({e})") from None
    try:
        if len(pdf) == 0:
            raise SourceError(f"{pdf_path}: the PDF has no pages")
        for number in range(1, len(pdf) + 1):  # one page in memory at a time
            try:
                page = pdf[number - 1]
                image, dpi = _render(page, f"{pdf_path}: page {number}")
                text = _text_layer(page)
            except pdfium.PdfiumError as e:
                raise SourceError(f"{pdf_path}: page {number} cannot be rendered ({e})") from None
            _save_page(image, out / page_file(number, ".png"), (dpi, dpi))
            if text:  # for the OCR stage, which may use it instead of (or to check) Tesseract
                (out / page_file(number, ".txt")).write_text(text, encoding="utf-8")
            page.close()
        return len(pdf)
    finally:
        pdf.close()


def _native_dpi(page) -> float | None:
    """The resolution the page was scanned at: that of its largest image on the page (pixels
    per inch along the image's own axes, so a rotated image counts right); None with no image."""
    import pypdfium2.raw as pdfium_c

    best, best_area = None, 0.0
    for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,)):
        a, b, c, d, _, _ = obj.get_matrix().get()  # maps the image's unit square onto the page, in points
        width_pt, height_pt = math.hypot(a, b), math.hypot(c, d)
        if width_pt * height_pt > best_area:
            px_w, px_h = obj.get_px_size()
            best_area = width_pt * height_pt
            best = max(px_w * 72 / width_pt, px_h * 72 / height_pt)
    return best


def _render(page, what: str) -> tuple[Image.Image, int]:
    """The page at its scan's resolution, within MIN_DPI..MAX_DPI (vector pages at MIN_DPI): a
    9000-pixel 600-dpi scan rendered at 300 lost detail Tesseract needed; a 150-dpi one gains
    from 300. In colour: the PNG is gray unless the page has coloured ink."""
    native = _native_dpi(page)
    dpi = round(min(max(native or MIN_DPI, MIN_DPI), MAX_DPI))
    width, height = page.get_size()
    if width * height * (dpi / 72) ** 2 > MAX_PIXELS:
        raise SourceError(f"{what}: page too large ({width / 72:.0f}x{height / 72:.0f} inches at {dpi} dpi)")
    # At the scan's own resolution, each pixel is copied as it is, not smoothed: a black and
    # white scan stays black and white (1-bit, far smaller). pypdfium2 sizes the bitmap with
    # ceil(points * scale), where 792 * 300/72 comes to 3300.0000000000005: the nudge keeps 3300.
    pixel_for_pixel = native is not None and abs(native - dpi) < 0.5
    bitmap = page.render(scale=dpi / 72 * (1 - 1e-9), rev_byteorder=True, no_smoothimage=pixel_for_pixel)
    return bitmap.to_pil(), dpi


def _text_layer(page) -> str:
    """The page's text layer (a born-digital PDF's text, or an earlier OCR's), '' if none."""
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n")
    finally:
        textpage.close()
    return text if text.strip() else ""


def _from_folder(folder: Path, out: Path) -> int:
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural)
    if not files:
        raise SourceError(f"{folder}: no page images in this folder")
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise SourceError(f"{others[0]}: not a page image (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return _from_images(files, out)


def _from_images(files: list[Path], out: Path) -> int:
    number = 0
    for path in files:
        if path.stat().st_size == 0:
            raise SourceError(f"{path}: empty file (0 bytes)")
        try:
            with Image.open(path) as image:
                for frame in _pages_of(image, path):
                    number += 1
                    _save_page(frame, out / page_file(number, ".png"), image.info.get("dpi"))
        except Image.DecompressionBombError:
            raise SourceError(f"{path}: image too large (over {MAX_PIXELS:,} pixels)") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise SourceError(f"{path}: not a readable image ({e})") from None
    return number


def _pages_of(image: Image.Image, path: Path) -> Iterator[Image.Image]:
    """The pages in one image file, each upright as a viewer shows it (EXIF orientation).
    Only a TIFF's frames are pages: a camera's JPEG (MPO) or a WebP may hold other frames
    (a preview, a depth map, an animation), which are not."""
    frames = range(getattr(image, "n_frames", 1)) if image.format == "TIFF" else range(1)
    for index in frames:
        image.seek(index)
        if image.width * image.height > MAX_PIXELS:
            raise SourceError(f"{path}: image too large ({image.width}x{image.height} pixels)")
        image.load()
        yield ImageOps.exif_transpose(image)


def _save_page(image: Image.Image, path: Path, dpi) -> None:
    options = {"dpi": dpi} if dpi else {}  # a scan's own dpi if it says one: Tesseract uses it
    _smallest_mode(image).save(path, **options)


def _smallest_mode(image: Image.Image) -> Image.Image:
    """The page in the smallest PNG mode that keeps what it shows: gray when it has no colour
    (every pixel R = G = B, or a colour scan of a gray page: paper tint and the scanner's
    chroma noise, no coloured ink), 1-bit when only black and white remain. A page with
    coloured ink (a figure, a chart, a rubric) stays in colour, every pixel as it was."""
    if image.mode not in ("L", "RGB", "1"):
        image = image.convert("RGB")
    if image.mode == "RGB" and not _has_colour(image):
        image = image.convert("L")
    if image.mode == "L":
        colors = image.getcolors(2)  # None when more than two
        if colors is not None and {value for _, value in colors} <= {0, 255}:
            return image.convert("1", dither=Image.Dither.NONE)
    return image


# A pixel is coloured ink when its channels differ by more than COLOURED (of 255): a yellowed
# page and a colour scanner's noise stay under it (c02-22.pdf: none over 48, 82% over 24), a
# chart's lines and a red rubric are far over. A page with at most COLOURED_SHARE of such
# pixels is gray (multipage.pdf's chart pages: 4 to 6%).
COLOURED, COLOURED_SHARE = 48, 0.001


def _has_colour(image: Image.Image) -> bool:
    red, green, blue = image.split()
    if not (ImageChops.difference(red, green).getbbox() or ImageChops.difference(red, blue).getbbox()):
        return False  # exactly gray: a gray scan rendered or saved as colour
    sample = image.reduce(4) if min(image.size) >= 400 else image  # the share, not each pixel
    red, green, blue = sample.split()
    spread = ImageChops.subtract(ImageChops.lighter(ImageChops.lighter(red, green), blue),
                                 ImageChops.darker(ImageChops.darker(red, green), blue))
    histogram = spread.histogram()
    return sum(histogram[COLOURED + 1:]) > COLOURED_SHARE * sum(histogram)


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic
