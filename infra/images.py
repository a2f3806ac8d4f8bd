"""A page scan as a vision model takes it: no larger than the model uses, compactly encoded,
and the most prompt tokens it can count as.

Providers scale every image down before the model sees it (OpenAI to 2048 px on the long
side and 768 on the short; Anthropic to about 1568 px; Gemini tiles it in 768 px squares), so
pixels past MAX_SIDE are paid in upload and never read. A scan's source PNG (lossless, up to
9000 px and 3.5 MB) is sent as a JPEG of at most MAX_SIDE px on its long side, in grey unless
the page has real colour; a bitonal scan stays black and white, as a 1-bit PNG (a third of
a JPEG's size). The source itself is never changed (bench/vision_images.py: the bytes sent).
"""
from __future__ import annotations

import base64
import binascii
import io
import math
from pathlib import Path

from PIL import Image

# Long side of the image sent: what the models read (see above); a page's text stays legible.
MAX_SIDE = 2000
JPEG_QUALITY = 80
# No provider counts an image as more than a prompt token per this many pixels: OpenAI's 32 px
# patches weighted 1.62 are one per 25x25, Anthropic's w*h/750 one per 27x27, Gemini's 258 a
# 768 px tile far fewer. The budget reserves this bound for an image of the size sent.
PIXELS_PER_TOKEN_AT_MOST = 24 * 24
PIXELS_PER_TOKEN_LIKELY = 1250
# A pixel is coloured past this saturation (0-255); a page is in colour when over 1% of it is
# (yellowed paper, a stamp's tint are not colour)
SATURATED, COLOURED_SHARE = 80, 0.01


def model_image(path: Path) -> tuple[str, bytes]:
    """(MIME type, bytes) of the page at `path` as sent to a vision model."""
    with Image.open(path) as img:
        img.load()
    bitonal = img.mode == "1"
    img = img.convert("RGB" if _in_colour(img) else "L")
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)  # keeps the page's proportions
    out = io.BytesIO()
    if bitonal:  # black and white it was, and stays: a 1-bit PNG is a third of a JPEG's size
        img.point(lambda v: 255 if v >= 128 else 0).convert("1", dither=Image.Dither.NONE).save(out, "PNG")
        return "image/png", out.getvalue()
    img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return "image/jpeg", out.getvalue()


def data_url(path: Path) -> str:
    mime, data = model_image(path)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_tokens_bound(url: str) -> int:
    """The most prompt tokens the image at `url` can count as: from its size for a data URL
    (what ar sends), else as if it were MAX_SIDE px square."""
    width = height = MAX_SIDE
    if url.startswith("data:") and ";base64," in url:
        try:
            with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
                width, height = img.size
        except (binascii.Error, OSError, ValueError):
            pass
    return image_tokens(width, height)[2]


def sent_size(path: Path) -> tuple[int, int]:
    """The size the page at `path` is sent at (its header read, not its pixels)."""
    with Image.open(path) as img:
        width, height = img.size
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def image_tokens(width: int, height: int) -> tuple[int, int, int]:
    """Low, likely and high prompt tokens of an image of this size, for the estimate: low as
    Gemini counts it (258 a 768 px tile), likely one per PIXELS_PER_TOKEN_LIKELY pixels (what
    OpenAI, Anthropic and Gemini count for a 2000 x 1545 page, 2,300 to 2,500 tokens, once they
    have scaled it), high the bound the budget reserves."""
    tiles = math.ceil(width / 768) * math.ceil(height / 768)
    pixels = width * height
    return 258 * tiles, math.ceil(pixels / PIXELS_PER_TOKEN_LIKELY), math.ceil(pixels / PIXELS_PER_TOKEN_AT_MOST)


def _in_colour(img: Image.Image) -> bool:
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    small = img.convert("RGB").resize((128, 128))
    saturation = small.convert("HSV").getchannel("S").histogram()
    return sum(saturation[SATURATED:]) > COLOURED_SHARE * 128 * 128
