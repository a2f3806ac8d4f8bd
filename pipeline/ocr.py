"""ocr: Tesseract on each page image; words, lines, blocks and their confidences, as JSON.

One `tesseract` process per page, one page per core at a time, each with OMP_THREAD_LIMIT=1:
Tesseract's own threads help one page but cost throughput when every core is busy
(bench/ocr_throughput.py measures it against the bare command).
"""
from __future__ import annotations

import asyncio
import ctypes
import csv
import io
import multiprocessing
import os
import signal
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipeline.stage import PageFailed, Stage

TESSERACT_ENV = {**os.environ, "OMP_THREAD_LIMIT": "1"}


class OcrError(Exception):
    pass


def run_tesseract(image: Path, lang: str = "eng") -> str:
    """The page's TSV from the `tesseract` command (text and confidences of every word)."""
    try:
        done = subprocess.run(["tesseract", str(image), "stdout", "-l", lang, "tsv"],
                              capture_output=True, env=TESSERACT_ENV, timeout=600)
    except FileNotFoundError:
        raise OcrError("tesseract is not installed (Debian: apt-get install tesseract-ocr)") from None
    except subprocess.TimeoutExpired:
        raise OcrError(f"{image}: tesseract took over 10 minutes") from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise OcrError(f"{image}: tesseract failed: {reason[-1] if reason else 'exit ' + str(done.returncode)}")
    return done.stdout.decode("utf-8", errors="replace")


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


def ocr_page(image: Path, lang: str = "eng") -> dict:
    if not image.is_file():
        raise OcrError(f"{image}: no such page image")
    return parse_tsv(run_tesseract(image, lang))


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _detach_worker(parent_pid: int) -> None:
    """OCR workers leave the terminal's process group: a Ctrl-C meant for `ar` must let
    the pages in flight finish, not kill their tesseract. But they die with `ar`: a pool
    worker holds both ends of its own task pipe, so it would never see a SIGKILLed parent go."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker outlives a SIGKILLed ar
        pass
    if os.getppid() != parent_pid:  # ar died before prctl took effect
        os._exit(1)


class OcrStage(Stage):
    """Tesseract on each page, one process per core (pages handed to a process pool)."""

    name = "ocr"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.processes = max(1, min(ctx.workers, os.cpu_count() or 1))
        # spawn: the workers are ar's own children (so they die with it) and share no state with it
        self.pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_detach_worker, initargs=(os.getpid(),))

    @property
    def concurrency(self) -> int:
        return self.processes

    async def process_page(self, page: int) -> dict:
        image = self.ctx.book.source_image(page)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.pool, ocr_page, image)
        except OcrError as e:
            raise PageFailed(str(e)) from None
        return {"page": page, **result}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
