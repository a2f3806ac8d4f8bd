"""Where a book lives on disk, and which names a book may have."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from infra.errors import ArError, UsageError

# A book id is a name: letters, digits, '.', '_' and '-', not starting with '.' or '-'.
_BOOK_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
PAGE_GLOB = "page_*.png"
BOOK_TEXT = "book.md"
METADATA = "structured/metadata.json"
READING_FILES = (BOOK_TEXT, "book.txt", "book.epub")  # the book as its reader has it
PREVIOUS = "previous"  # where clean puts them aside: the old book stays readable until remade


def validate_book_id(book_id: str) -> str:
    if not book_id or not _BOOK_ID.match(book_id) or ".." in book_id:
        raise UsageError(
            f"invalid book id {book_id!r}: use a name of letters, digits, '.', '_' or '-' "
            "(no '/', no '..', not starting with '.' or '-')"
        )
    return book_id


def book_id_from_path(path: Path) -> str:
    """A default id for `ar add PATH`: the file or folder name, made into a valid name."""
    stem = path.stem if path.is_file() else path.name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-") or "book"
    return validate_book_id(cleaned[:128])


def unique_book_ids(paths: list[Path]) -> list[str]:
    """Ids for several books at once, each from its file or folder name; two that would clash
    get -2, -3 ... in the order given (so adding the same folder again gives the same ids).
    Ids that differ only in case clash too: they are one folder on macOS and Windows."""
    ids: list[str] = []
    for path in paths:
        base = book_id_from_path(path)
        candidate, n = base, 1
        while candidate.lower() in (i.lower() for i in ids):
            n += 1
            candidate = validate_book_id(f"{base[:120]}-{n}")
        ids.append(candidate)
    return ids


def page_file(page: int, suffix: str) -> str:
    return f"page_{page:04d}{suffix}"


@dataclass(frozen=True)
class Book:
    """The files of one book: books/<id>/ as laid out in docs/architecture.md. Where each
    stage's outputs go is the stage's declaration's business (pipeline/registry.py)."""

    root: Path

    @property
    def id(self) -> str:
        return self.root.name

    @property
    def source_dir(self) -> Path:
        return self.root / "source"

    @property
    def ledger_path(self) -> Path:
        return self.root / "checkpoint.db"

    @property
    def imported_ledger_path(self) -> Path:
        """checkpoint.db once `ar.py ledger import` moved it into PostgreSQL: kept, never written."""
        return self.root / "checkpoint.db.imported"

    @property
    def fleet_ledger_mark(self) -> Path:
        """Written beside the book when a run keeps its ledger in PostgreSQL (AR_LEDGER): a
        command without AR_LEDGER must not take the book for new, and pay for it again."""
        return self.root / "ledger.postgresql"

    @property
    def lock_path(self) -> Path:
        return self.root / "writer.lock"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def text_path(self) -> Path:
        return self.root / BOOK_TEXT

    @property
    def metadata_path(self) -> Path:
        return self.root / METADATA

    def source_pages(self) -> list[Path]:
        return sorted(self.source_dir.glob(PAGE_GLOB))

    def page_count(self) -> int:
        return len(self.source_pages())

    def source_image(self, page: int) -> Path:
        return self.source_dir / page_file(page, ".png")


class Library:
    """The books directory: every sub-folder with a source/ is a book."""

    def __init__(self, root: Path):
        self.root = root

    def book(self, book_id: str) -> Book:
        return Book(self.root / validate_book_id(book_id))

    def existing(self, book_id: str) -> Book:
        book = self.book(book_id)
        if not book.source_dir.is_dir():
            raise ArError(f"no book {book_id!r} in {self.root} (add it first: ar.py add PATH --id {book_id})")
        return book

    def books(self) -> list[Book]:
        if not self.root.is_dir():
            return []
        return [Book(p) for p in sorted(self.root.iterdir()) if (p / "source").is_dir()]
