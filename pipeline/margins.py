"""What a page's first reading left unread in its top and bottom margins: the ink there that
has the size of print, for the OCR to read again on its own (pipeline/ocr.py).

Tesseract's page segmentation often drops a lone small page number standing in a margin (a
folio "2" in a corner, "ii" under a contents page): too little ink to make a text block of.
Read alone, in a tight crop as one line, it reads well. Finding it costs Pillow work only
(a few milliseconds a page); tesseract runs again only where such ink is found, once for each
patch of it, and only in a band with no number already read in it.

A band is the page's top or bottom BAND of its height. In it, every line the first reading
returned is whited out (it was read), except a short word alone (a folio misread as "il" is
read again). What ink remains is grouped into patches (cells of CELL px, joined across small gaps);
a patch the size of a line of print (from LOW to HIGH times the page's median line height,
at most WIDE of them across) is a place to read. Specks of dust and a picture's edge are not.
"""
from __future__ import annotations

from statistics import median

from PIL import Image, ImageDraw, ImageOps

from pipeline.layout import lone_number

BAND = 1 / 8  # a printed book's margins are within the page's top and bottom eighth
CELL = 8  # px: the grid the ink is grouped on (about a fifth of a line of print at 300 dpi)
INKED = 20  # a cell is inked when at least this share of 255 of it is ink (specks of 1-2 px are not)
LOW, HIGH, WIDE = 0.4, 1.6, 8.0  # a patch's height and width, in the page's line heights
MOST = 2  # patches read in a band at most, the nearest the page's edge first
INK_LEVEL = 128


def lines_of(ocr: dict) -> list[dict]:
    return [ln for block in ocr.get("blocks") or [] for ln in block["lines"]]


def _in(box: list[int], top: int, bottom: int) -> bool:
    middle = box[1] + box[3] / 2
    return top <= middle < bottom


def _short_word(text: str) -> bool:
    return len(text.split()) == 1 and len(text.strip()) <= 4


def bands(size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    height = size[1]
    return {"top": (0, round(height * BAND)), "bottom": (height - round(height * BAND), height)}


def line_height(ocr: dict) -> float | None:
    """The page's median line height, or None when the reading has no line."""
    lines = lines_of(ocr)
    return median(ln["bbox"][3] for ln in lines) if lines else None


def unread_patches(image: Image.Image, ocr: dict) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(band, box in the image) of each patch of print-sized ink the first reading `ocr`
    left unread in a margin band that has no number read in it."""
    lines, height = lines_of(ocr), line_height(ocr)
    if height is None:
        return []
    found = []
    for name, (top, bottom) in bands(image.size).items():
        inside = [ln for ln in lines if _in(ln["bbox"], top, bottom)]
        if any(lone_number(ln["text"]) for ln in inside):
            continue  # its number was read
        band = image.crop((0, top, image.width, bottom))
        draw = ImageDraw.Draw(band)
        for ln in lines:  # a line crossing the band's edge too: no half line left to misread
            x, y, w, h = ln["bbox"]
            if not _short_word(ln["text"]) and y < bottom and y + h > top:
                pad = h // 3  # accents, descenders and punctuation beyond the line's box
                draw.rectangle((x - pad, y - top - pad, x + w + pad, y - top + h + pad), fill=255)
        patches = _patches(band, height)
        patches.sort(key=lambda b: b[1] if name == "top" else -b[3])
        found += [(name, (x0, y0 + top, x1, y1 + top)) for x0, y0, x1, y1 in patches[:MOST]]
    return found


def _patches(band: Image.Image, line_height: float) -> list[tuple[int, int, int, int]]:
    """Boxes of the groups of inked cells of print's size (cells within two across or one
    down of each other are one group: the letters of a number, the dot of an i)."""
    ink = band.point(lambda v: 255 if v < INK_LEVEL else 0)
    cols, rows = max(1, ink.width // CELL), max(1, ink.height // CELL)
    cells = ink.resize((cols, rows), Image.BOX).tobytes()
    inked = {(i % cols, i // cols) for i, v in enumerate(cells) if v >= INKED}
    seen: set[tuple[int, int]] = set()
    boxes = []
    for start in sorted(inked):
        if start in seen:
            continue
        group, stack = [], [start]
        seen.add(start)
        while stack:
            x, y = stack.pop()
            group.append((x, y))
            for dx in (-2, -1, 0, 1, 2):
                for dy in (-1, 0, 1):
                    near = (x + dx, y + dy)
                    if near in inked and near not in seen:
                        seen.add(near)
                        stack.append(near)
        xs, ys = [c[0] for c in group], [c[1] for c in group]
        box = (min(xs) * CELL, min(ys) * CELL, (max(xs) + 1) * CELL, (max(ys) + 1) * CELL)
        if LOW * line_height <= box[3] - box[1] <= HIGH * line_height and box[2] - box[0] <= WIDE * line_height:
            boxes.append(box)
    return boxes


def crop(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[Image.Image, int, int]:
    """The patch's ink, cut tight and set in white paper half its height wide, and where that
    ink starts in the image. Read as one word (psm 8), so cut, a lone folio reads steadily:
    "ii" and "2" at 77-97 on bench/structure.py's pages, where a looser crop read the same
    "ii" as "il", "ll" or "it" as the patch's box moved by a few pixels."""
    patch = image.crop(box)
    ink = patch.point(lambda v: 255 if v < INK_LEVEL else 0).getbbox() or (0, 0, patch.width, patch.height)
    pad = max(1, (ink[3] - ink[1]) // 2)
    return ImageOps.expand(patch.crop(ink), border=pad, fill=255), box[0] + ink[0] - pad, box[1] + ink[1] - pad
