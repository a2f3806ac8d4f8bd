"""A cap on what the whole library may cost, every book and every run together, that holds
with several `ar` processes at once: the library ledger, `library.db` in the books folder.

`LibraryBudget` is what a run needs of it (reserve before a call, settle after, release what a
crash left); `SqliteLibrary` is the one-machine implementation (SQLite, BEGIN IMMEDIATE:
one process at a time decides). With AR_LEDGER, infra/pg_ledger.py's `PgLibrary` implements it
on the PostgreSQL ledger's `library` budget row, reserved in each call's own admission;
infra/ledgers.py's `open_library` chooses.

library.db holds:
- `spent`: one row per settled call of every book, (book, call_id) -> its cost as the book's
  ledger counts it (CALL_COST); the books' ledgers stay the truth, this is their copy
  (`check` proves they agree);
- `reservations`: the worst case of each call in flight (and of a call whose cost is known
  only later), with the book, its call id once pending, and its process (host, pid);
- `totals.spent_usd`: the running sum of `spent`, written in the same transaction as its rows.

A reservation is made before a call's ledger row; once the row exists it carries the call's id,
and only then is the call sent. So a reservation left by a dead process is settled from its
book's ledger: no call id, or a call resolved there (by that book's next run): it goes, and the
call's cost is in `spent` (synced); a call still pending keeps its worst case held until the
book's next run resolves it. Nothing is counted twice: `spent` is keyed by the call.
"""
from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import time
from typing import Protocol

from infra.books import Library
from infra.checkpoint import Ledger
from infra.errors import LedgerError, LibraryBudgetReached
from infra.lock import process_alive
from infra.pricing import COST_TOLERANCE_USD

LIBRARY_DB = "library.db"
WAIT_FOR_OTHERS_S = 0.05  # another process's settlement rings no bell here: look again this often

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE spent (book TEXT NOT NULL, call_id INTEGER NOT NULL, cost_usd REAL NOT NULL,
                    PRIMARY KEY (book, call_id)) WITHOUT ROWID;
CREATE TABLE reservations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    book       TEXT NOT NULL,
    call_id    INTEGER,
    usd        REAL NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    in_flight  INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
);
CREATE TABLE totals (one INTEGER PRIMARY KEY CHECK (one = 1), spent_usd REAL NOT NULL);
INSERT INTO totals VALUES (1, 0.0);
"""


class LibraryBudget(Protocol):
    """The library's cap, as a run uses it (infra/budget.py's `Cap` for each book: `share`)."""

    limit: float | None

    def set_limit(self, usd: float) -> None: ...  # a new value replaces the kept one
    def sync(self, book_ids: list[str], own: frozenset[str] = frozenset()) -> None: ...
    def caps(self, book_id: str) -> tuple: ...  # the Caps `book_id`'s calls reserve on, beside its ledger's
    def figures(self) -> dict: ...
    def close(self) -> None: ...


class SqliteLibrary:
    """library.db; open it with `open` (None when the library has no ledger and none is asked)."""

    def __init__(self, conn: sqlite3.Connection, library: Library):
        self._db = conn
        self.library = library
        self.path = library.root / LIBRARY_DB
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.holding = 0  # this process's calls in flight holding a reservation
        self._settled = asyncio.Event()

    @classmethod
    def open(cls, library: Library, create: bool = False, read_only: bool = False) -> SqliteLibrary | None:
        path = library.root / LIBRARY_DB
        if not path.exists() and not create:
            return None
        uri = f"file:{path}?mode={'ro' if read_only else 'rwc'}"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            if not read_only:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                with _transaction(conn):
                    if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                        for statement in SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        conn.execute("PRAGMA user_version = 1")
            elif conn.execute("PRAGMA user_version").fetchone()[0] != 1:
                raise sqlite3.DatabaseError("not a library ledger of this ar")
        except sqlite3.Error as e:
            raise LedgerError(f"library ledger {path} cannot be used ({e}); it was left untouched") from None
        return cls(conn, library)

    def close(self) -> None:
        self._db.close()

    # ---- the cap ---------------------------------------------------------------------

    @property
    def limit(self) -> float | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'budget_usd'").fetchone()
        return float(row[0]) if row else None

    def set_limit(self, usd: float) -> None:
        """A new value replaces the kept one."""
        self._db.execute("INSERT INTO meta VALUES ('budget_usd', ?) ON CONFLICT (key) DO UPDATE "
                         "SET value = excluded.value", (repr(usd),))

    def caps(self, book_id: str) -> tuple[BookShare]:
        return (BookShare(self, book_id),)

    async def reserve(self, book_id: str, worst_case_usd: float) -> int:
        """A reservation's id once `worst_case_usd` fits in what is left of the library's cap;
        LibraryBudgetReached when it cannot fit even with no call of any live process in flight."""
        while True:
            with _transaction(self._db):
                spent, reserved = self._spent_reserved()
                limit = self.limit
                if limit is None or spent + reserved + worst_case_usd <= limit:
                    self.holding += 1
                    return self._db.execute(
                        "INSERT INTO reservations (book, usd, host, pid, created_at) VALUES (?, ?, ?, ?, ?)",
                        (book_id, worst_case_usd, self.host, self.pid, time.time())).lastrowid
                others = self._live_others()
            if self.holding == 0 and not others:
                self._settled.set()  # this process's other waiters see it too, and stop
                raise LibraryBudgetReached(
                    f"library budget reached: ${spent:.4f} of ${limit:.4f} spent by the library "
                    f"(${reserved:.4f} held by calls in flight or to settle); the next call could cost up "
                    f"to ${worst_case_usd:.4f} and only ${max(0.0, limit - spent - reserved):.4f} is left")
            self._settled.clear()
            try:  # a settlement here rings at once; another process's is seen at the next look
                await asyncio.wait_for(self._settled.wait(), WAIT_FOR_OTHERS_S if others else None)
            except TimeoutError:
                pass

    def _spent_reserved(self) -> tuple[float, float]:
        spent = self._db.execute("SELECT spent_usd FROM totals").fetchone()[0]
        reserved = self._db.execute("SELECT COALESCE(SUM(usd), 0) FROM reservations").fetchone()[0]
        return spent, reserved

    def _live_others(self) -> bool:
        rows = self._db.execute("SELECT DISTINCT host, pid FROM reservations WHERE in_flight = 1 "
                                "AND NOT (host = ? AND pid = ?)", (self.host, self.pid)).fetchall()
        return any(process_alive(pid, host) for host, pid in rows)

    def started(self, reservation: int, call_id: int) -> None:
        self._db.execute("UPDATE reservations SET call_id = ? WHERE id = ?", (call_id, reservation))

    def settle(self, reservation: int, book_id: str, cost_usd: float) -> None:
        """The call's cost replaces its reservation, in one transaction."""
        with _transaction(self._db):
            call_id = self._db.execute("SELECT call_id FROM reservations WHERE id = ?", (reservation,)).fetchone()
            self._db.execute("DELETE FROM reservations WHERE id = ?", (reservation,))
            if call_id is not None and call_id[0] is not None:
                self._count(book_id, call_id[0], cost_usd)
        self._done_holding()

    def unknown(self, reservation: int) -> None:
        """Its cost is known only when its book's next run resolves it: its worst case stays held."""
        self._db.execute("UPDATE reservations SET in_flight = 0 WHERE id = ?", (reservation,))
        self._done_holding()

    def release(self, reservation: int) -> None:
        self._db.execute("DELETE FROM reservations WHERE id = ?", (reservation,))
        self._done_holding()

    def _done_holding(self) -> None:
        self.holding -= 1
        self._settled.set()

    def _count(self, book_id: str, call_id: int, cost_usd: float) -> None:
        """`spent` and its running total, in the caller's transaction; a call is counted once."""
        old = self._db.execute("SELECT cost_usd FROM spent WHERE book = ? AND call_id = ?",
                               (book_id, call_id)).fetchone()
        if old is not None and old[0] == cost_usd:
            return
        self._db.execute("INSERT INTO spent VALUES (?, ?, ?) ON CONFLICT (book, call_id) DO UPDATE "
                         "SET cost_usd = excluded.cost_usd", (book_id, call_id, cost_usd))
        self._db.execute("UPDATE totals SET spent_usd = spent_usd + ?", (cost_usd - (old[0] if old else 0.0),))

    # ---- from the books' ledgers -----------------------------------------------------

    def sync(self, book_ids: list[str], own: frozenset[str] = frozenset()) -> None:
        """Copy every settled call of `book_ids` from its ledger (earlier runs, calls resolved
        after a crash), and release the reservations their dead processes left; `own`: the
        books whose writer lock this process holds, whose other reservations are all stale."""
        for book_id in book_ids:
            book = self.library.book(book_id)
            costs, pending = Ledger.read(book.ledger_path, lambda led: (led.call_costs(), led.pending_call_ids()),
                                         ({}, set()))
            with _transaction(self._db):
                for call_id, cost in costs.items():
                    self._count(book_id, call_id, cost)
                stale = [(rid, call_id) for rid, call_id, host, pid in self._db.execute(
                    "SELECT id, call_id, host, pid FROM reservations WHERE book = ?", (book_id,))
                    if not (host == self.host and pid == self.pid)
                    and (book_id in own or not process_alive(pid, host))]
                for rid, call_id in stale:
                    if call_id is None or call_id not in pending:  # never sent, or its cost is in `spent` now
                        self._db.execute("DELETE FROM reservations WHERE id = ?", (rid,))
                    else:  # still pending in its book: held until that book's next run resolves it
                        self._db.execute("UPDATE reservations SET in_flight = 0 WHERE id = ?", (rid,))

    # ---- reports ---------------------------------------------------------------------

    def figures(self) -> dict:
        """The cap, what is spent and held, and what is left (one snapshot)."""
        with _transaction(self._db, "BEGIN"):
            spent, reserved = self._spent_reserved()
            limit = self.limit
            in_flight = self._db.execute("SELECT COUNT(*) FROM reservations WHERE in_flight = 1").fetchone()[0]
        return {"budget_usd": limit, "spent_usd": spent, "reserved_usd": reserved, "calls_held": in_flight,
                "left_usd": None if limit is None else limit - spent - reserved}

    def check(self) -> dict:
        """library.db against the books' ledgers: each book's settled calls equal its ledger's
        settled calls, call for call, and the running total equals the sum of the rows."""
        with _transaction(self._db, "BEGIN"):
            total = self._db.execute("SELECT spent_usd FROM totals").fetchone()[0]
            rows = self._db.execute("SELECT book, call_id, cost_usd FROM spent").fetchall()
        kept: dict[str, dict[int, float]] = {}
        for book_id, call_id, cost in rows:
            kept.setdefault(book_id, {})[call_id] = cost
        books, differences = [], []
        for book in self.library.books():
            ledger_costs = Ledger.read(book.ledger_path, lambda led: led.call_costs(), {})
            ours = kept.pop(book.id, {})
            wrong = sorted(c for c in set(ledger_costs) | set(ours)
                           if abs(ledger_costs.get(c, 0.0) - ours.get(c, 0.0)) > COST_TOLERANCE_USD)
            books.append({"book": book.id, "ledger_usd": sum(ledger_costs.values()), "library_usd": sum(ours.values()),
                          "calls_differing": wrong[:10]})
            if wrong:
                differences.append(book.id)
        gone = {b: sum(c.values()) for b, c in kept.items()}  # books removed from the folder: spent stays spent
        rows_total = sum(cost for _, _, cost in rows)
        return {"path": str(self.path), **self.figures(), "books": books, "books_removed": gone,
                "running_total_usd": total, "rows_total_usd": rows_total,
                "differences": differences, "ok": not differences and abs(total - rows_total) <= COST_TOLERANCE_USD}


class BookShare:
    """The library's cap as one book's calls see it: infra/budget.py's `Cap`."""

    def __init__(self, library: SqliteLibrary, book_id: str):
        self.library, self.book_id = library, book_id

    async def reserve(self, worst_case_usd: float) -> int:
        return await self.library.reserve(self.book_id, worst_case_usd)

    def started(self, reservation: int, call_id: int) -> None:
        self.library.started(reservation, call_id)

    def settle(self, reservation: int, cost_usd: float) -> None:
        self.library.settle(reservation, self.book_id, cost_usd)

    def unknown(self, reservation: int) -> None:
        self.library.unknown(reservation)

    def release(self, reservation: int) -> None:
        self.library.release(reservation)


class _transaction:
    """BEGIN IMMEDIATE (or a read's BEGIN) ... COMMIT, ROLLBACK on any error."""

    def __init__(self, conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"):
        self.conn, self.begin = conn, begin

    def __enter__(self):
        self.conn.execute(self.begin)

    def __exit__(self, kind, *rest):
        self.conn.execute("ROLLBACK" if kind else "COMMIT")
