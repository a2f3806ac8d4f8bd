"""ocr: Tesseract on each page image (or a PDF's text layer); words, lines, blocks and their
confidences, and how the page was read, as JSON (README, "OCR: scans as they come").

One page per core at a time, its `tesseract` runs one after the other (OSD when in doubt, a
second reading once turned: pipeline/orientation.py; a lone word its reading left out of a
margin, read again alone: pipeline/margins.py), each with OMP_THREAD_LIMIT=1:
Tesseract's own threads help one page but cost throughput when every core is busy
(bench/ocr_throughput.py measures it against the bare command). The processes are started
straight from the event loop and their TSV parsed here (under a millisecond a page): no pool
of Python workers to start, whose imports would cost more than the parsing they would save.
"""
from __future__ import annotations

import asyncio
import ctypes
import csv
import functools
import io
import os
import logging
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from infra.errors import OcrError, UsageError
from infra.ledgers import read_ledger
from infra.logs import log_event
from pipeline import margins, orientation
from pipeline.faithful import DOUBTFUL, ocr_doubts
from pipeline.executor import OcrSlots, page_runner
from pipeline.render import pages
from pipeline.stage import DEFAULT_LANG, Stage, kept_language

log = logging.getLogger("ar.ocr")
# Mean word confidence under which a page is flagged: upside-down text read as if upright
# scores about 35 (cardinal.pdf), clean pages 92-96, poor but real small print 61-69
# (multipage.pdf): 50 separates garbage from a hard page.
LOW_CONFIDENCE = 50.0
# A first reading under this asks OSD whether the page is upside down: well above the ~35 of
# upside-down text, below the 92-96 of clean pages.
OSD_BELOW = 65.0
TEXT_LAYER_MIN_CHARS = 20
TEXT_LAYER_MIN_LETTERS = 0.6

TESSERACT_ENV = {**os.environ, "OMP_THREAD_LIMIT": "1"}
TIMEOUT_S = 600
PR_SET_PDEATHSIG = 1  # linux/prctl.h
try:  # resolved here, not in the child: between fork and exec nothing may be loaded
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _detach(ar_pid: int) -> None:
    """In the tesseract child, before exec. Its own process group: a Ctrl-C meant for ar lets
    the pages in flight finish. Yet killed when ar dies, however it dies (SIGKILL too)."""
    os.setpgrp()
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != ar_pid:  # ar died before the line above took effect
        os._exit(1)


async def run_tesseract(image: Path | str, *args: str, stdin: bytes | None = None, what: str = "") -> str:
    """The output of `tesseract IMAGE stdout ARGS...` (IMAGE "stdin": the bytes `stdin`)."""
    what = what or str(image)
    try:
        proc = await asyncio.create_subprocess_exec(
            "tesseract", str(image), "stdout", *args, stdin=subprocess.PIPE if stdin is not None else None,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=TESSERACT_ENV, preexec_fn=partial(_detach, os.getpid()))
    except FileNotFoundError:
        raise OcrError("tesseract is not installed (Debian: apt-get install tesseract-ocr)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT_S)
    except (asyncio.TimeoutError, asyncio.CancelledError) as e:
        proc.kill()
        await proc.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        raise OcrError(f"{what}: tesseract took over {TIMEOUT_S // 60} minutes") from None
    if proc.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()
        raise OcrError(f"{what}: tesseract failed: {reason[-1] if reason else 'exit ' + str(proc.returncode)}")
    return out.decode("utf-8", errors="replace")


def _bbox(row: dict) -> list[int]:
    return [int(row["left"]), int(row["top"]), int(row["width"]), int(row["height"])]


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2) if values else 0.0


def parse_tsv(tsv: str) -> dict:
    """Blocks > lines > words with confidences (0..100), and the page's text: words joined
    by spaces, lines by newlines, paragraphs and blocks by a blank line."""
    rows = list(csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE))
    width = height = 0
    blocks: dict[int, dict] = {}
    lines: dict[tuple, dict] = {}
    for row in rows:
        level = int(row["level"])
        if level == 1:
            width, height = int(row["width"]), int(row["height"])
        elif level == 2:
            blocks[int(row["block_num"])] = {"bbox": _bbox(row), "lines": []}
        elif level == 4:
            key = (int(row["block_num"]), int(row["par_num"]), int(row["line_num"]))
            lines[key] = {"bbox": _bbox(row), "words": []}
            blocks[key[0]]["lines"].append(lines[key])
        elif level == 5 and (row.get("text") or "").strip():
            key = (int(row["block_num"]), int(row["par_num"]), int(row["line_num"]))
            lines[key]["words"].append({"text": row["text"].strip(), "confidence": float(row["conf"]),
                                        "bbox": _bbox(row)})
    paragraphs: dict[tuple, list[str]] = {}
    for (block, par, _), line in lines.items():
        words = line["words"]
        line["text"] = " ".join(w["text"] for w in words)
        line["confidence"] = _mean([w["confidence"] for w in words if w["confidence"] >= 0])
        if words:
            paragraphs.setdefault((block, par), []).append(line["text"])
    kept = []
    for block in blocks.values():
        block["lines"] = [line for line in block["lines"] if line["words"]]
        if block["lines"]:
            confidences = [w["confidence"] for line in block["lines"] for w in line["words"] if w["confidence"] >= 0]
            block["confidence"] = _mean(confidences)
            kept.append(block)
    all_conf = [w["confidence"] for b in kept for line in b["lines"] for w in line["words"] if w["confidence"] >= 0]
    return {
        "width": width, "height": height,
        "text": "\n\n".join("\n".join(par) for par in paragraphs.values()),
        "mean_confidence": _mean(all_conf),
        "blocks": kept,
    }


@dataclass
class _Page:
    image: Image.Image  # greyscale
    dpi: tuple | None
    inked: Image.Image  # orientation.ink of it
    ink_fraction: float
    lighting: float  # orientation.lighting of it


def _load(path: Path) -> _Page:
    with Image.open(path) as im:
        im.load()
        dpi = im.info.get("dpi")
        image = orientation.grey(im)
    inked = orientation.ink(image)
    return _Page(image, dpi, inked, orientation.ink_fraction(inked), orientation.lighting(image))


def _skew(page: _Page, rotate: int) -> float:
    return orientation.measure_skew(orientation.upright(page.inked, rotate, 0.0))


def _save_upright(page: _Page, rotate: int, skew: float, dest: Path) -> Image.Image:
    upright = orientation.upright(page.image, rotate, skew)
    upright.save(dest)
    return upright


async def ocr_page(image: Path, lang: str = "eng") -> dict:
    """The page read upright, the scan in source/ untouched. Levelled when skewed; turned as
    OSD says when it is confident, and OSD is asked only when in doubt: the page lies on its
    side, or its first reading is poor (under OSD_BELOW, or no words on an inked page).
    Word boxes are in the coordinates of the image tesseract read (turned or not)."""
    if not image.is_file():
        raise OcrError(f"{image}: no such page image")
    try:
        page = await asyncio.to_thread(_load, image)
    except (OSError, ValueError) as e:
        raise OcrError(f"{image}: cannot read the page image ({e})") from None
    if page.ink_fraction < orientation.BLANK_INK:
        result, _ = await _read(image, page, lang, 0, 0.0)
        return {**result, "osd": None, "flags": {"blank": f"{page.ink_fraction:.3%} of the page is ink"}}
    skew, sharpness = await asyncio.to_thread(orientation.level, page.inked)
    osd = None
    if await asyncio.to_thread(orientation.sideways, page.inked, sharpness):
        osd = await _osd(image, page)
    rotate = osd.rotate if _confident(osd) else 0
    if rotate:
        skew = await asyncio.to_thread(_skew, page, rotate)
    result, seen = await _read(image, page, lang, rotate, skew)
    if osd is None and (result["mean_confidence"] < OSD_BELOW or not result["text"].strip()):
        osd = await _osd(image, page)
        if _confident(osd):
            rotate = osd.rotate
            result, seen = await _read(image, page, lang, rotate, await asyncio.to_thread(_skew, page, rotate))
    result["margins"] = await read_margins(image, seen, page.dpi, result, lang) if result["text"].strip() else []
    flags = {}
    if rotate:
        flags["rotated"] = f"turned {rotate} degrees (OSD confidence {osd.confidence})"
    if not result["text"].strip():
        flags["no_text"] = f"{page.ink_fraction:.2%} of the page is ink, but no words were read"
    elif result["mean_confidence"] < LOW_CONFIDENCE:
        flags["low_confidence"] = f"mean word confidence {result['mean_confidence']} < {LOW_CONFIDENCE}"
    if doubts := ocr_doubts(result):  # fix will read it again with the image
        flags[DOUBTFUL] = doubts
    return {**result, "osd": None if osd is None else {"rotate": osd.rotate, "confidence": osd.confidence},
            "flags": flags}


async def _osd(image: Path, page: _Page) -> orientation.Osd | None:
    """OSD's answer; None when it has none (too few characters on the page)."""
    try:
        data = await asyncio.to_thread(orientation.osd_input, page.image)
        return orientation.parse_osd(await run_tesseract("stdin", "--psm", "0", stdin=data,
                                                         what=f"{image} (orientation)"))
    except OcrError:
        return None


def _confident(osd: orientation.Osd | None) -> bool:
    return osd is not None and osd.rotate != 0 and osd.confidence >= orientation.OSD_MIN_CONFIDENCE


async def _read(image: Path, page: _Page, lang: str, rotate: int, skew: float) -> tuple[dict, Image.Image]:
    """tesseract on the scan, or on a copy turned `rotate` and levelled by `skew` (when at
    least MIN_SKEW): an uncompressed PGM in a temp folder, its resolution given with --dpi.
    With the image it read (the margins are read again from it)."""
    if abs(skew) < orientation.MIN_SKEW:
        skew = 0.0
    threshold = "sauvola" if page.lighting < orientation.UNEVEN_LIGHT else "otsu"
    options = ("-c", "thresholding_method=2") if threshold == "sauvola" else ()
    seen = page.image
    if not rotate and not skew:
        result = parse_tsv(await run_tesseract(image, *options, "-l", lang, "tsv"))
    else:
        with tempfile.TemporaryDirectory(prefix="ar-ocr-") as tmp:
            turned = Path(tmp) / f"{image.stem}.pgm"
            seen = await asyncio.to_thread(_save_upright, page, rotate, skew, turned)
            dpi = ("--dpi", str(round(page.dpi[0]))) if page.dpi else ()
            result = parse_tsv(await run_tesseract(turned, *dpi, *options, "-l", lang, "tsv", what=str(image)))
    return {**result, "text_source": "ocr", "lang": lang, "rotated": rotate, "deskewed": skew,
            "lighting": page.lighting, "threshold": threshold}, seen


async def read_margins(image: Path, seen: Image.Image, dpi: tuple | None, result: dict, lang: str) -> list[dict]:
    """The words of a second reading of the print the first reading `result` left unread in the
    top and bottom margins of `seen`, the image it read (a lone page number:
    pipeline/margins.py), each patch read as one word, with its band, box and confidence.
    Evidence for the layout's page numbers, never part of the page's text."""
    patches = await asyncio.to_thread(margins.unread_patches, seen, result)
    dpi = ("--dpi", str(round(dpi[0]))) if dpi else ()
    words = []
    for band, box in patches:
        crop, left, top = margins.crop(seen, box)
        data = io.BytesIO()
        crop.save(data, "PPM")
        tsv = await run_tesseract("stdin", "--psm", "8", *dpi, "-l", lang, "tsv", stdin=data.getvalue(),
                                  what=f"{image} (its {band} margin)")
        for word in (w for b in parse_tsv(tsv)["blocks"] for ln in b["lines"] for w in ln["words"]):
            x, y, w, h = word["bbox"]
            words.append({"band": band, "text": word["text"], "confidence": word["confidence"],
                          "bbox": [x + left, y + top, w, h]})
    return words


def text_layer_usable(text: str) -> bool:
    """A PDF's text layer worth taking instead of OCR: at least TEXT_LAYER_MIN_CHARS characters
    that are not spaces, and of them at least TEXT_LAYER_MIN_LETTERS letters (or spaces). A
    page of prose is over 90% letters; a layer of glyph codes, symbols or a scanner's stamp is not."""
    chars = [c for c in text if not c.isspace()]
    if len(chars) < TEXT_LAYER_MIN_CHARS:
        return False
    return sum(c.isalpha() for c in chars) / len(chars) >= TEXT_LAYER_MIN_LETTERS


@functools.cache  # asked once per command, however many books it checks
def installed_languages() -> frozenset[str]:
    try:
        done = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise OcrError("tesseract is not installed (Debian: apt-get install tesseract-ocr)") from None
    return frozenset(line.strip() for line in done.stdout.splitlines()[1:] if line.strip())


def check_languages(lang: str) -> str:
    """`lang` (Tesseract codes joined by +) when every one is installed; else a usage error."""
    codes = lang.split("+")
    installed = installed_languages()
    missing = [c for c in codes if c not in installed or c == "osd"]
    if missing:
        named = "+".join(c for c in missing if c) or repr(lang)
        raise UsageError(f"OCR language {named} is not installed "
                         f"(installed: {'+'.join(sorted(installed - {'osd'})) or 'none'}; "
                         "Debian: apt-get install tesseract-ocr-CODE)")
    return lang


class OcrStage(Stage):
    """Tesseract on each page, one process per core at a time; or the PDF's text layer.

    Options: `lang` (kept in the ledger's meta for later runs; default eng) and `text_layer`
    (use, ignore, auto)."""

    def __init__(self, ctx, spec):
        super().__init__(ctx, spec)
        kept = kept_language(ctx.ledger)
        self.lang = ctx.options.get("lang") or kept
        self.text_layer = ctx.options.get("text_layer") or "auto"
        self.read_page = page_runner(ocr_page)  # here, or on Ray (pipeline/executor.py)
        self.slots = ctx.ocr_slots or OcrSlots(ctx.workers)  # the run's, shared by its books
        if self.lang != kept:
            ctx.ledger.set_meta("lang", self.lang)

    @classmethod
    def check_ready(cls, spec, book, options):
        """The languages are installed; and a change of language says which pages were read
        in the old one (also when the book is done, and so nothing of this stage is built)."""
        kept, done = read_ledger(book, lambda ledger: (kept_language(ledger), len(ledger.done_pages(spec.name))),
                                 (DEFAULT_LANG, 0))
        lang = check_languages(options.get("lang") or kept)
        if lang != kept and done:
            log_event(log, f"{pages(done)} were read in {kept}, not {lang}: run `ar.py clean {book.id} "
                      f"{spec.name}` to read them again in {lang}", logging.WARNING, book=book.id)

    @property
    def concurrency(self) -> int:
        return self.slots.size

    async def process_page(self, page: int) -> dict:
        image = self.ctx.book.source_image(page)
        layer = image.with_suffix(".txt")
        if self.text_layer != "ignore" and layer.is_file():
            text = layer.read_text(encoding="utf-8", errors="replace")
            if self.text_layer == "use" or text_layer_usable(text):
                return {"page": page, "text": text.strip(), "text_source": "text_layer", "lang": self.lang,
                        "mean_confidence": None, "blocks": [],
                        "flags": {} if text.strip() else {"no_text": "the page's text layer is empty"}}
        async with self.slots:  # one core each, whichever book it is
            return {"page": page, **await self.read_page(image, self.lang)}
