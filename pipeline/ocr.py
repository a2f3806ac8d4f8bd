"""ocr: Tesseract on each page image; words, lines, blocks and their confidences, as JSON.

One `tesseract` process per page, one page per core at a time, each with OMP_THREAD_LIMIT=1:
Tesseract's own threads help one page but cost throughput when every core is busy
(bench/ocr_throughput.py measures it against the bare command). The processes are started
straight from the event loop and their TSV parsed here (under a millisecond a page): no pool
of Python workers to start, whose imports would cost more than the parsing they would save.
"""
from __future__ import annotations

import asyncio
import ctypes
import csv
import io
import os
import signal
import subprocess
from functools import partial
from pathlib import Path

from infra.errors import OcrError
from pipeline.stage import Stage

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


async def run_tesseract(image: Path, lang: str = "eng") -> str:
    """The page's TSV from the `tesseract` command (text and confidences of every word)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "tesseract", str(image), "stdout", "-l", lang, "tsv", stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=TESSERACT_ENV, preexec_fn=partial(_detach, os.getpid()))
    except FileNotFoundError:
        raise OcrError("tesseract is not installed (Debian: apt-get install tesseract-ocr)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except (asyncio.TimeoutError, asyncio.CancelledError) as e:
        proc.kill()
        await proc.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        raise OcrError(f"{image}: tesseract took over {TIMEOUT_S // 60} minutes") from None
    if proc.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()
        raise OcrError(f"{image}: tesseract failed: {reason[-1] if reason else 'exit ' + str(proc.returncode)}")
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


async def ocr_page(image: Path, lang: str = "eng") -> dict:
    if not image.is_file():
        raise OcrError(f"{image}: no such page image")
    return parse_tsv(await run_tesseract(image, lang))


class OcrStage(Stage):
    """Tesseract on each page, one process per core at a time."""

    @property
    def concurrency(self) -> int:
        return max(1, min(self.ctx.workers, os.cpu_count() or 1))

    async def process_page(self, page: int) -> dict:
        return {"page": page, **await ocr_page(self.ctx.book.source_image(page))}
