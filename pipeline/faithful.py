"""Is a correction faithful to its page? A model's answer measured against the OCR text it
was given, and the OCR's own doubt about what it read.

A correction replaces the characters the OCR misread. It can explain changing the words the
OCR doubted and a small share of the rest (Tesseract is sometimes sure of a wrong word), and
joining words hyphenated across lines. It cannot explain a page whose lines went missing
(a truncation), whose text grew (an invention) or whose words were rewritten (a summary, a
modernised page). `unexplained` names such a change; the LLM stages then keep the OCR's
words and send the page to fix, with its image (pipeline/correct.py, pipeline/fix.py).

The thresholds, and why (figures from the sample book and tests/data/real-scans/, Tesseract
5.3, read as `ar.py process --stages ocr` reads them):
- CHANGED_AT_MOST, 10% of the characters (edit distance over the OCR text's length,
  whitespace runs as one space, hyphens at line ends joined) beyond the doubted words: a
  printed page worth correcting has an OCR error rate of a few percent (the sample 0.4%, the
  real scans 1 to 2%; an honest correction of them changes 0.4 to 1.6%); a page read worse
  than that has its errors in words Tesseract doubts, and those are allowed on top, whole.
- LENGTH_AT_MOST, 5%: a correction mostly replaces characters; joining hyphens and dropping
  specks shortens a page by about 1%. Truncating or adding a few lines moves the length at
  once, while an edit distance under 10% could hide it.
- LINES_AT_MOST, 5% of the lines and at least LINE_SLACK (2): the prompts keep every line;
  a line of specks only may go, a word joined across lines leaves its line.
- SLACK_CHARS, 8: a page of a few words may change by a word without being suspect.
- DOUBTFUL_BELOW, 60: Tesseract's word confidence (0..100) under which a word is more
  likely misread than not; on the sample's clean print 0 to 1.2% of the words are under it.
- FIX_WHEN_DOUBTFUL, 5% of the words under it: the page goes to fix, which sees the image,
  whatever the first pass says (a Huckleberry Finn page with its illustration: 9%; the
  brochure page: 2.2%; every sample page: at most 1.2%). Fix costs several times what
  correct does a page: `bench/fix_share.py` reports the share of pages this sends there.
"""
from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein

CHANGED_AT_MOST = 0.10
LENGTH_AT_MOST = 0.05
LINES_AT_MOST = 0.05
LINE_SLACK = 2
SLACK_CHARS = 8
DOUBTFUL_BELOW = 60.0
FIX_WHEN_DOUBTFUL = 0.05
DOUBTFUL = "doubtful"  # the OCR page's flag when ocr_doubts says why

_LINE_END_HYPHEN = re.compile(r"(?<=\w)-\n\s*(?=\w)")


def _flat(text: str) -> str:
    """The text as a correction should leave it: line-end hyphens joined, whitespace runs as one."""
    return " ".join(_LINE_END_HYPHEN.sub("", text).split())


def _lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def _words(ocr_page: dict) -> list[dict]:
    """The OCR's words with a confidence (a PDF's text layer has none)."""
    return [w for block in ocr_page.get("blocks") or () for line in block["lines"] for w in line["words"]
            if w.get("confidence", -1) >= 0]


def _doubted(ocr_page: dict) -> list[dict]:
    return [w for w in _words(ocr_page) if w["confidence"] < DOUBTFUL_BELOW]


def unexplained(ocr_page: dict, answer: str) -> str | None:
    """Why `answer` changed the page more than a correction of its OCR text explains, or None."""
    ocr = ocr_page["text"]
    if not ocr.strip():  # the model read the image: no text to compare with
        return None
    before, after = _flat(ocr), _flat(answer)
    allowed = SLACK_CHARS + sum(len(w["text"]) + 1 for w in _doubted(ocr_page))
    changed = Levenshtein.distance(before, after)
    lines_before, lines_after = _lines(ocr), _lines(answer)
    reasons = []
    if changed > allowed + CHANGED_AT_MOST * len(before):
        reasons.append(f"{changed / len(before):.0%} of the characters changed")
    if abs(len(after) - len(before)) > allowed + LENGTH_AT_MOST * len(before):
        reasons.append(f"length {len(before)} -> {len(after)}")
    if abs(lines_after - lines_before) > max(LINE_SLACK, LINES_AT_MOST * lines_before):
        reasons.append(f"lines {lines_before} -> {lines_after}")
    return ", ".join(reasons) + " (more than OCR errors explain)" if reasons else None


def ocr_doubts(ocr_page: dict) -> str | None:
    """Why the OCR's own reading calls for a second look with the image, or None."""
    words, doubted = len(_words(ocr_page)), len(_doubted(ocr_page))
    if words and doubted / words > FIX_WHEN_DOUBTFUL:
        return f"{doubted} of {words} words read with confidence under {DOUBTFUL_BELOW:g}"
    return None
