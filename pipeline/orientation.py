"""Which way up a page is, and how far it is skewed: what the OCR stage turns before reading.

Orientation: Tesseract's OSD (`--psm 0`), a tesseract process of its own, run on the page
at half size (about 40% less time than at full size; OSD counts character shapes, which
150 dpi keeps). Its answer is used only when confident: OSD_MIN_CONFIDENCE. OSD costs about
as much as reading a sparse page (0.6 to 1 s), so it runs only when in doubt
(pipeline/ocr.py): a page whose ink lines up in columns rather than rows (`sideways`), or
one whose first reading has a low confidence (upside down text reads as garbage).
Skew: a projection profile over small angles on a downscaled, binarised copy (Pillow only):
the angle at which the rows of ink are sharpest (the sum of squared row sums is largest) is
the one that lines the text up. Tens of milliseconds a page; no numpy needed.
Lighting: a phone's photo of a page is brighter on one side than the other. Tesseract's
default (global Otsu) threshold then turns the dark side's paper into ink. `lighting` measures
the paper's brightness across the page, and a page lit unevenly is read with Tesseract's
local (Sauvola) threshold instead, which is worse on evenly lit scans.
The scan in source/ is never changed: the OCR reads an upright copy (pipeline/ocr.py).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, ImageFilter

# OCRmyPDF rotates at an OSD confidence of 14 on full-size pages; on our half-size copies the
# confidence is about half of what the full page gets (cardinal.pdf's four turns: 30-35 at
# full size, 17-20 at half), so half of that threshold.
OSD_MIN_CONFIDENCE = 7.0
OSD_SCALE = 2  # OSD reads the page reduced by this factor
SKEW_WIDTH = 800  # the skew is measured on a copy this wide
# degrees searched either way: a phone's photo held by hand is off by up to ~10 (linn.pdf at
# 7 and 9.5 degrees: 7% and 38% CER searched to 5, 1% searched to 10; +30 ms a page)
MAX_SKEW = 10.0
MIN_SKEW = 0.3  # below this, turning the page costs more than it gains
INK_LEVEL = 128  # darker than this (0..255) is ink
BLANK_INK = 0.0005  # a page with less than this fraction of ink is blank
# Paper darker than this share of the brightest paper is lit unevenly. Flatbed scans measure
# 0.77 to 1 (a page with a large illustration is the lowest), the damaged sample pages 0.79;
# linn.pdf photographed in a light falling to half across the page measures 0.59 and to 30%,
# 0.41 (Otsu: 19% CER; Sauvola: 1.4%). Sauvola on evenly lit pages: 0.45% CER -> 0.9% (sample).
UNEVEN_LIGHT = 0.65

_ROTATE = re.compile(r"^Rotate:\s*(\d+)", re.M)
_CONFIDENCE = re.compile(r"^Orientation confidence:\s*([\d.]+)", re.M)


@dataclass
class Osd:
    rotate: int  # degrees clockwise that make the page upright (Tesseract's "Rotate")
    confidence: float


def osd_command() -> list[str]:
    return ["tesseract", "stdin", "stdout", "--psm", "0"]


def osd_input(image: Image.Image) -> bytes:
    """The page at half size, as an uncompressed PGM (no time spent compressing it)."""
    small = image.reduce(OSD_SCALE) if min(image.size) >= 200 * OSD_SCALE else image
    buf = io.BytesIO()
    small.save(buf, "PPM")
    return buf.getvalue()


def parse_osd(out: str) -> Osd | None:
    rotate, confidence = _ROTATE.search(out), _CONFIDENCE.search(out)
    if not rotate or not confidence:
        return None
    return Osd(int(rotate.group(1)) % 360, float(confidence.group(1)))


def grey(image: Image.Image) -> Image.Image:
    return image if image.mode == "L" else image.convert("L")


def ink(image: Image.Image, width: int = SKEW_WIDTH) -> Image.Image:
    """A copy `width` wide where ink is 255 and paper 0."""
    scale = width / image.width
    small = image.resize((width, max(1, round(image.height * scale))), Image.BOX) if scale < 1 else image
    return small.point(lambda v: 255 if v < INK_LEVEL else 0)


def ink_fraction(inked: Image.Image) -> float:
    hist = inked.histogram()
    return hist[255] / max(1, sum(hist))


def _sharpness(inked: Image.Image, angle: float) -> float:
    turned = inked.rotate(angle, resample=Image.NEAREST, fillcolor=0)
    rows = turned.resize((1, turned.height), Image.BOX).tobytes()  # mode L: one byte a row
    return float(sum(v * v for v in rows))


def level(inked: Image.Image) -> tuple[float, float]:
    """(angle, sharpness): the degrees (counter-clockwise, as PIL's rotate takes them) that
    make the rows of ink sharpest, and how sharp they are then. A coarse search in whole
    degrees on a copy half as wide, then tenths around the best on the full copy."""
    half = inked.reduce(2)
    best = max(range(-round(MAX_SKEW), round(MAX_SKEW) + 1), key=lambda a: _sharpness(half, a))
    scores = {round(best + x / 10, 1): _sharpness(inked, best + x / 10) for x in range(-7, 8)}
    angle = max(scores, key=scores.get)
    return angle, scores[angle]


def measure_skew(inked: Image.Image) -> float:
    return level(inked)[0]


def lighting(image: Image.Image) -> float:
    """How evenly the paper is lit: its darkest twentieth over its brightest, inside the page's
    central 80% (a dark table around a photographed page is not paper). The paper is the page
    with its ink removed: each point's brightest neighbour, on a copy ~150 px across."""
    small = image.reduce(max(1, min(image.size) // 150))
    paper = small.filter(ImageFilter.MaxFilter(7))
    w, h = paper.size
    histogram = paper.crop((w // 10, h // 10, w - w // 10, h - h // 10)).histogram()
    darkest, brightest = _percentile(histogram, 0.05), _percentile(histogram, 0.95)
    return round(darkest / brightest, 3) if brightest else 1.0


def _percentile(histogram: list[int], share: float) -> int:
    total, seen = sum(histogram), 0
    for value, count in enumerate(histogram):
        seen += count
        if seen >= share * total:
            return value
    return len(histogram) - 1


def sideways(inked: Image.Image, rows: float) -> bool:
    """True when the ink lines up in columns better than in rows (`rows`: level()'s
    sharpness): the page lies on its side, and OSD must say which way."""
    turned = inked.transpose(Image.Transpose.ROTATE_90)
    return max(_sharpness(turned, a) for a in range(-round(MAX_SKEW), round(MAX_SKEW) + 1, 2)) > rows


def upright(image: Image.Image, rotate: int, skew: float) -> Image.Image:
    """The page turned `rotate` degrees clockwise (exact) and then `skew` degrees
    counter-clockwise, the corners filled with paper."""
    if rotate:
        image = image.transpose({90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
                                 270: Image.Transpose.ROTATE_90}[rotate])
    if abs(skew) >= MIN_SKEW:
        paper = max(range(256), key=grey(image).reduce(8).histogram().__getitem__)
        image = image.rotate(skew, resample=Image.BILINEAR, expand=True, fillcolor=paper)
    return image
