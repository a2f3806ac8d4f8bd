"""Make the sample book: its true text laid out as book pages, rendered as damaged scans.

books/sample/truth/book.md is the clean text, written for ar. This lays it out on A5 pages
at 300 dpi (running headers, page numbers, words hyphenated across lines and across a page
break), keeps what each page prints in truth/page_NNNN.txt, and renders source/page_NNNN.png
with the damage of a real scan: a slight rotation, blur, noise, uneven light and specks.
Deterministic (seeded) and idempotent: nothing is redone when the pages exist.

    python -m tools.make_sample [--book DIR] [--force]
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
BOOK_TITLE = "THE QUIET SHELF"
CHAPTER_TITLE = "A Village Library"
WIDTH, HEIGHT, DPI = 1748, 2480, 300  # A5
MARGIN_X, TOP, BOTTOM = 200, 230, 2230
FONT_SIZE, LINE = 54, 86
GRAIN = 55  # darkest sensor noise, out of 255: more and Tesseract finds no text on a half-empty page
SCAN_DPI = 150  # the cheap scanner's real resolution: detail below it is lost


def find_font() -> Path:
    for known in (Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf"),):
        if known.exists():
            return known
    try:
        out = subprocess.run(["fc-match", "-f", "%{file}", "DejaVu Serif"], capture_output=True, text=True)
        if out.stdout and Path(out.stdout).exists():
            return Path(out.stdout)
    except FileNotFoundError:
        pass
    sys.exit("make_sample: error: DejaVu Serif not found (Debian: apt-get install fonts-dejavu-core)")


def paragraphs_of(markdown: str) -> tuple[str, list[str]]:
    blocks = [b.strip() for b in markdown.split("\n\n") if b.strip()]
    heading = blocks[0].lstrip("# ").strip()
    return heading, [" ".join(b.split()) for b in blocks[1:]]


def lay_out(paragraphs: list[str], font: ImageFont.FreeTypeFont) -> list[list[str]]:
    """Pages of printed lines ('' between paragraphs). Words that do not fit are hyphenated
    when long enough; the last line of a page hyphenates eagerly, so a word breaks across pages."""
    width = WIDTH - 2 * MARGIN_X
    first_page_lines = (BOTTOM - TOP) // LINE - 3  # the chapter heading takes three lines
    other_page_lines = (BOTTOM - TOP) // LINE - 2  # the running header takes two
    pages: list[list[str]] = [[]]

    def room() -> int:
        return (first_page_lines if len(pages) == 1 else other_page_lines) - len(pages[-1])

    def emit(line: str) -> None:
        if room() <= 0:
            pages.append([])
        pages[-1].append(line)

    for para in paragraphs:
        if pages[-1]:
            if room() <= 1:
                pages.append([])
            else:
                emit("")
        words = para.split()
        line = ""
        while words:
            word = words[0]
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line, words = candidate, words[1:]
                continue
            split = _hyphenate(line, word, font, width, eager=room() == 1)
            if split:
                head, tail = split
                emit(f"{line} {head}-" if line else f"{head}-")
                words = [tail] + words[1:]
            else:
                emit(line)
            line = ""
        if line:
            emit(line)
    return pages


def _hyphenate(line: str, word: str, font, width: float, eager: bool):
    letters = word.rstrip(".,;:!?'\"")
    if len(letters) < (6 if eager else 9) or not letters.isalpha():
        return None
    for cut in range(len(letters) - 3, 2, -1):
        head = word[:cut]
        if font.getlength(f"{line} {head}-" if line else f"{head}-") <= width:
            return head, word[cut:]
    return None


def page_texts(heading: str, pages: list[list[str]]) -> list[str]:
    texts = []
    for number, lines in enumerate(pages, start=1):
        top = [heading, ""] if number == 1 else [BOOK_TITLE if number % 2 == 0 else CHAPTER_TITLE, ""]
        texts.append("\n".join(top + lines + ["", str(number)]))
    return texts


def render(text: str, number: int, font_path: Path, seed: int) -> Image.Image:
    rng = random.Random(seed * 1000 + number)
    body = ImageFont.truetype(str(font_path), FONT_SIZE)
    small = ImageFont.truetype(str(font_path), FONT_SIZE - 10)
    big = ImageFont.truetype(str(font_path), FONT_SIZE + 22)
    page = Image.new("L", (WIDTH, HEIGHT), 250)
    draw = ImageDraw.Draw(page)
    lines = text.split("\n")
    y = TOP - 90
    for i, line in enumerate(lines):
        if i == len(lines) - 1:  # the page number, centred at the foot
            draw.text((WIDTH / 2, BOTTOM + 60), line, font=small, fill=25, anchor="ma")
        elif i == 0 and number > 1:  # the running header, centred
            draw.text((WIDTH / 2, y), line, font=small, fill=25, anchor="ma")
            y += LINE * 2
        elif i == 0:
            draw.text((MARGIN_X, y), line, font=big, fill=20)
            y += LINE * 3
        elif i == 1 or i == len(lines) - 2:
            continue  # the blank lines under the header and above the page number
        else:
            draw.text((MARGIN_X, y), line, font=body, fill=20)
            y += LINE
    return damage(page, rng)


def damage(page: Image.Image, rng: random.Random) -> Image.Image:
    """What a flatbed scanner and an old book do to a clean page."""
    draw = ImageDraw.Draw(page)
    for _ in range(rng.randint(150, 300)):  # specks of dust and foxing
        x, y, r = rng.randrange(WIDTH), rng.randrange(HEIGHT), rng.choice((1, 1, 2, 3))
        draw.ellipse((x, y, x + r, y + r), fill=rng.randint(60, 160))
    page = page.rotate(rng.uniform(-1.5, 1.5), resample=Image.BICUBIC, fillcolor=250)
    # a cheap scanner: detail lost at SCAN_DPI, then blurred
    low = (WIDTH * SCAN_DPI // DPI, HEIGHT * SCAN_DPI // DPI)
    page = page.resize(low, Image.BILINEAR).resize((WIDTH, HEIGHT), Image.BICUBIC)
    page = page.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 0.9)))
    light = Image.linear_gradient("L").rotate(rng.choice((90, -90, 180, 0))).resize(page.size)
    shade = light.point(lambda v: 255 - int(v * rng.uniform(0.22, 0.3)))  # 255 .. ~180
    page = ImageChops.multiply(page, shade)
    grain = Image.frombytes("L", page.size, rng.randbytes(WIDTH * HEIGHT)).point(lambda v: v * GRAIN // 255)
    return ImageChops.subtract(page, grain)


def make(book: Path, force: bool = False, seed: int = 7) -> int:
    truth, source = book / "truth", book / "source"
    if source.is_dir() and not force:
        return len(list(source.glob("page_*.png")))
    font_path = find_font()
    heading, paras = paragraphs_of((truth / "book.md").read_text())
    pages = page_texts(heading, lay_out(paras, ImageFont.truetype(str(font_path), FONT_SIZE)))
    work = Path(tempfile.mkdtemp(prefix=".source.tmp-", dir=book))
    try:
        for number, text in enumerate(pages, start=1):
            (truth / f"page_{number:04d}.txt").write_text(text + "\n")
            render(text, number, font_path, seed).save(work / f"page_{number:04d}.png", dpi=(DPI, DPI))
        if source.exists():
            shutil.rmtree(source)
        work.rename(source)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return len(pages)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_sample", description="make the sample book's page images")
    p.add_argument("--book", type=Path, default=ROOT / "books" / "sample")
    p.add_argument("--force", action="store_true", help="make the pages again even if they exist")
    args = p.parse_args(argv)
    pages = make(args.book, args.force)
    print(f"sample book: {pages} pages in {args.book / 'source'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
