"""How well ar keeps a book's words and finds its structure, on scanned books whose truth is
known (issue 13's figures, each against its goal).

Generates BOOKS small books from public-domain text (Dickens, A Tale of Two Cities, book 1,
chapters 1 and 5, and Twain's Huckleberry Finn, chapter 2), each with its own font, size,
spacing and furniture: running headers (alternating book and chapter titles, or the book's
title with the page number beside it), folios at the foot or at the head, roman in the front
matter and arabic after, a contents page, chapter openings, footnotes, paragraphs across
pages (starting in lower case or with a capital), words hyphenated across lines and pages,
real compounds ("well-known") at a line's end, "Yes." opening a page, a body line starting
"Part of", and mild scanner damage (specks, a slight tilt, blur). Each book goes through
`ar.py add` and `ar.py process` against the local OpenRouter-compatible server
(tools/openrouter_sim.py), then its book.md and structured/ files are scored against the truth.

    .venv/bin/python -m bench.structure [--books 3] [--pages 12] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont
from rapidfuzz import fuzz

from pipeline.layout import NUMBER_SHAPE
from tools.demo import DEMO_KEY, start_server

ROOT = Path(__file__).resolve().parents[1]
FONTS = ["DejaVuSerif.ttf", "DejaVuSans.ttf", "DejaVuSerifCondensed.ttf"]
WIDTH, HEIGHT, DPI = 1748, 2480, 300

CHAPTERS = [
    ("The Period", """It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had everything before us, we had nothing before us.
There were a king with a large jaw and a queen with a plain face, on the throne of England; there were a king with a large jaw and a queen with a fair face, on the throne of France. In both countries it was clearer than crystal to the lords of the State preserves of loaves and fishes, that things in general were settled for ever.
It was the year of Our Lord one thousand seven hundred and seventy-five. Spiritual revelations were conceded to England at that favoured period, as at this. Mrs. Southcott had recently attained her five-and-twentieth blessed birthday, of whom a prophetic private in the Life Guards had heralded the sublime appearance by announcing that arrangements were made for the swallowing up of London and Westminster.
Yes.
France, less favoured on the whole as to matters spiritual than her sister of the shield and trident, rolled with exceeding smoothness down hill, making paper money and spending it. Under the guidance of her Christian pastors, she entertained herself, besides, with such humane achievements as sentencing a youth to have his hands cut off, because he had not kneeled down in the rain to do honour to a dirty procession of monks.*
Part of the reason for all this was a well-known habit of the age: it is likely enough that, rooted in the woods of France and Norway, there were growing trees, already marked by the Woodman, Fate, to come down and be sawn into boards."""),
    ("The Wine-shop", """A large cask of wine had been dropped and broken, in the street. The accident had happened in getting it out of a cart; the cask had tumbled out with a run, the hoops had burst, and it lay on the stones just outside the door of the wine-shop, shattered like a walnut-shell.
All the people within reach had suspended their business, or their idleness, to run to the spot and drink the wine. The rough, irregular stones of the street, pointing every way, and designed, one might have thought, expressly to lame all living creatures that approached them, had dammed it into little pools.
Yes.
Monsieur Defarge, the keeper of the wine-shop, was a bull-necked, martial-looking man of thirty, and he should have been of a hot temperament, for, although it was a bitter day, he wore no coat, but carried one slung over his shoulder.* His shirt-sleeves were rolled up, too, and his brown arms were bare to the elbows.
Madame Defarge, his wife, sat in the shop behind the counter as he came in. She was a stout woman of about his own age, with a watchful eye that seldom seemed to look at anything, a large hand heavily ringed, a steady face, strong features, and great composure of manner."""),
    ("Our Gang", """We went tiptoeing along a path amongst the trees back towards the end of the widow's garden, stooping down so as the branches wouldn't scrape our heads. When we was passing by the kitchen I fell over a root and made a noise. We scrouched down and laid still.
Jim, was setting in the kitchen door; we could see him pretty clear, because there was a light behind him. He got up and stretched his neck out about a minute, listening.
Yes.
Then he says, Who dah? He listened some more; then he come tiptoeing down and stood right between us; we could a touched him, nearly. Well, likely it was minutes and minutes that there warn't a sound, and we all there so close together.* There was a place on my ankle that got to itching, but I dasn't scratch it.
Part of the trouble was that my ear begun to itch next; and next my back, right between my shoulders. Seemed like I'd die if I couldn't scratch. Well, I've noticed that thing plenty of times since."""),
]
NOTES = ["So the chroniclers of the time report it.", "A coat of the old cut, much worn.",
         "The dialect is Jim's own, as Twain wrote it."]


@dataclass
class TrueLine:
    text: str
    role: str  # header, folio, heading, body, footnote, toc
    hyphenated: bool = False  # ends with the first part of a word the typesetter split ("everyth-")


@dataclass
class TruePage:
    lines: list[TrueLine] = field(default_factory=list)
    printed: str | None = None
    continues: bool = False  # its first line goes on with the previous page's paragraph


def roman(n: int) -> str:
    return {1: "i", 2: "ii", 3: "iii", 4: "iv", 5: "v"}[n]


class Typesetter:
    """Lays a book out on pages and renders them, keeping what each page prints."""

    def __init__(self, rng: random.Random, title: str):
        self.rng = rng
        self.title = title
        font = FONTS[rng.randrange(len(FONTS))]
        self.size = rng.choice((54, 58, 62))
        self.font = ImageFont.truetype(f"/usr/share/fonts/truetype/dejavu/{font}", self.size)
        self.small = ImageFont.truetype(f"/usr/share/fonts/truetype/dejavu/{font}", int(self.size * 0.78))
        self.big = ImageFont.truetype(f"/usr/share/fonts/truetype/dejavu/{font}", int(self.size * 1.6))
        self.pitch = int(self.size * rng.choice((1.45, 1.6)))
        self.margin = rng.choice((180, 220))
        self.header_kind = rng.choice(("alternating", "with_folio"))
        self.folio_at = "head" if self.header_kind == "with_folio" else rng.choice(("foot", "head"))
        self.pages: list[tuple[TruePage, list]] = []  # truth, draw ops (x, y, text, font, anchor)

    def width(self) -> int:
        return WIDTH - 2 * self.margin

    def lines_of(self, para: str, indent: int) -> list[tuple[str, bool]]:
        """The paragraph's lines, each with whether it ends in a word the typesetter split."""
        words, lines, line = para.split(), [], ""
        room = self.width() - indent
        while words:
            word = words[0]
            candidate = f"{line} {word}" if line else word
            if self.font.getlength(candidate) <= room:
                line, words = candidate, words[1:]
                continue
            split, hyphenated = None, False
            if "-" in word[1:-1] and self.font.getlength(f"{line} {word.split('-')[0]}-") <= room:
                head = word.split("-")[0]
                split = (head + "-", word[len(head) + 1:])  # a compound breaks at its own hyphen
            elif len(word) >= 8 and word.isalpha():
                for cut in range(len(word) - 3, 2, -1):
                    if self.font.getlength(f"{line} {word[:cut]}-") <= room:
                        split, hyphenated = (word[:cut] + "-", word[cut:]), True
                        break
            if split:
                lines.append((f"{line} {split[0]}".strip(), hyphenated))
                words = [split[1]] + words[1:]
            else:
                lines.append((line, False))
            line, room = "", self.width()
        lines.append((line, False))
        return lines


def make_book(seed: int, pages_wanted: int, folder: Path) -> list[TruePage]:
    rng = random.Random(seed)
    title = rng.choice(("THE OLD TIMES", "TALES OF TWO TOWNS", "A RIVER BOOK"))
    t = Typesetter(rng, title)
    truth: list[TruePage] = []
    ops: list[list] = []

    def new_page(printed: str | None, header: str | None, roman_front: bool = False) -> None:
        truth.append(TruePage(printed=printed))
        ops.append([])
        if header:
            text = header
            if t.header_kind == "with_folio" and printed:
                text = f"{printed}    {header}" if len(truth) % 2 == 0 else f"{header}    {printed}"
            ops[-1].append((WIDTH // 2, 150, text, t.small, "ma"))
            truth[-1].lines.append(TrueLine(text, "header"))
        # the front matter's roman folio is at the foot whatever the body pages do
        if printed and (roman_front or t.header_kind != "with_folio" and t.folio_at == "foot"):
            ops[-1].append((WIDTH // 2, HEIGHT - 190, printed, t.small, "ma"))
            truth[-1].lines.append(TrueLine(printed, "folio"))
        elif printed and t.header_kind != "with_folio":
            x = WIDTH - t.margin if len(truth) % 2 else t.margin
            ops[-1].append((x, 60, printed, t.small, "ra" if len(truth) % 2 else "la"))
            truth[-1].lines.append(TrueLine(printed, "folio"))

    # the title page and the contents, in roman
    new_page(None, None)
    ops[-1] += [(WIDTH // 2, 700, title, t.big, "ma"), (WIDTH // 2, 900, "by Charles Twain", t.font, "ma")]
    truth[-1].lines += [TrueLine(title, "heading"), TrueLine("by Charles Twain", "body")]  # the title: a heading
    new_page(roman(2), None, roman_front=True)
    ops[-1].append((WIDTH // 2, 300, "CONTENTS", t.font, "ma"))
    truth[-1].lines.append(TrueLine("CONTENTS", "heading"))
    toc_at = len(ops) - 1
    number = 1
    bottom = HEIGHT - 330
    notes = iter(NOTES)
    for c, (name, text) in enumerate(CHAPTERS):
        heading = f"CHAPTER {'I' * (c + 1) if c < 3 else c + 1}. {name.upper()}"
        new_page(str(number) if t.folio_at == "foot" and t.header_kind != "with_folio" else None, None)
        truth[-1].printed = str(number)
        ops[-1].append((WIDTH // 2, 420, heading, t.big, "ma"))
        truth[-1].lines.append(TrueLine(heading, "heading"))
        numeral, _, words_ = heading.partition(" ")[2].partition(". ")
        truth[toc_at].lines.append(TrueLine(f"Chapter {numeral}. {words_.title()} .......... {number}", "toc"))
        y = 420 + 3 * t.pitch
        for para in text.split("\n"):
            note = next(notes) if para.endswith("*") else None
            lines = t.lines_of(para, 60)
            for k, (line, hyphenated) in enumerate(lines):
                if y > bottom - (2 * t.pitch if note else 0):
                    number += 1
                    if len(truth) >= pages_wanted:
                        break
                    new_page(str(number), name if t.header_kind == "with_folio" or number % 2 else title)
                    truth[-1].continues = k > 0
                    y = 330
                ops[-1].append((t.margin + (60 if k == 0 else 0), y, line, t.font, "la"))
                truth[-1].lines.append(TrueLine(line, "body", hyphenated))
                y += t.pitch
            if note:
                ops[-1].append((t.margin, bottom + t.pitch // 2, f"* {note}", t.small, "la"))
                truth[-1].lines.append(TrueLine(f"* {note}", "footnote"))
            if len(truth) >= pages_wanted:
                break
        number += 1
        if len(truth) >= pages_wanted:
            break
    for n, page_ops in enumerate(ops, start=1):
        page = Image.new("L", (WIDTH, HEIGHT), 250)
        draw = ImageDraw.Draw(page)
        for x, y, text, font, anchor in page_ops:
            draw.text((x, y), text, font=font, fill=20, anchor=anchor)
        if any(ln.role == "toc" for ln in truth[n - 1].lines):
            for i, ln in enumerate(ln for ln in truth[n - 1].lines if ln.role == "toc"):
                draw.text((t.margin, 500 + i * t.pitch), ln.text, font=t.font, fill=20)
        damage(page, random.Random(seed * 100 + n)).save(folder / f"p{n:03d}.png", dpi=(DPI, DPI))
    return truth


def damage(page: Image.Image, rng: random.Random) -> Image.Image:
    """Mild scanner damage: specks of dust, a tilt of under a degree, a little blur."""
    draw = ImageDraw.Draw(page)
    for _ in range(rng.randint(80, 200)):
        x, y, r = rng.randrange(WIDTH), rng.randrange(HEIGHT), rng.choice((1, 1, 2, 3))
        draw.ellipse((x, y, x + r, y + r), fill=rng.randint(60, 160))
    page = page.rotate(rng.uniform(-0.8, 0.8), resample=Image.BICUBIC, fillcolor=250)
    return page.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.8)))


# ---- scoring --------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def md_body(md: str) -> str:
    return re.sub(r"<!--.*?-->|\[\^\d+\]:?|^#+ ", " ", md, flags=re.M)


def true_words(truth: list[TruePage]) -> Counter:
    """The words of the book's text (furniture aside) as printed whole: a word the typesetter
    split at a line's or a page's end counts once, joined (its halves are no words of the book)."""
    out: Counter = Counter()
    carried = ""  # the first part of a split word, waiting for the next body line
    for page in truth:
        for ln in page.lines:
            if ln.role in ("header", "folio"):
                continue
            text = ln.text
            if ln.role == "body" and carried:
                text, carried = carried + text, ""
            if ln.role == "body" and ln.hyphenated:
                text, _, carried = text[:-1].rpartition(" ")
            out.update(words(text))
    return out + Counter(words(carried))


COMPOUNDS = {c.lower() for _, text in CHAPTERS for c in re.findall(r"[A-Za-z]+-[A-Za-z]+", text)}
STEPS = ("ocr", "correction", "guard", "fix", "merge")


def page_words(text: str, furniture: set[str]) -> Counter:
    """A page's words, the truth's furniture lines aside, a word split at a line's end counted
    whole (a real compound's parts apart, as book.md prints them)."""
    lines = "\n".join(ln for ln in text.splitlines() if re.sub(r"\W", "", ln.lower()) not in furniture)
    joined = re.sub(r"([A-Za-z]+)-\n\s*([a-z]+)", lambda m: m.group(0) if f"{m.group(1)}-{m.group(2)}".lower()
                    in COMPOUNDS else m.group(1) + m.group(2), lines)
    return Counter(words(joined))


def recall_by_step(book: Path, truth: list[TruePage], true: Counter, in_md: Counter) -> dict:
    """Where the true words book.md misses were lost: true words present after each step (the
    OCR's text; the correction as the model answered; as the guard let it stand; after fix;
    book.md), and how many each step lost."""
    def texts(folder: str, key: str, fallback: str = "text") -> Counter:
        out = Counter()
        for p in sorted((book / folder).glob("page_*.json")):
            page = json.loads(p.read_text())
            furniture = {re.sub(r"\W", "", ln.text.lower()) for ln in truth[int(p.stem[5:]) - 1].lines
                         if ln.role in ("header", "folio")}
            out += page_words(page.get(key) or page.get(fallback) or "", furniture)
        return out
    present = [sum((true & c).values()) for c in (texts("ocr", "text"), texts("corrected", "rejected_text"),
                                                   texts("corrected", "text"), texts("fixed", "text"), in_md)]
    return {step: before - after for step, before, after in
            zip(STEPS, [sum(true.values())] + present, present)}


def score(book: Path, truth: list[TruePage]) -> dict:
    md = (book / "book.md").read_text()
    fixed = {int(p.stem[5:]): json.loads(p.read_text())["text"] for p in (book / "fixed").glob("page_*.json")}
    page_map = json.loads((book / "structured" / "page_map.json").read_text())["pages"]
    furniture = [ln for page in truth for ln in page.lines if ln.role in ("header", "folio")]
    in_md = Counter(words(md_body(md)))
    # merge losses: words of the corrected pages, furniture lines aside, missing from book.md
    # (a word split at a line's or page's end counts once, joined or, if book.md keeps its
    # hyphen, as its two halves)
    # on a page whose folio ar removed and whose printed number it mapped right, a number alone
    # is that folio, however the OCR or the model changed it ("il", "li" for "ii"): not a loss
    removed = json.loads((book / "structured" / "furniture.json").read_text())["pages"]
    right_folio = {f["scan"] for f, m in zip(removed, page_map)
                   if m["printed"] == truth[f["scan"] - 1].printed and any(r["label"] == "folio" for r in f["removed"])}
    kept_lines = []
    for p in sorted(fixed):
        fur = {re.sub(r"\W", "", ln.text.lower()) for ln in truth[p - 1].lines if ln.role in ("header", "folio")}
        kept_lines += [line for line in fixed[p].splitlines() if re.sub(r"\W", "", line.lower()) not in fur
                       and not (p in right_folio and NUMBER_SHAPE.match(line.strip()))]
    kept = Counter()
    for token in re.findall(r"[a-z0-9]+(?:-\s*\n\s*[a-z0-9]+)?", "\n".join(kept_lines).lower()):
        halves = re.split(r"-\s*\n\s*", token)
        joined = "".join(halves)
        kept.update([joined] if len(halves) == 1 or in_md[joined] else halves)
    losses = sum((kept - in_md).values())
    truth_words = Counter(w for page in truth for ln in page.lines if ln.role not in ("header", "folio")
                          for w in words(ln.text))
    known = set(kept) | set(truth_words) | {w for t in fixed.values() for w in words(t)}
    invented = sum(n for w, n in in_md.items() if w not in known)
    # furniture left: a page's header or folio found in that page's stretch of book.md
    parts = re.split(r"<!-- page (\d+)(?::[^>]*)? -->", md)
    stretch = {int(n): text for n, text in zip(parts[1::2], parts[2::2])}
    left = 0
    for n, page in enumerate(truth, start=1):
        blocks = [b.strip().lower() for b in stretch.get(n, "").split("\n\n") if b.strip()]
        for ln in page.lines:
            f = ln.text.lower()
            if ln.role in ("header", "folio") and any(fuzz.ratio(f, b) >= 90 or b.startswith(f + " ") for b in blocks):
                left += 1
    found_heads = [b[2:].strip() for b in md.splitlines() if b.startswith("# ") or b.startswith("## ")]
    true_heads = [ln.text for page in truth for ln in page.lines if ln.role == "heading"]
    hit = sum(1 for h in true_heads if any(fuzz.ratio(h.lower(), f.lower()) >= 85 for f in found_heads))
    right = sum(1 for f in found_heads if any(fuzz.ratio(h.lower(), f.lower()) >= 85 for h in true_heads))
    precision, recall = right / max(1, len(found_heads)), hit / max(1, len(true_heads))
    breaks = [n for n, page in enumerate(truth, start=1) if page.continues]
    joined = sum(1 for n in breaks if f"<!-- page {n} -->" in md and f"\n\n<!-- page {n} -->\n\n" not in md)
    notes = [ln.text[2:] for page in truth for ln in page.lines if ln.role == "footnote"]
    defs = re.findall(r"^\[\^\d+\]: (.*)$", md, flags=re.M)
    apart = sum(1 for n in notes if any(fuzz.ratio(n.lower(), d.lower()) >= 85 for d in defs))
    mapped = [(page.printed, m["printed"]) for page, m in zip(truth, page_map) if page.printed]
    body_truth = true_words(truth)
    return {"losses": losses, "invented": invented, "furniture": len(furniture), "furniture_left": left,
            "heading_hits": hit, "heading_true": len(true_heads), "heading_found": len(found_heads),
            "heading_right": right, "precision": precision, "recall": recall,
            "breaks": len(breaks), "joined": joined, "notes": len(notes), "notes_apart": apart,
            "pages_numbered": len(mapped), "pages_mapped": sum(1 for a, b in mapped if a == b),
            "truth_words": sum(body_truth.values()), "recalled": sum((body_truth & in_md).values()),
            "lost_by": recall_by_step(book, truth, body_truth, in_md)}


def figures(scores: list[dict]) -> list[tuple[str, float, str, bool]]:
    s = {k: sum(x[k] for x in scores) for k in scores[0] if k != "lost_by"}
    p = s["heading_right"] / max(1, s["heading_found"])
    r = s["heading_hits"] / max(1, s["heading_true"])
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    rows = [
        ("body words in the corrected pages missing from book.md (merge losses)", s["losses"], "0", s["losses"] == 0),
        ("words in book.md in neither the pages nor the truth (invented)", s["invented"], "0", s["invented"] == 0),
        ("furniture left in the body", s["furniture_left"] / max(1, s["furniture"]), "<= 1%",
         s["furniture_left"] <= 0.01 * s["furniture"]),
        ("heading F1", f1, ">= 0.95", f1 >= 0.95),
        ("paragraphs across page breaks joined", s["joined"] / max(1, s["breaks"]), ">= 0.95",
         s["joined"] >= 0.95 * s["breaks"]),
        ("footnotes kept apart", s["notes_apart"] / max(1, s["notes"]), ">= 0.95", s["notes_apart"] >= 0.95 * s["notes"]),
        ("printed page numbers mapped right", s["pages_mapped"] / max(1, s["pages_numbered"]), ">= 0.98",
         s["pages_mapped"] >= 0.98 * s["pages_numbered"]),
        ("body word recall of book.md against the true text", s["recalled"] / max(1, s["truth_words"]), ">= 0.98",
         s["recalled"] >= 0.98 * s["truth_words"]),
    ]
    return rows


def ocr_cost(books: int, pages: int) -> dict:
    """Seconds a page of ar's OCR (pipeline/ocr.py's ocr_page) takes on the generated pages with
    its margin reading and without it (read_margins replaced by nothing), each page read both
    ways in turn, one at a time; and how many pages read their margins again."""
    import asyncio
    import time

    from pipeline import ocr

    real = ocr.read_margins

    async def nothing(*args):
        return []

    async def measure(paths: list[Path]) -> dict:
        spent = {"with": 0.0, "without": 0.0}
        read_again = 0
        for n, path in enumerate(paths, start=1):
            print(f"structure: OCR cost: page {n}/{len(paths)}, read with and without its margins", file=sys.stderr)
            for way, reader in (("with", real), ("without", nothing)):
                ocr.read_margins = reader
                start = time.perf_counter()
                result = await ocr.ocr_page(path)
                spent[way] += time.perf_counter() - start
                read_again += way == "with" and bool(result.get("margins"))
        ocr.read_margins = real
        return {"pages": len(paths), "pages_with_margin_words": read_again,
                **{f"s_per_page_{way}": round(t / len(paths), 3) for way, t in spent.items()}}

    work = Path(tempfile.mkdtemp(prefix="ar-bench-ocr-cost-"))
    paths = []
    for b in range(books):
        (work / f"b{b}").mkdir()
        make_book(1000 + b, pages, work / f"b{b}")
        paths += sorted((work / f"b{b}").glob("p*.png"))
    return asyncio.run(measure(paths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--books", type=int, default=3)
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--ocr-cost", action="store_true",
                        help="only time the OCR of the pages with and without its margin reading")
    args = parser.parse_args()
    if args.ocr_cost:
        cost = ocr_cost(args.books, args.pages)
        print(json.dumps(cost, indent=2) if args.json else
              f"{cost['pages']} pages: {cost['s_per_page_with']} s a page with the margin reading, "
              f"{cost['s_per_page_without']} s without ({cost['pages_with_margin_words']} pages read words there)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="ar-bench-structure-"))
    server, url = start_server()
    env = dict(os.environ, OPENROUTER_BASE_URL=url, OPENROUTER_API_KEY=DEMO_KEY, AR_BOOKS_DIR=str(work / "books"),
               AR_CACHE_DIR=str(work / "cache"))
    scores = []
    try:
        for b in range(args.books):
            scans = work / f"scans{b}"
            scans.mkdir()
            truth = make_book(1000 + b, args.pages, scans)
            print(f"structure: book {b + 1}/{args.books}: {len(truth)} pages made; add and process", file=sys.stderr)
            for cmd in (["add", str(scans), "--id", f"b{b}"], ["process", f"b{b}"]):
                done = subprocess.run([sys.executable, str(ROOT / "ar.py"), *cmd], env=env, cwd=ROOT,
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"structure: ar.py {' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")
            scores.append(score(work / "books" / f"b{b}", truth))
    finally:
        server.terminate()
        server.wait(timeout=10)
    rows = figures(scores)
    lost_by = {step: sum(x["lost_by"][step] for x in scores) for step in STEPS}
    if args.json:
        print(json.dumps({"books": args.books, "pages_per_book": args.pages, "per_book": scores,
                          "lost_by": lost_by,
                          "figures": [{"figure": f, "value": v, "goal": g, "met": m} for f, v, g, m in rows]}, indent=2))
    else:
        print(f"{args.books} books of {args.pages} pages, through ar.py process against the local server")
        for f, v, g, m in rows:
            value = f"{v:.3f}" if isinstance(v, float) else str(v)
            print(f"  {f:<72} {value:>7}  goal {g:<8} {'met' if m else 'NOT MET'}")
        print("  true words missing from book.md, by the step that lost them (a step may also win some back): "
              + ", ".join(f"{step} {n}" for step, n in lost_by.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
