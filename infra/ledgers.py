"""Which ledger a book's records go to: its own checkpoint.db (infra/checkpoint.py, the
default), or, with AR_LEDGER=postgresql://... (or `--ledger`), the fleet's PostgreSQL database
(infra/pg_ledger.py). Nothing above this seam knows which: both have the same interface."""
from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from contextlib import nullcontext
from typing import TypeVar

from infra.checkpoint import Ledger
from infra.errors import LedgerError, UsageError
from infra.lock import WriterLock
from infra.storage import atomic_write_bytes

T = TypeVar("T")


def ledger_url() -> str | None:
    """Where every book's ledger lives when it is not each book's own checkpoint.db: a
    PostgreSQL URL (AR_LEDGER, or `--ledger`), for a fleet (infra/pg_ledger.py)."""
    return os.environ.get("AR_LEDGER") or None


def ledger_errors() -> tuple[type[Exception], ...]:
    """What the ledgers in use raise when they refuse a record or a read. It imports nothing:
    psycopg raised nothing if it was never imported (and without the fleet extra it cannot be)."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if psycopg is None else (sqlite3.Error, psycopg.Error)


def check_ledger_place(book) -> None:
    """Refuse a book whose ledger is not where this command would look: it would be taken
    for a new book, and paid for again. A checkpoint.db moved into PostgreSQL (`ar.py ledger
    import`, checkpoint.db.imported) without AR_LEDGER; with it, a checkpoint.db never imported,
    or one beside the book's ledger in the database (which of the two is right is not ar's guess)."""
    url = ledger_url()
    if url is None:
        moved = next((p for p in (book.imported_ledger_path, book.fleet_ledger_mark) if p.exists()), None)
        if moved is not None and not book.ledger_path.exists():
            raise UsageError(f"book {book.id}'s ledger is in PostgreSQL ({moved.name}): set AR_LEDGER or --ledger")
        return
    if not book.ledger_path.exists():
        return
    from infra.pg_ledger import describe, has_ledger

    if has_ledger(url, book.id):
        raise LedgerError(f"book {book.id} has both a checkpoint.db and a ledger in {describe(url)}: move one "
                          "aside, ar cannot tell which is right (docs/failures.md)")
    raise LedgerError(f"book {book.id}'s checkpoint.db is not in {describe(url)} yet: "
                      f"run `ar.py ledger import {book.id}` first")


def open_ledger(book) -> Ledger:
    """The ledger of `book` (infra.books.Book), open for writing: its checkpoint.db (after
    taking the book's lock), or its rows in the fleet's PostgreSQL database."""
    check_ledger_place(book)
    url = ledger_url()
    if url is None:
        return Ledger.open_writer(book.ledger_path)
    from infra.pg_ledger import PgLedger, describe  # psycopg: only for a fleet

    ledger = PgLedger.open_writer(url, book.id)
    if not book.fleet_ledger_mark.exists():
        atomic_write_bytes(book.fleet_ledger_mark, f"{describe(url)}\n".encode())
    return ledger


def writer_lock(book):
    """One writer per book: its lock file with a book's checkpoint.db; none with PostgreSQL,
    where each page is claimed with a lease and an epoch instead (PgLedger.claim_page)."""
    return WriterLock(book.lock_path, book.id) if ledger_url() is None else nullcontext()


def open_library(library, create: bool = False, read_only: bool = False):
    """The library's cap (infra/library_budget.py's LibraryBudget) where the books' ledgers
    are: library.db in the books folder (infra.books.Library), or the PostgreSQL ledger's
    `library` budget row; None when there is none yet and `create` is not asked."""
    url = ledger_url()
    if url is None:
        from infra.library_budget import SqliteLibrary

        return SqliteLibrary.open(library, create=create, read_only=read_only)
    from infra.pg_ledger import PgLibrary

    return PgLibrary.open(url, create=create, read_only=read_only)


def ledger_stamp(book) -> tuple | None:
    """What moves when anything a book's status shows changes, read without opening its
    ledger: its checkpoint.db and write-ahead log (an empty one, as a reader leaves it, is none),
    and its source folder, by time and size. None with the fleet's ledger (AR_LEDGER): nothing
    to look at but the database."""
    if ledger_url() is not None:
        return None
    stamp = []
    for path in (book.ledger_path, book.ledger_path.with_name(book.ledger_path.name + "-wal"), book.source_dir):
        try:
            st = path.stat()
            stamp.append((st.st_mtime_ns, st.st_size) if st.st_size or path.is_dir() else None)
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)


def read_ledger(book, queries: Callable[[Ledger], T], absent: T) -> T:
    """What `queries(ledger)` returns from one consistent state of `book`'s ledger; `absent`
    when it has none yet (see Ledger.read)."""
    check_ledger_place(book)
    url = ledger_url()
    if url is None:
        return Ledger.read(book.ledger_path, queries, absent)
    from infra.pg_ledger import PgLedger

    return PgLedger.read(url, book.id, queries, absent)
