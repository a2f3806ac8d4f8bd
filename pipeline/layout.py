"""layout: what each OCR line is, from Tesseract's geometry (line boxes and sizes), never
from a text pattern alone.

Labels: `header`/`footer` (a running line in the margin, standing apart from the body and
recurring on other pages once its page number is taken out), `folio` (a printed page number,
arabic or roman, at the page's top or bottom, agreeing with the scan order on other pages),
`heading` (a short line standing apart with a larger size or centred), `footnote` (smaller
print under the body, opening with a marker), `toc`/`list`/`verse` (lines whose breaks are
kept) and `body`. Only header, footer and folio lines are furniture, removed from the book,
and only on strong evidence: when in doubt a line is body and is kept. Every removal is
recorded (structured/furniture.json). A page read from a PDF's text layer has no geometry:
all its lines are kept.

The analysis is a pure function of the OCR pages (`analyse`), so merge can run it again over
the pages a stopped run has (a partial book) and the result never depends on timing.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import NamedTuple

from infra.storage import atomic_write_json
from pipeline.stage import Stage

FURNITURE = ("header", "footer", "folio")
KEPT_BREAKS = ("toc", "list", "verse")
_ROMAN = re.compile(r"^m{0,3}(cm|cd|d?c{0,3})(xc|xl|l?x{0,3})(ix|iv|v?i{0,3})$")
NUMBER_SHAPE = re.compile(r"^[\W_]{0,3}(\d{1,4}|[ivxlcdm]{1,8})[\W_]{0,3}$", re.IGNORECASE)
_EDGE_NUMBER = re.compile(r"^(\d{1,4}|[ivxlcdm]{1,8})\s+\S|\S\s+(\d{1,4}|[ivxlcdm]{1,8})$", re.IGNORECASE)
_MARKER = re.compile(r"^([*†‡§¶]+|\d{1,2}|[¹²³⁴⁵⁶⁷⁸⁹⁰]+)[.)]?(?=\s|$)")
_TOC_LINE = re.compile(r"^(?P<title>.*[^\s.…·])[\s.…·]{2,}(?P<page>\d{1,4}|[ivxlc]{1,7})$", re.IGNORECASE)
_LIST_ITEM = re.compile(r"^([•·▪◦–—-]|\d{1,2}[.)]|\([a-z0-9]{1,3}\)|[a-z][.)])\s", re.IGNORECASE)
_CHAPTER_WORD = re.compile(r"^\W*(chapter|book|part|canto|act|section)\b", re.IGNORECASE)

# Evidence thresholds, in units of the book's body line height H.
APART = 0.6  # a line stands apart when the gap to its neighbour exceeds the body's by this
LARGER = 1.25  # a heading's line is at least this much taller than body lines
WIDER = 1.5  # or its letters at least this much wider (capitals are about 1.3 times)
SMALLER = 0.88  # footnote print is at most this tall
CENTRED = 1.0  # a centred line's left and right margins differ by at most this
INDENT = 0.8  # a paragraph's first line starts at least this far right of the column
# A number the OCR read again in a margin counts from this word confidence (0..100): the margin
# folios of bench/structure.py's pages read at 50-97 (a blurred "ii" the lowest); what is not
# a number (a speck, a rule) is refused by its shape, and a number by the scan's step.
MARGIN_CONFIDENCE = 40.0


def roman_value(text: str) -> int | None:
    text = text.lower()
    if not text or not _ROMAN.match(text):
        return None
    values = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100, "d": 500, "m": 1000}
    total = 0
    for a, b in zip(text, text[1:] + " "):
        total += -values[a] if b != " " and values[a] < values[b] else values[a]
    return total


def number_of(token: str) -> tuple[str, int] | None:
    """('arabic'|'roman', value) of a folio's token, or None."""
    if token.isdigit():
        return "arabic", int(token)
    value = roman_value(token)
    return ("roman", value) if value else None


def lone_number(text: str) -> tuple[str, str, int] | None:
    """(token, 'arabic'|'roman', value) of a line that is a page number alone ("12", "- 12 -", "xiv")."""
    alone = NUMBER_SHAPE.match(text.strip())
    parsed = number_of(alone.group(1)) if alone else None
    return (alone.group(1), *parsed) if parsed else None


@dataclass
class Line:
    text: str
    box: list[int] | None = None  # left, top, width, height (None: no geometry)
    block: int = 0
    label: str = "body"
    why: str = ""
    paragraph: bool = False  # the first line of a paragraph
    marker: str = ""  # a footnote's marker

    @property
    def top(self) -> int:
        return self.box[1]

    @property
    def bottom(self) -> int:
        return self.box[1] + self.box[3]

    @property
    def left(self) -> int:
        return self.box[0]

    @property
    def right(self) -> int:
        return self.box[0] + self.box[2]

    @property
    def height(self) -> int:
        return self.box[3]


@dataclass
class PageLayout:
    page: int
    lines: list[Line]
    geometry: bool
    printed: str | None = None  # the printed page number, as printed
    printed_inferred: bool = False  # not printed on the page: from its neighbours
    printed_margin: bool = False  # read only by the OCR's second reading of the margins
    continues: bool = False  # its first body paragraph goes on from the previous page
    toc: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"page": self.page, "printed": self.printed, "printed_inferred": self.printed_inferred,
                "printed_margin": self.printed_margin,
                "continues": self.continues, "geometry": self.geometry, "toc": self.toc,
                "lines": [{k: v for k, v in asdict(line).items() if v not in ("", None, False) or k == "text"}
                          for line in self.lines]}


def page_lines(ocr: dict) -> tuple[list[Line], bool]:
    """The page's lines, top to bottom, and whether they have geometry."""
    blocks = ocr.get("blocks") or []
    if not blocks:
        return [Line(t.strip()) for t in ocr.get("text", "").splitlines() if t.strip()], False
    lines = [Line(line["text"], list(line["bbox"]), b) for b, block in enumerate(blocks)
             for line in block["lines"] if line.get("text", "").strip()]
    return lines, True


@dataclass
class Metrics:
    """A page's measures (or the book's, for a page with too few lines of its own)."""
    height: float  # body line height H
    gap: float  # the usual gap between two body lines
    char: float  # the usual width of a body character
    columns: list[tuple[float, float]]  # each text column's left and right edges, left to right

    @property
    def left(self) -> float:
        return self.columns[0][0]

    @property
    def right(self) -> float:
        return self.columns[-1][1]

    def column(self, ln: Line) -> tuple[float, float]:
        """The column a line stands in: the last one starting left of it (an indent aside)."""
        inside = [c for c in self.columns if c[0] <= ln.left + self.height]
        return inside[-1] if inside else self.columns[0]


def _metrics(pages: list[list[Line]]) -> Metrics | None:
    """Body line height and gap, and the columns: lines of 3+ words grouped by where they
    start (a new column starts over 10 line heights right of the last)."""
    lines = [ln for page in pages for ln in page if ln.box and len(ln.text.split()) >= 3]
    if not lines:
        return None
    height = median(ln.height for ln in lines)
    gaps = [b.top - a.bottom for page in pages for a, b in zip(page, page[1:])
            if a.box and b.box and a.block == b.block and 0 <= b.top - a.bottom < 2 * height]
    groups: list[list[Line]] = []
    for ln in sorted(lines, key=lambda ln: ln.left):
        if groups and ln.left - groups[-1][-1].left <= 10 * height:
            groups[-1].append(ln)
        else:
            groups.append([ln])
    big = [g for g in groups if len(g) >= 3] or groups
    columns = []
    for g in big:
        lefts, rights = sorted(ln.left for ln in g), sorted(ln.right for ln in g)
        columns.append((lefts[len(lefts) // 4], rights[(9 * len(rights)) // 10]))
    char = median(ln.box[2] / len(ln.text) for ln in lines)
    return Metrics(height, median(gaps) if gaps else height * 0.4, char, columns)


def _page_metrics(lines: list[Line], book: Metrics) -> Metrics:
    """The page's own measures when it has enough lines (a book of mixed pages), else the book's."""
    if sum(1 for ln in lines if len(ln.text.split()) >= 3) >= 5:
        return _metrics([lines]) or book
    return book


def _room_after(ln: Line, m: Metrics, following: str) -> bool:
    """Whether `following`'s first word would have fitted at the end of line `ln`: then the
    line ended by choice (a paragraph's end), not because the column was full. Works for
    justified and ragged-right setting alike."""
    word = following.split()[0] if following.split() else ""
    char = ln.box[2] / max(1, len(ln.text))
    return m.column(ln)[1] - ln.right > (len(word) + 3) * char  # 3: room for a scan's noise


def _apart_below(lines: list[Line], i: int, m: Metrics) -> bool:
    return i + 1 >= len(lines) or lines[i + 1].top - lines[i].bottom > m.gap + APART * m.height


def _apart_above(lines: list[Line], i: int, m: Metrics) -> bool:
    return i == 0 or lines[i].top - lines[i - 1].bottom > m.gap + APART * m.height


def _key(text: str, folio: str | None) -> str:
    """A running line's identity: its letters, its digits kept unless they are the folio (a
    chapter's number is never taken for one: "Chapter 2" on page 2)."""
    words = text.lower().split()
    if folio and words and not _CHAPTER_WORD.match(text) and folio.lower() in (words[0].strip(".-—[]()"), words[-1].strip(".-—[]()")):
        words = [w for w in words if w.strip(".-—[]()") != folio.lower()]
    return re.sub(r"[^a-z0-9]", "", " ".join(words))


class Candidate(NamedTuple):
    line: int | None  # the page's line that is (or carries) the number; None: read only in the margin
    token: str
    kind: str
    value: int
    alone: bool  # a number alone on its line, not at the end of a header
    margin: bool = False  # from the OCR's second reading of the margins


def _folio_candidates(lines: list[Line], m: Metrics) -> list[Candidate]:
    """A number alone on the first or last line, or at either end of it (a header carrying the
    page number, never a heading like "CHAPTER 2"), in print no larger than the body's."""
    out = []
    for i in sorted({0, len(lines) - 1}):
        text = lines[i].text.strip()
        if lines[i].height > 1.1 * m.height:
            continue  # a number in large print is a chapter's or a section's
        alone = lone_number(text)
        edge = None if alone or _CHAPTER_WORD.match(text) else _EDGE_NUMBER.search(text)
        token = edge and (edge.group(1) or edge.group(2))
        parsed = number_of(token) if token else None
        if alone:
            out.append(Candidate(i, *alone, True))
        elif parsed:
            out.append(Candidate(i, token, *parsed, False))
    return sorted(out, key=lambda c: not c.alone)  # a number alone first


def _margin_candidates(words: list[dict], lines: list[Line], m: Metrics) -> list[Candidate]:
    """Numbers the OCR's second reading found alone in the page's margins (pipeline/margins.py),
    sure enough. Where one stands on a line of the first
    reading (a short word alone, misread: "il" for "ii"), that line is the folio."""
    out = []
    for word in words:
        number = lone_number(word["text"])
        # its box may take in a speck beside it: the patch it was read from had the size of print
        if not number or word["confidence"] < MARGIN_CONFIDENCE or word["bbox"][3] > 1.6 * m.height:
            continue
        x, y, w, h = word["bbox"]
        under = [i for i, ln in enumerate(lines) if ln.box and len(ln.text.split()) == 1
                 and ln.left < x + w and x < ln.right and ln.top < y + h and y < ln.bottom]
        out.append(Candidate(under[0] if under else None, *number, True, margin=True))
    return out


def analyse(ocr_pages: dict[int, dict]) -> list[PageLayout]:
    """Every page's labelled lines, from the OCR pages (scan page -> its ocr JSON)."""
    numbers = sorted(ocr_pages)
    read = {p: page_lines(ocr_pages[p]) for p in numbers}
    layouts = {p: PageLayout(p, lines, geo) for p, (lines, geo) in read.items()}
    book_metrics = _metrics([layouts[p].lines for p in numbers if layouts[p].geometry])
    if book_metrics is not None:
        m = {p: _page_metrics(layouts[p].lines, book_metrics) for p in numbers if layouts[p].geometry}
        _find_folios(layouts, m, {p: ocr_pages[p].get("margins") or [] for p in m})
        _find_running_lines(layouts, m)
        for p, page_m in m.items():
            _label_page(layouts[p], page_m)
            _mark_verse(layouts[p].lines, page_m)
    for layout in layouts.values():
        _kept_breaks(layout)
    if book_metrics is not None:
        _find_continuations([layouts[p] for p in numbers], m)
    _infer_page_numbers([layouts[p] for p in numbers])
    return [layouts[p] for p in numbers]


def _find_folios(layouts: dict[int, PageLayout], m: dict[int, Metrics], margins: dict[int, list[dict]]) -> None:
    """A number on a page's edge (or read again alone in its margin) is a folio when its value
    less the scan page agrees with another page's: printed page numbers advance with the scan,
    a chart's axis labels or a section's "II" do not. One roman number alone in lower case
    agrees with the scan itself when its value is its scan page (front matter is counted from
    the book's first leaf: the contents on page ii). The page's own reading comes first."""
    found = {p: _folio_candidates(layouts[p].lines, page_m) + _margin_candidates(margins[p], layouts[p].lines, page_m)
             for p, page_m in m.items()}
    offsets = Counter((c.kind, c.value - p) for p, cands in found.items() for c in cands)
    for p, cands in found.items():
        for c in cands:
            # roman page numbers are set in lower case; "II", "III" on pages in a row are sections
            least = 3 if c.kind == "roman" and c.token.isupper() else 2
            front = c.kind == "roman" and c.token.islower() and c.alone and c.value == p
            if (offsets[(c.kind, c.value - p)] >= least or front) and layouts[p].printed is None:
                layouts[p].printed, layouts[p].printed_margin = c.token, c.margin
                if c.alone and c.line is not None:
                    line = layouts[p].lines[c.line]
                    where = f" (read again alone in the margin; first read {line.text!r})" if c.margin else " on other pages"
                    line.label, line.why = "folio", f"page number {c.token}, in step with the scan{where}"


def _set_apart_as_running(ln: Line, m: Metrics, printed: str | None) -> bool:
    """What marks a running line beside its place: centred, smaller print, capitals, or the
    page's number on it. A body line ("Yes." alone at a page's top) has none of these."""
    left, right = m.column(ln)
    centred = abs((ln.left - left) - (right - ln.right)) <= CENTRED * m.height and ln.left - left > 2 * m.height
    letters = [c for c in ln.text if c.isalpha()]
    capitals = len(letters) >= 4 and all(c.isupper() for c in letters)
    numbered = bool(printed) and printed.lower() in ln.text.lower().split()
    return centred or ln.height <= SMALLER * m.height or capitals or numbered


def _find_running_lines(layouts: dict[int, PageLayout], m: dict[int, Metrics]) -> None:
    """A page's first (last) line is a running header (footer) when it stands apart from the
    body and the same line, its page number aside, opens (closes) other pages: on 3 or more
    pages, or on 2 when it is set apart as running lines are (centred, smaller, capitals,
    numbered); or a header once only (a short chapter's title) when it carries the page's
    number, in step with the scan, at its start or end, in print no larger than the body's
    (never a footer: a footnote may open with the page's number as its marker)."""
    for label, edge, apart in (("header", 0, _apart_below), ("footer", -1, _apart_above)):
        found: dict[int, tuple[Line, str]] = {}
        for p, layout in layouts.items():
            lines = [ln for ln in layout.lines if ln.label != "folio"]
            if not layout.geometry or len(lines) < 2:
                continue
            i = edge % len(lines)
            if apart(lines, i, m[p]):
                key = _key(lines[i].text, layout.printed)
                if len(key) >= 2:
                    found[p] = (lines[i], key)
        heights: dict[str, list[int]] = {}
        for line, key in found.values():
            heights.setdefault(key, []).append(line.height)
        # a line of another size (the title page's title, larger than the running title) is not one of them
        found = {p: (line, key) for p, (line, key) in found.items()
                 if abs(line.height - median(heights[key])) <= 0.25 * median(heights[key])}
        counts = Counter(key for _, key in found.values())
        for p, (line, key) in found.items():
            printed = layouts[p].printed
            words = line.text.split()
            numbered = (label == "header" and bool(printed) and printed in (words[0], words[-1])
                        and line.height <= 1.1 * m[p].height and not _CHAPTER_WORD.match(line.text))
            if counts[key] >= 3 or (counts[key] == 2 and _set_apart_as_running(line, m[p], printed)):
                line.label, line.why = label, f"running {label}: stands apart and recurs on {counts[key] - 1} other pages"
            elif numbered:
                line.label, line.why = label, f"running {label}: stands apart and carries page number {printed}"


def _label_page(layout: PageLayout, m: Metrics) -> None:
    lines = [ln for ln in layout.lines if ln.label not in FURNITURE]
    # footnotes: smaller print under the body, apart from it, opening with a marker
    def shorter(ln: Line) -> bool:
        return ln.height <= SMALLER * m.height

    def narrower(ln: Line) -> bool:
        return ln.box[2] / max(1, len(ln.text)) <= SMALLER * m.char

    foot = len(lines)
    for i in range(len(lines) - 1, 0, -1):
        if not (shorter(lines[i]) or narrower(lines[i])):  # either: a scan's line heights are noisy
            break
        # where it stands apart from the body, or is smaller both ways (no room left above it)
        if _MARKER.match(lines[i].text) and (_apart_above(lines, i, m) or shorter(lines[i]) and narrower(lines[i])):
            foot = i
            break
    for ln in lines[foot:]:
        ln.label = "footnote"
        marker = _MARKER.match(ln.text)
        if marker:
            ln.marker, ln.paragraph = marker.group(1), True
    body = lines[:foot]
    for i, ln in enumerate(body):
        text = ln.text.strip()
        # larger print: taller, or wider letters (a line in capitals is no taller than body text)
        larger = ln.height >= LARGER * m.height or ln.box[2] / max(1, len(text)) >= WIDER * m.char
        margin_left, margin_right = ln.left - m.left, m.right - ln.right
        centred = abs(margin_left - margin_right) <= CENTRED * m.height and margin_left > 2 * m.height
        shape = (len(text) <= 70 and len(text.split()) <= 10 and any(c.isalpha() for c in text)
                 and not text[0].islower() and not re.search(r"[,;\-–]$", text))
        if shape and (larger or centred) and _apart_below(body, i, m) and _apart_above(body, i, m):
            ln.label = "heading"
            ln.why = "larger print" if larger else "centred"
            ln.why += ", standing apart"
            continue
        prev = body[i - 1] if i else None
        left, _ = m.column(ln)
        indented = ln.left - left >= INDENT * m.height
        ln.paragraph = (prev is None or prev.label != "body" or indented or _apart_above(body, i, m)
                        or (m.column(prev)[0] == left and _room_after(prev, m, ln.text)))
        if prev is None and not indented:
            ln.paragraph = False  # decided by _find_continuations


def _body(layout: PageLayout) -> list[Line]:
    return [ln for ln in layout.lines if ln.label in ("body", "verse", "list", "toc")]


def _find_continuations(layouts: list[PageLayout], m: dict[int, Metrics]) -> None:
    """A page's first paragraph goes on from the previous page when the previous page's last
    body line runs to its column's end or has no sentence end, and this page's first line is
    not indented: the case of its first letter says nothing."""
    for before, layout in zip(layouts, layouts[1:]):
        last, first = _body(before), [ln for ln in layout.lines if ln.label not in FURNITURE + ("footnote",)]
        if not last or not first or first[0].label != "body" or last[-1].label != "body":
            if first:
                first[0].paragraph = True
            continue
        a, b = last[-1], first[0]
        ends = bool(re.search(r"[.!?:;\"'’”)\]]$", a.text.strip()))
        if a.box and b.box and before.page in m and layout.page in m:
            ma, mb = m[before.page], m[layout.page]
            full = not _room_after(a, ma, b.text)
            indented = b.left - mb.column(b)[0] >= INDENT * mb.height
            layout.continues = not indented and (full or not ends)
        else:
            layout.continues = not ends
        b.paragraph = not layout.continues


def _kept_breaks(layout: PageLayout) -> None:
    """Runs of lines whose breaks are the text: a table of contents (3+ lines ending in a page
    number), a list (2+ items) and verse (3+ short lines in a block, with geometry)."""
    lines = layout.lines
    _runs(lines, lambda ln: ln.label == "body" and bool(_TOC_LINE.match(ln.text.strip())), 3, "toc")
    _runs(lines, lambda ln: ln.label == "body" and bool(_LIST_ITEM.match(ln.text.strip())), 2, "list")
    for ln in lines:
        if ln.label == "toc":
            match = _TOC_LINE.match(ln.text.strip())
            layout.toc.append({"title": match.group("title").strip(), "printed": match.group("page")})


def _runs(lines: list[Line], test, least: int, label: str) -> None:
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and test(lines[j]):
            j += 1
        if j - i >= least:
            for ln in lines[i:j]:
                ln.label, ln.paragraph = label, True
        i = max(j, i + 1)


def _mark_verse(lines: list[Line], m: Metrics) -> None:
    """Verse: 3+ consecutive body lines of one block, each ending well short of the column
    though the next line's first word would have fitted, none hyphenated."""
    def short(ln: Line, nxt: Line | None) -> bool:
        return (ln.label == "body" and m.column(ln)[1] - ln.right >= 4 * m.height
                and not ln.text.rstrip().endswith("-") and (nxt is None or _room_after(ln, m, nxt.text)))
    i = 0
    while i < len(lines):
        j = i
        while (j < len(lines) and lines[j].block == lines[i].block
               and short(lines[j], lines[j + 1] if j + 1 < len(lines) and lines[j + 1].block == lines[i].block
                         else None)):
            j += 1
        if j - i >= 3:
            for ln in lines[i:j]:
                ln.label, ln.paragraph = "verse", ln is lines[i] or ln.paragraph
        i = max(j, i + 1)


def _infer_page_numbers(layouts: list[PageLayout]) -> None:
    """A page without a folio (a chapter's opening, a plate) takes the number its neighbours
    imply, marked as inferred."""
    last: tuple[str, int, int] | None = None  # kind, value, scan page
    for layout in layouts:
        if layout.printed:
            kind, value = number_of(layout.printed)
            last = (kind, value, layout.page)
        elif last and last[0] == "arabic":
            layout.printed, layout.printed_inferred = str(last[1] + layout.page - last[2]), True
    nxt: tuple[str, int, int] | None = None
    for layout in reversed(layouts):
        if layout.printed and not layout.printed_inferred:
            kind, value = number_of(layout.printed)
            nxt = (kind, value, layout.page)
        elif not layout.printed and nxt and nxt[0] == "arabic" and nxt[1] - (nxt[2] - layout.page) >= 1:
            layout.printed, layout.printed_inferred = str(nxt[1] - (nxt[2] - layout.page)), True


class LayoutStage(Stage):
    """Labels every OCR line of the book (a book stage: recurrence needs every page)."""

    async def run_book(self) -> None:
        book = self.ctx.book
        ocr = {p: page for p in range(1, book.page_count() + 1) for page in self.inputs(p)}
        write_layout(book, analyse(ocr))


def write_layout(book, layouts: list[PageLayout]) -> None:
    root = book.root / "structured"
    atomic_write_json(root / "layout.json", {"pages": [ly.to_json() for ly in layouts]})
    atomic_write_json(root / "page_map.json", {"pages": [
        {"scan": ly.page, "printed": ly.printed, "inferred": ly.printed_inferred, "margin": ly.printed_margin}
        for ly in layouts]})
    atomic_write_json(root / "furniture.json", {"pages": [
        {"scan": ly.page, "removed": [{"text": ln.text, "label": ln.label, "why": ln.why}
                                     for ln in ly.lines if ln.label in FURNITURE]}
        for ly in layouts]})


def read_layout(book) -> list[PageLayout]:
    data = json.loads((book.root / "structured" / "layout.json").read_bytes())
    return [PageLayout(d["page"], [Line(**ln) for ln in d["lines"]], d["geometry"], d["printed"],
                       d["printed_inferred"], d.get("printed_margin", False), d["continues"], d["toc"])
            for d in data["pages"]]
