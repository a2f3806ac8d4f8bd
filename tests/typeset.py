"""Typeset pages as Tesseract reports them (ocr/page_NNNN.json: blocks of lines with their
boxes), for tests of the layout and the merge: body lines of one size in a column, and the
furniture and headings a printed book has, where a printer puts them."""
from __future__ import annotations

WIDTH, HEIGHT = 1000, 1500
LEFT, RIGHT = 100, 900  # the body column
SIZE, GAP = 30, 14  # body line height and the gap between two body lines


class Page:
    def __init__(self, top: int = 150):
        self.y = top
        self.blocks: list[dict] = []

    def _line(self, text: str, left: int, right: int, size: int, gap_before: int, new_block: bool) -> "Page":
        self.y += gap_before
        box = [left, self.y, right - left, size]
        if new_block or not self.blocks:
            self.blocks.append({"bbox": list(box), "lines": []})
        self.blocks[-1]["lines"].append({"bbox": box, "text": text, "words": [{"text": w} for w in text.split()]})
        self.y += size
        return self

    def body(self, text: str, indent: bool = False, short: bool = False) -> "Page":
        """A body line: full width unless `short` (a paragraph's last line), indented when it
        opens a paragraph."""
        right = LEFT + 15 * len(text) if short else RIGHT
        return self._line(text, LEFT + (45 if indent else 0), min(right, RIGHT), SIZE, GAP, False)

    def verse(self, text: str) -> "Page":
        return self._line(text, LEFT + 60, LEFT + 60 + 14 * len(text), SIZE, GAP, False)

    def centred(self, text: str, size: int = SIZE, space: int = 3 * SIZE) -> "Page":
        half = 9 * len(text) * size // SIZE
        return self._line(text, 500 - half, 500 + half, size, space, True)._space(space)

    def heading(self, text: str) -> "Page":
        return self.centred(text, size=int(SIZE * 1.6))

    def header(self, text: str) -> "Page":
        """A running header: the top line, a wide gap under it."""
        return self.centred(text, space=0)._space(3 * SIZE)

    def folio(self, text: str, bottom: bool = True) -> "Page":
        if bottom:
            self.y = max(self.y + 3 * SIZE, 1350)
            return self._line(text, 490, 510, SIZE, 0, True)
        return self._line(text, 490, 510, SIZE, 0, True)._space(3 * SIZE)

    def footnote(self, text: str, first: bool = True) -> "Page":
        return self._line(text, LEFT, RIGHT, int(SIZE * 0.75), 2 * SIZE if first else 8, first)

    def _space(self, gap: int) -> "Page":
        self.y += gap
        self.blocks.append({"bbox": [0, 0, 0, 0], "lines": []})  # what follows is a new block
        return self

    def ocr(self) -> dict:
        blocks = [b for b in self.blocks if b["lines"]]
        return {"width": WIDTH, "height": HEIGHT, "blocks": blocks,
                "text": "\n\n".join("\n".join(ln["text"] for ln in b["lines"]) for b in blocks)}


def book(*pages: Page) -> dict[int, dict]:
    return {n: p.ocr() for n, p in enumerate(pages, start=1)}
