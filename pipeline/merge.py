"""merge: the book from its corrected pages and their layout, deterministically, in O(pages).

Each corrected line is matched to the OCR line it came from (the correct stage keeps lines)
and takes that line's label from the layout stage: furniture goes (the layout recorded it),
headings become `#`, footnotes Markdown footnotes, verse, lists and a table of contents keep
their line breaks, paragraphs are re-flowed. Where the match is unsure the line is kept as
body. A page's break is marked `<!-- page N -->` (N the scan page); inside a paragraph that
runs on across the page the marker stands inline and the paragraph stays one.

Writes book.md, book.txt, book.epub (pipeline/epub.py) and structured/metadata.json,
chapters.json and toc.json. Over the pages done so far when a run stops (`partial`): each page
takes the best text it has (fix's, else correct's) and a page not yet corrected is an HTML
comment in its place.
"""
from __future__ import annotations

import difflib
import logging
import re
import time
from dataclasses import dataclass, field
from html import escape

from infra.logs import log_event
from infra.storage import atomic_write_bytes, atomic_write_json
from pipeline import epub
from pipeline.layout import FURNITURE, KEPT_BREAKS, NUMBER_SHAPE, Line, PageLayout, analyse, read_layout, write_layout
from pipeline.reports import status_report
from pipeline.stage import Stage, kept_language

log = logging.getLogger("ar.merge")
_SENTENCE_END = re.compile(r"[.!?:;\"'’”)\]]$")
SURE = 0.6  # a corrected line takes its OCR line's furniture label only when this similar
NOT_CORRECTED = "not yet corrected"  # a partial book's page comments: what a page still waits for
NOT_FIXED = "corrected, not yet fixed"


@dataclass
class Paragraph:
    lines: list[str] = field(default_factory=list)
    breaks: dict[int, int] = field(default_factory=dict)  # line index -> the scan page starting there


@dataclass
class Heading:
    text: str
    level: int
    page: int


@dataclass
class Lines:  # verse, a list, a table of contents: the breaks are the text
    kind: str
    lines: list[str]


@dataclass
class PageMark:
    page: int
    missing: bool = False  # not yet corrected: no text, only the comment


@dataclass
class Note:
    number: int
    text: str


@dataclass
class Book:
    blocks: list = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    words: dict[str, int] = field(default_factory=dict)  # every in-line word: evidence for hyphens
    waiting: dict[int, str] = field(default_factory=dict)  # a partial book's page -> what it waits for


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def align(ocr: list[Line], corrected: list[str]) -> list[Line | None]:
    """For each corrected line, the OCR line it came from, or None when unsure."""
    out: list[Line | None] = [None] * len(corrected)
    matcher = difflib.SequenceMatcher(None, [_norm(ln.text) for ln in ocr], [_norm(t) for t in corrected],
                                      autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            for k in range(j2 - j1):
                out[j1 + k] = ocr[i1 + k]
    return out


def _similar(a: str, b: str) -> bool:
    a, b = _norm(a), _norm(b)
    return a == b or difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= SURE


def labelled(layout: PageLayout, text: str) -> list[tuple[str, Line]]:
    """The corrected page's lines, each with the layout line whose label it takes (a fresh
    body line when unsure; a blank line in the text starts a paragraph when there is no
    geometry)."""
    raw = text.splitlines()
    corrected = [t.strip() for t in raw if t.strip()]
    # which non-blank lines follow a blank line (or open the page)
    follows_blank, blank = [], True
    for t in raw:
        if t.strip():
            follows_blank.append(blank)
            blank = False
        else:
            blank = True
    matched = align(layout.lines, corrected)
    out = []
    for t, ocr, new_par in zip(corrected, matched, follows_blank):
        # a folio the model corrected into another number's shape ("ii" -> "li") is still the folio
        sure = ocr is not None and (_similar(ocr.text, t) or ocr.label == "folio" and NUMBER_SHAPE.match(t))
        if ocr is None or (ocr.label in FURNITURE and not sure):
            out.append((t, Line(t, paragraph=new_par)))
        elif not layout.geometry:
            out.append((t, Line(t, label=ocr.label, paragraph=new_par or ocr.paragraph)))
        else:
            out.append((t, ocr))
    return out


def _hyphen_keeps(left: str, right: str, words: dict[str, int]) -> bool:
    """A hyphen at a line's end before a lower-case word: a real compound ("well-known") when
    the book prints the compound, or the next line goes on with more of one ("five-" /
    "and-twentieth"), or the book prints both halves and never the joined word."""
    a, b = re.findall(r"[A-Za-z]+$", left[:-1]), re.findall(r"^[a-z]+", right)
    if not a or not b:
        return False
    a, b = a[0].lower(), b[0]
    if words.get(f"{a}-{b}") or re.match(r"^[a-z]+-[A-Za-z]", right):
        return True
    if words.get(a + b):
        return False
    return bool(words.get(a)) and bool(words.get(b)) and len(a) > 2 and len(b) > 2


def join_text(left: str, right: str, words: dict[str, int] | None = None, mark: str = "") -> str:
    """`left` then `right`: a word split by a hyphen at the end of `left` made whole (its
    hyphen kept when a real compound), and a page's `mark` put after that word."""
    if not left:
        return right
    if re.search(r"[A-Za-z]-$", left) and right[:1].islower():
        first, _, rest = right.partition(" ")
        word = left + first if _hyphen_keeps(left, right, words or {}) else left[:-1] + first
        return word + (f" {mark}" if mark else "") + (f" {rest}" if rest else "")
    return f"{left} {mark + ' ' if mark else ''}{right}"


def _word_counts(texts: list[str]) -> dict[str, int]:
    """How often each word is printed whole: not the halves of a word split at a line's end."""
    counts: dict[str, int] = {}
    for text in texts:
        for line in text.splitlines():
            tokens = line.split()
            if tokens and tokens[-1].endswith("-"):
                tokens.pop()
            if tokens and tokens[0][:1].islower():
                tokens.pop(0)
            for w in re.findall(r"[A-Za-z]+(?:-[A-Za-z]+)*", " ".join(tokens)):
                counts[w.lower()] = counts.get(w.lower(), 0) + 1
    return counts


def build(layouts: list[PageLayout], texts: dict[int, str | None], unfixed: frozenset[int] = frozenset()) -> Book:
    """The book's blocks from each page's layout and corrected text (None: not yet corrected;
    a page in `unfixed` has correct's text, fix has not run on it)."""
    book = Book(words=_word_counts([t for t in texts.values() if t]))
    book.waiting = {p: NOT_CORRECTED if texts.get(p) is None else NOT_FIXED
                    for p in (ly.page for ly in layouts) if texts.get(p) is None or p in unfixed}
    open_para: Paragraph | None = None  # the last paragraph, while it may run on
    for layout in layouts:
        text = texts.get(layout.page)
        if text is None:
            book.blocks.append(PageMark(layout.page, missing=True))
            open_para = None
            continue
        lines = labelled(layout, text)
        content = [(t, ln) for t, ln in lines if ln.label not in FURNITURE]
        notes = [(t, ln) for t, ln in content if ln.label == "footnote"]
        main = [(t, ln) for t, ln in content if ln.label != "footnote"]
        first_body = next((i for i, (_, ln) in enumerate(main) if ln.label == "body"), None)
        runs_on = (open_para is not None and first_body == 0 and
                   (layout.continues if layout.geometry else not main[0][1].paragraph or
                    not _SENTENCE_END.search(open_para.lines[-1])))
        if not runs_on:
            book.blocks.append(PageMark(layout.page))
            open_para = None
        else:
            open_para.breaks[len(open_para.lines)] = layout.page
        page_paras: list[Paragraph] = []
        for i, (t, ln) in enumerate(main):
            if ln.label == "heading":
                level = 1 if ln.why.startswith("larger") or ln.text.isupper() else 2
                book.blocks.append(Heading(t, level, layout.page))
                open_para = None
            elif ln.label in KEPT_BREAKS:
                last = book.blocks[-1]
                if isinstance(last, Lines) and last.kind == ln.label and i and main[i - 1][1].label == ln.label:
                    last.lines.append(t)
                else:
                    book.blocks.append(Lines(ln.label, [t]))
                open_para = None
            elif open_para is not None and not (ln.paragraph and not (runs_on and i == 0)):
                open_para.lines.append(t)
            else:
                open_para = Paragraph([t])
                book.blocks.append(open_para)
            if open_para is not None and open_para not in page_paras:
                page_paras.append(open_para)
        _attach_notes(book, notes, page_paras)
    return book


def _attach_notes(book: Book, notes: list[tuple[str, Line]], paras: list[Paragraph]) -> None:
    """Each footnote becomes a numbered note; its marker in the page's text becomes the
    reference (or, when the marker is not found, the end of the page's last paragraph)."""
    current: Note | None = None
    for t, ln in notes:
        if ln.marker and t.startswith(ln.marker) or current is None:
            marker = ln.marker if ln.marker and t.startswith(ln.marker) else ""
            current = Note(len(book.notes) + 1, t[len(marker):].lstrip(" .)"))
            book.notes.append(current)
            if not _reference(paras, ln.marker, current.number) and paras:
                paras[-1].lines[-1] += f"[^{current.number}]"
        else:
            current.text = join_text(current.text, t, book.words)


def _reference(paras: list[Paragraph], marker: str, number: int) -> bool:
    if not marker:
        return False
    pattern = re.compile(rf"(?<=[A-Za-z.,;:!?’”\"')]){re.escape(marker)}(?=[\s.,;:!?’”]|$)")
    for para in paras:
        for k, line in enumerate(para.lines):
            if pattern.search(line):
                para.lines[k] = pattern.sub(f"[^{number}]", line, count=1)
                return True
    return False


# ---- rendering -------------------------------------------------------------------------

def paragraph_text(para: Paragraph, words: dict[str, int], mark) -> str:
    """The paragraph's lines re-flowed; `mark(page)` is put where a page starts inside it."""
    text = ""
    for k, line in enumerate(para.lines):
        text = join_text(text, line, words, mark(para.breaks[k]) if k in para.breaks else "")
    return text


def page_comment(book: Book, page: int) -> str:
    """Where scan page `page` starts in book.md, with what it still waits for in a partial book."""
    waiting = book.waiting.get(page)
    return f"<!-- page {page}: {waiting} -->" if waiting else f"<!-- page {page} -->"


def markdown(book: Book) -> str:
    out: list[str] = []
    for block in book.blocks:
        if isinstance(block, PageMark):
            out.append(page_comment(book, block.page))
        elif isinstance(block, Heading):
            out.append("#" * block.level + " " + block.text)
        elif isinstance(block, Lines):
            out.append("\\\n".join(block.lines) if block.kind != "list" else "\n".join(block.lines))
        else:
            out.append(paragraph_text(block, book.words, lambda page: page_comment(book, page)))
    out.extend(f"[^{n.number}]: {n.text}" for n in book.notes)
    return "\n\n".join(out) + "\n"


def plain_text(book: Book) -> str:
    out: list[str] = []
    for block in book.blocks:
        if isinstance(block, Heading):
            out.append(block.text)
        elif isinstance(block, Lines):
            out.append("\n".join(block.lines))
        elif isinstance(block, Paragraph):
            out.append(re.sub(r"\[\^(\d+)\]", r"[\1]", paragraph_text(block, book.words, lambda page: "")))
    if book.notes:
        out.append("Notes")
        out.extend(f"[{n.number}] {n.text}" for n in book.notes)
    return "\n\n".join(out) + "\n"


_ANCHOR = re.compile(r'id="page-(\d+)"')
_BREAK = '<span epub:type="pagebreak"'


def epub_book(book: Book, layouts: list[PageLayout], named: dict, lang: str, modified: float) -> bytes:
    """book.epub: a document per chapter (and one for what comes before the first), the notes
    in their own, and a page list of the printed page numbers. `modified`: when its text last
    changed (seconds since the epoch), its one date."""
    printed = {ly.page: ly.printed for ly in layouts}
    docs: list[epub.Document] = []
    pages: list[epub.PageTarget] = []
    parts: list[str] = []

    def label(page: int) -> str:
        return printed.get(page) or str(page)

    def anchor(page: int) -> str:
        return f'{_BREAK} role="doc-pagebreak" id="page-{page}" aria-label="{escape(label(page))}"></span>'

    def close(title: str, last: bool = False) -> None:
        """Ends the document so far; the page anchors at its end open the next one."""
        carried = []
        while parts and parts[-1].startswith(_BREAK) and not last:
            carried.insert(0, parts.pop())
        if parts:
            name, body = f"c{len(docs) + 1:03d}.xhtml", "\n".join(parts)
            docs.append(epub.Document(name, title, body))
            pages.extend(epub.PageTarget(name, f"page-{p}", label(int(p))) for p in _ANCHOR.findall(body))
        parts[:] = carried

    title = named["title"]
    for block in book.blocks:
        if isinstance(block, Heading) and block.level == 1:
            close(title)
            title = block.text
        if isinstance(block, PageMark):
            if not block.missing:
                parts.append(anchor(block.page))
        elif isinstance(block, Heading):
            parts.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif isinstance(block, Lines):
            parts.append("<p>" + "<br/>".join(escape(t) for t in block.lines) + "</p>")
        else:
            text = escape(paragraph_text(block, book.words, lambda page: f"\x00{page}\x00"))
            text = re.sub("\x00(\\d+)\x00", lambda m: anchor(int(m.group(1))), text)
            text = re.sub(r"\[\^(\d+)\]", r'<a epub:type="noteref" href="notes.xhtml#note-\1">\1</a>', text)
            parts.append(f"<p>{text}</p>")
    close(title, last=True)
    if not docs:
        docs.append(epub.Document("c001.xhtml", title, "<p></p>"))
    if book.notes:
        notes = "\n".join(f'<aside epub:type="footnote" id="note-{n.number}"><p>{n.number}. {escape(n.text)}</p></aside>'
                          for n in book.notes)
        docs.append(epub.Document("notes.xhtml", "Notes", notes))
    return epub.package(docs, pages, named["title"], named["author"], epub.language(lang),
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(modified)))


def chapters(book: Book, layouts: list[PageLayout]) -> list[dict]:
    printed = {ly.page: ly.printed for ly in layouts}
    out: list[dict] = []
    for block in book.blocks:
        if isinstance(block, Heading) and block.level == 1:
            out.append({"title": block.text, "scan_page": block.page, "printed_page": printed.get(block.page),
                        "words": 0})
        elif out and isinstance(block, (Paragraph, Lines)):
            lines = block.lines
            out[-1]["words"] += sum(len(line.split()) for line in lines)
    return out


def title_and_author(layouts: list[PageLayout], book_id: str) -> dict:
    """The title and author from evidence on the book's first pages: a `by NAME` line gives the
    author; the title is the tallest line of the first pages when it stands out, else the
    running header most pages carry, else the book's id."""
    found: dict = {"title": book_id, "title_from": "the book's id", "author": None, "author_from": None}
    first = [ln for ly in layouts[:3] for ln in ly.lines]
    for ln in first:
        by = re.match(r"^by\s+((?:[A-Z][\w.'’-]*\s*){1,5})$", ln.text.strip())
        if by and found["author"] is None:
            found["author"], found["author_from"] = by.group(1).strip(), f"a 'by' line: {ln.text.strip()!r}"
    geo = [ln for ly in layouts for ln in ly.lines if ln.box and ln.label == "body"]
    tall = [ln for ln in first if ln.box and ln.label == "heading" and len(ln.text.split()) <= 12]
    if geo and tall:
        body_height = sorted(ln.height for ln in geo)[len(geo) // 2]
        best = max(tall, key=lambda ln: ln.height)
        if best.height >= 1.5 * body_height and not re.match(r"^\W*(chapter|part|book)\b", best.text, re.I):
            found["title"], found["title_from"] = best.text.strip(), "the tallest line of the first pages"
            return found
    headers: dict[str, int] = {}  # the book's title runs on the left-hand (even) pages
    for ly in layouts:
        for ln in ly.lines:
            number = int(ly.printed) if ly.printed and ly.printed.isdigit() else ly.page
            if ln.label == "header" and number % 2 == 0:
                headers[ln.text.strip()] = headers.get(ln.text.strip(), 0) + 1
    if headers:
        text, count = max(sorted(headers.items()), key=lambda kv: kv[1])
        if count * 6 >= len(layouts) and not any(c.isdigit() for c in text):
            found["title"], found["title_from"] = text.title() if text.isupper() else text, \
                f"the running header of {count} pages"
    return found


def ocr_only_layouts(pages: list[str]) -> list[PageLayout]:
    """Layouts of pages known only by their text (no geometry): every line kept."""
    return analyse({p: {"text": t} for p, t in enumerate(pages, start=1)})


def book_markdown(pages: list[str], layouts: list[PageLayout] | None = None) -> str:
    """book.md of pages of text, with their layouts (or none: every line kept)."""
    layouts = layouts or ocr_only_layouts(pages)
    return markdown(build(layouts, dict(enumerate(pages, start=1))))


class MergeStage(Stage):
    """Reads the OCR pages (for a partial book's layout), the pages' text (fix's; in a partial
    book, correct's where fix has not run) and the layout of every OCR line (layout)."""

    def _page_stages(self):
        """The OCR stage, and the stages of text from worst to best (correct, fix)."""
        ocr, *texts = [self.ctx.registry[r] for r in self.spec.reads if self.ctx.registry[r].per_page]
        return ocr, texts

    def texts(self, sources: dict) -> dict[int, str | None]:
        """Each page's text from the stage `sources` names for it (None: no text yet)."""
        return {p: spec.read_page(self.ctx.book, p)["text"] if spec else None for p, spec in sources.items()}

    def text_written(self, sources: dict) -> float:
        """When the newest of the pages' texts was written: the EPUB's date, taken from its
        inputs, never the clock, so merging the same pages again gives the same bytes."""
        return max((spec.page_path(self.ctx.book, p).stat().st_mtime for p, spec in sources.items() if spec),
                   default=0.0)

    async def run_book(self) -> None:
        book = self.ctx.book
        _, (*_, final) = self._page_stages()
        self.write(read_layout(book), {p: final for p in range(1, book.page_count() + 1)}, partial=False)

    async def run_partial(self, done: dict[str, set[int]]) -> None:
        """The book over the pages done when a run stops: the layout of the OCR pages there
        are, each page with the best text it has (fix's, else correct's), each page not yet
        corrected an HTML comment in its place."""
        book = self.ctx.book
        ocr, texts = self._page_stages()
        pages = list(range(1, book.page_count() + 1))
        layouts = analyse({p: ocr.read_page(book, p) if p in done[ocr.name] else {"text": ""} for p in pages})
        sources = {p: next((spec for spec in reversed(texts) if p in done[spec.name]), None) for p in pages}
        try:
            write_layout(book, layouts)  # the record of what is removed, as the layout stage would write it
            self.write(layouts, sources, partial=True)
        except OSError as e:  # the disk that stopped the run: the pages are safe, the book waits
            log_event(log, f"cannot write the partial book: {e.strerror or e}", logging.WARNING, book=book.id)

    def write(self, layouts: list[PageLayout], sources: dict, partial: bool) -> None:
        """The book from `layouts` and each page's text from the stage `sources` names (None:
        not yet corrected)."""
        book = self.ctx.book
        _, (*_, final) = self._page_stages()
        texts = self.texts(sources)
        unfixed = frozenset(p for p, spec in sources.items() if spec and spec != final)
        made = build(layouts, texts, unfixed)
        md = markdown(made)
        atomic_write_bytes(book.text_path, md.encode())
        atomic_write_bytes(book.root / "book.txt", plain_text(made).encode())
        named = title_and_author(layouts, book.id)
        parts = chapters(made, layouts)
        toc = [entry for ly in layouts for entry in ly.toc]
        structured = book.root / "structured"
        atomic_write_json(structured / "chapters.json", {"chapters": parts})
        if toc:
            atomic_write_json(structured / "toc.json", {"entries": toc})
        epub_bytes = epub_book(made, layouts, named, kept_language(self.ctx.ledger),
                               self.text_written(sources))
        atomic_write_bytes(book.root / "book.epub", epub_bytes)
        status = status_report(book)
        metadata = {
            "book": book.id,
            **named,
            "partial": partial,
            "pages_missing": [p for p, t in texts.items() if t is None],
            "pages": status["pages"],
            "chapters": len(parts),
            "total_cost_usd": status["total_cost_usd"],
            # merge itself is done once this file is written
            "stages": {name: {"done": s["total"] if name == self.name and not partial else s["done"],
                              "total": s["total"], "cost_usd": s["cost_usd"]}
                       for name, s in status["stages"].items()},
        }
        atomic_write_json(book.metadata_path, metadata)

