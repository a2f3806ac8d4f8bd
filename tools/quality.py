"""How good a text is: the character error rate against the true text."""
from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein

_PAGE_MARK = re.compile(r"<!-- page \d+ -->")


def normalise(text: str) -> str:
    return " ".join(text.split())


def cer(hypothesis: str, reference: str) -> float:
    """Edit distance / length of the reference, whitespace runs counted as one space."""
    ref = normalise(reference)
    return Levenshtein.distance(normalise(hypothesis), ref) / max(1, len(ref))


def book_cer(markdown: str, truth: str) -> float:
    """CER of a merged book.md against the book's true text, page-break marks left out."""
    return cer(_PAGE_MARK.sub(" ", markdown), truth)
