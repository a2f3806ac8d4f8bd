"""merge: the book's text from its pages, deterministically, and its metadata.

book.md holds the pages in order with their breaks marked (`<!-- page N -->`), running
headers and page numbers removed, paragraphs re-flowed and words hyphenated across lines or
pages joined. structured/metadata.json holds the title, pages, stages and their costs.
"""
from __future__ import annotations

import re
from collections import Counter

from infra.storage import atomic_write_bytes, atomic_write_json
from pipeline.reports import status_report
from pipeline.stage import Stage

_PAGE_NUMBER = re.compile(r"^[\W_]*(\d{1,4}|[ivxlcdm]{1,7})[\W_]*$", re.IGNORECASE)
_HEADING = re.compile(r"^(#+\s*)?((chapter|part|book|section)\b.*)$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?:;\"'’”)\]]$")


def _key(line: str) -> str:
    """A header's identity, whatever the page number or OCR noise on it."""
    return re.sub(r"[^a-z]", "", line.lower())


def _edge_lines(lines: list[str]) -> tuple[int, int]:
    """Indexes of the first and last non-blank lines."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return (filled[0], filled[-1]) if filled else (-1, -1)


def strip_furniture(pages: list[str]) -> list[list[str]]:
    """Drop page numbers (a lone number on the first or last line) and running headers
    (a first line that recurs as the first line of other pages)."""
    split = [p.splitlines() for p in pages]
    for lines in split:
        for edge in sorted(set(_edge_lines(lines)), reverse=True):
            if edge >= 0 and _PAGE_NUMBER.match(lines[edge].strip()):
                del lines[edge]
    firsts = Counter(_key(lines[_edge_lines(lines)[0]]) for lines in split if _edge_lines(lines)[0] >= 0)
    for lines in split:
        first, _ = _edge_lines(lines)
        if first >= 0 and len(split) > 1 and firsts[_key(lines[first])] > 1 and _key(lines[first]):
            del lines[first]
    return split


def paragraphs(lines: list[str]) -> list[str]:
    """Re-flow a page's lines into paragraphs, joining words hyphenated across lines."""
    out: list[str] = []
    current = ""
    for raw in lines + [""]:
        line = raw.strip()
        if not line:
            if current:
                out.append(current)
            current = ""
        elif _HEADING.match(line) and not current:
            out.append("# " + _HEADING.match(line).group(2).strip())
        else:
            current = join_text(current, line)
    return out


def join_text(left: str, right: str) -> str:
    if not left:
        return right
    if re.search(r"[A-Za-z]-$", left) and right[:1].islower():
        return left[:-1] + right
    return f"{left} {right}"


def book_markdown(pages: list[str]) -> str:
    blocks: list[str] = []
    continues = False  # does the last block run on into the next page?
    for number, lines in enumerate(strip_furniture(pages), start=1):
        paras = paragraphs(lines)
        marker = f"<!-- page {number} -->"
        if continues and paras and paras[0][:1].islower():
            blocks[-1] = join_text(blocks[-1], paras.pop(0))
        blocks.append(marker)
        blocks.extend(paras)
        last = blocks[-1]
        continues = bool(paras) and not last.startswith("#") and not _SENTENCE_END.search(last)
    return "\n\n".join(blocks) + "\n"


def title_of(markdown: str, fallback: str) -> str:
    for line in markdown.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return fallback


class MergeStage(Stage):
    """Reads the one page stage its declaration names: the pages' final text."""

    async def run_book(self) -> None:
        book = self.ctx.book
        texts = [final["text"] for p in range(1, book.page_count() + 1) for final in self.inputs(p)]
        markdown = book_markdown(texts)
        atomic_write_bytes(book.text_path, markdown.encode())
        status = status_report(book)
        metadata = {
            "book": book.id,
            "title": title_of(markdown, book.id),
            "pages": status["pages"],
            "total_cost_usd": status["total_cost_usd"],
            # merge itself is done once this file is written
            "stages": {name: {"done": s["total"] if name == self.name else s["done"],
                              "total": s["total"], "cost_usd": s["cost_usd"]}
                       for name, s in status["stages"].items()},
        }
        atomic_write_json(book.metadata_path, metadata)
