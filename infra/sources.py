"""A book's page images from what the user has: a PDF (rendered at 300 dpi) or a folder of images.

All or nothing: pages are made in a temporary folder beside the destination and renamed
into place at the end; on any error nothing is left behind.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from infra.books import page_file
from infra.errors import SourceError

DPI = 300
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
        for index in range(len(pdf)):  # one page in memory at a time
            try:
                page = pdf[index]
                bitmap = page.render(scale=DPI / 72, grayscale=True)
                image = bitmap.to_pil()
            except pdfium.PdfiumError as e:
                raise SourceError(f"{pdf_path}: page {index + 1} cannot be rendered ({e})") from None
            image.save(out / page_file(index + 1, ".png"), dpi=(DPI, DPI))
            page.close()
        return len(pdf)
    finally:
        pdf.close()


def _from_folder(folder: Path, out: Path) -> int:
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural)
    if not files:
        raise SourceError(f"{folder}: no page images in this folder")
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise SourceError(f"{others[0]}: not a page image (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return _from_images(files, out)


def _from_images(files: list[Path], out: Path) -> int:
    for number, path in enumerate(files, start=1):
        if path.stat().st_size == 0:
            raise SourceError(f"{path}: empty file (0 bytes)")
        try:
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise SourceError(f"{path}: image too large ({image.width}x{image.height} pixels)")
                image.load()
                if image.mode not in ("L", "RGB", "1"):
                    image = image.convert("RGB")
                image.save(out / page_file(number, ".png"))
        except Image.DecompressionBombError:
            raise SourceError(f"{path}: image too large (over {MAX_PIXELS:,} pixels)") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise SourceError(f"{path}: not a readable image ({e})") from None
    return len(files)


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic
