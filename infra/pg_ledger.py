"""Every book's ledger in one PostgreSQL database (AR_LEDGER=postgresql://...), for a fleet.

The same tables as a book's checkpoint.db (infra/checkpoint.py), each keyed by book, and the
same queries: every total is derived from `calls` with CALL_COST. What PostgreSQL adds:
- money is `numeric` (a sum of a million calls loses no cent), times come from the
  database's clock (one clock for every machine of the fleet);
- a writer is a *holder* with a lease (holders.lease_until, renewed by a thread); it takes
  the place of the book's file lock (infra/lock.py), which a fleet cannot share;
- money decisions are transactions (infra/pg_money.py): a call is admitted (recorded pending,
  its worst case reserved against every budget row it falls under, a slot of the fleet's
  rate taken) in one, and settled in another.

Imported only when AR_LEDGER is set: psycopg is the `fleet` extra.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import TypeVar

from infra.checkpoint import CALL_COST, CALL_FINAL_STATUSES, RUN_STATUSES, PendingCall, _token_columns
from infra.budget import LedgerBudget, NotYet, reached
from infra.errors import BudgetReached, LeaseLost, LedgerError, LibraryBudgetReached, MissingExtra
from infra.logs import register_secret
from infra.pg_url import check, describe, mask, passwords
from infra.pricing import same_cost

try:
    import psycopg
except ImportError:  # the fleet extra is not installed: AR_LEDGER cannot work
    raise MissingExtra("AR_LEDGER", "psycopg") from None

log = logging.getLogger("ar.ledger")
T = TypeVar("T")

NOW = "extract(epoch from clock_timestamp())"  # the database's clock, as the epoch seconds SQLite keeps
LEASE_S = float(os.environ.get("AR_LEASE_S", "30"))
# A writer stopped inside one of its (millisecond) transactions would hold the budget rows'
# locks, and the whole fleet with them: the server ends a session idle in a transaction for
# half a lease, and its locks go with it (the writer, woken, has lost its lease anyway).
SESSION_OPTIONS = f"-c idle_in_transaction_session_timeout={int(LEASE_S * 500)}"
RECONNECT_MAX_S = 5.0
ADMIT_POLL_S = 0.05  # a call waiting for room in a budget asks again this often
RATE_BURST = 1  # calls the fleet's rate admits at once: in any T seconds, at most RATE_BURST + T x rate
LIBRARY = "library"  # the budget row every call falls under; a book's is f"book:{id}"

# Each entry upgrades the schema from version i to i + 1. Append, never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE books (book TEXT PRIMARY KEY, added_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE meta (
        book TEXT NOT NULL REFERENCES books, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (book, key));
    CREATE TABLE holders (
        holder_id   BIGSERIAL PRIMARY KEY,
        book        TEXT,
        pid         INTEGER,
        host        TEXT,
        started_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        lease_until TIMESTAMPTZ NOT NULL);
    CREATE TABLE runs (
        run_id          BIGSERIAL PRIMARY KEY,
        book            TEXT NOT NULL REFERENCES books,
        holder_id       BIGINT REFERENCES holders,
        started_at      DOUBLE PRECISION NOT NULL,
        ended_at        DOUBLE PRECISION,
        status          TEXT NOT NULL DEFAULT 'running',
        pid             INTEGER,
        command         TEXT,
        message         TEXT,
        key_usage_start NUMERIC,
        key_usage_end   NUMERIC);
    CREATE INDEX runs_book ON runs (book, run_id);
    CREATE TABLE pages (
        book       TEXT NOT NULL REFERENCES books,
        stage      TEXT NOT NULL,
        page       INTEGER NOT NULL,
        status     TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        error      TEXT,
        run_id     BIGINT,
        updated_at DOUBLE PRECISION NOT NULL,
        flags      TEXT,
        holder_id  BIGINT,
        epoch      BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (book, stage, page));
    CREATE TABLE calls (
        call_id            BIGSERIAL PRIMARY KEY,
        book               TEXT NOT NULL REFERENCES books,
        run_id             BIGINT NOT NULL,
        holder_id          BIGINT,
        request_key        TEXT UNIQUE,
        stage              TEXT NOT NULL,
        page               INTEGER,
        model              TEXT NOT NULL,
        attempt            INTEGER NOT NULL DEFAULT 1,
        status             TEXT NOT NULL,
        generation_id      TEXT,
        prompt_tokens      INTEGER NOT NULL DEFAULT 0,
        completion_tokens  INTEGER NOT NULL DEFAULT 0,
        cached_tokens      INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
        images             INTEGER NOT NULL DEFAULT 0,
        computed_cost_usd  NUMERIC,
        provider_cost_usd  NUMERIC,
        upstream_cost_usd  NUMERIC,
        reserved_usd       NUMERIC NOT NULL DEFAULT 0,
        error              TEXT,
        started_at         DOUBLE PRECISION NOT NULL,
        ended_at           DOUBLE PRECISION);
    CREATE INDEX calls_book ON calls (book, stage, page);
    CREATE INDEX calls_pending ON calls (book) WHERE status = 'pending';
    CREATE TABLE budgets (
        scope        TEXT PRIMARY KEY,
        limit_usd    NUMERIC,
        spent_usd    NUMERIC NOT NULL DEFAULT 0,
        reserved_usd NUMERIC NOT NULL DEFAULT 0);
    CREATE TABLE rate (
        name         TEXT PRIMARY KEY,
        per_second   DOUBLE PRECISION NOT NULL,
        burst        DOUBLE PRECISION NOT NULL,
        tokens       DOUBLE PRECISION NOT NULL,
        refilled_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        paused_until TIMESTAMPTZ)
    """,
    # what the monitor's fleet view reads without a scan of every call or page (infra/pg_fleet.py)
    """
    CREATE INDEX runs_running ON runs (book) WHERE status = 'running';
    CREATE INDEX calls_errors ON calls ((COALESCE(ended_at, started_at))) WHERE error IS NOT NULL;
    CREATE INDEX pages_failed ON pages (updated_at) WHERE status = 'failed'
    """,
    # the rate row gives slots in the order calls are admitted (a token bucket's polling let
    # the writer that asked last win every token); a pause moves the slots given by `shift_s`
    """
    ALTER TABLE rate DROP COLUMN tokens, DROP COLUMN refilled_at,
        ADD COLUMN next_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        ADD COLUMN shift_s DOUBLE PRECISION NOT NULL DEFAULT 0
    """,
    # the length of each done page's text, so that an estimate need not read every page
    """
    ALTER TABLE pages ADD COLUMN chars INTEGER
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


_reached = False  # the database answered this process once: from then on, out of reach is an outage
_readers = threading.local()  # each thread's read-only connection to each ledger URL (_reader)


def connect(url: str, read_only: bool = False) -> psycopg.Connection:
    global _reached
    check(url)
    for password in passwords(url):  # whatever else goes wrong, never in a log
        register_secret(password)
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="ar", options=SESSION_OPTIONS)
    except psycopg.Error as e:
        raise LedgerError(f"ledger {describe(url)} cannot be reached: {_first_line(e, url)}") from None
    _reached = True
    if read_only:  # one consistent snapshot per report (Ledger.snapshot), never a write
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
    return conn


def _reader(url: str) -> psycopg.Connection:
    """This thread's read-only connection to `url`, opened once: a connection costs more than
    a read (a few ms here, a TLS handshake to a remote database)."""
    conns = _readers.__dict__.setdefault("conns", {})
    conn = conns.get(url)
    if conn is None or conn.closed or conn.broken:
        conn = conns[url] = connect(url, read_only=True)
    return conn


def migrate(conn: psycopg.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION; concurrent writers wait on one advisory lock."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('ar schema'))")
        conn.execute("CREATE TABLE IF NOT EXISTS ar_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM ar_schema").fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise LedgerError(f"the ledger database has schema version {version}, newer than this ar "
                              f"knows ({SCHEMA_VERSION}): upgrade ar to use it")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[target - 1])
        conn.execute("DELETE FROM ar_schema")
        conn.execute("INSERT INTO ar_schema VALUES (%s)", (SCHEMA_VERSION,))


def _wait_for_database(waited: float, where: str, error: Exception, url: str) -> float:
    """Sleep a little longer each time (up to RECONNECT_MAX_S) while the database is out of
    reach; returns the time waited so far. The fleet pauses; it goes on when it is back."""
    if waited == 0:
        log.warning("%s is out of reach (%s): waiting for it", where, _first_line(error, url))
    pause = min(RECONNECT_MAX_S, 0.2 + waited / 4)
    time.sleep(pause)
    return waited + pause


def _usd(amount: float | None) -> Decimal | None:
    """A float amount as the decimal it reads as (0.1 is 0.1, not 0.1000000000000000055...)."""
    return None if amount is None else Decimal(repr(float(amount)))


def _first_line(error: Exception, url: str) -> str:
    """The database's error in one line, the password of `url` masked: libpq's may repeat it."""
    return mask((str(error).strip().splitlines() or [type(error).__name__])[0], url)


class _Connected:
    """A connection to the fleet's database that outlives an outage: work done through it
    (`_one`, `_all`, `_write`) waits for the database and is done again."""

    def __init__(self, url: str, conn: psycopg.Connection, path: str):
        self.url, self._db, self.path = url, conn, path  # path: what messages name
        self._reader = conn.read_only
        self._in_snapshot = False

    def _one(self, sql: str, params=()):
        return self._retrying(lambda conn: conn.execute(sql, params).fetchone())

    def _all(self, sql: str, params=()):
        return self._retrying(lambda conn: conn.execute(sql, params).fetchall())

    def _write(self, sql: str, params=()) -> int:
        return self._retrying(lambda conn: conn.execute(sql, params).rowcount)

    def _retrying(self, work: Callable[[psycopg.Connection], T]) -> T:
        """`work(conn)`; when the database is out of reach, wait for it and do it again: the
        fleet pauses, and goes on when it is back. Work done here must be idempotent: a
        commit whose answer was lost may have happened."""
        waited = 0.0
        while True:
            try:
                if self._db.closed:
                    self._db = connect(self.url, read_only=self._reader)
                return work(self._db)
            except (psycopg.OperationalError, LedgerError) as e:
                lost = isinstance(e, LedgerError) or self._db.closed or self._db.broken
                if not lost or self._in_snapshot:
                    raise  # a real error, or a lost snapshot (PgLedger.read does it again)
                self._db.close()
                waited = _wait_for_database(waited, self.path, e, self.url)


class PgLedger(_Connected):
    """One book's ledger in the fleet's database: the interface of infra.checkpoint.Ledger."""

    write_errors = (psycopg.Error,)
    shared = True

    def __init__(self, url: str, book: str, conn: psycopg.Connection, holder_id: int | None = None):
        super().__init__(url, conn, f"ledger {describe(url)} (book {book!r})")
        self.book = book
        self.holder_id = holder_id
        self.scopes = sorted([LIBRARY, f"book:{book}"])  # the budgets its calls fall under, in lock order
        self._epochs: dict[tuple[str, int], int] = {}  # the pages this writer holds: their claim's epoch
        self._slots: dict[int, tuple[float, float]] = {}  # admitted calls still to wait for their rate slot
        self._lease = _Lease(self) if holder_id is not None else None

    # ---- opening -------------------------------------------------------------------

    @classmethod
    def open_writer(cls, url: str, book: str) -> PgLedger:
        conn = connect(url)
        migrate(conn)
        with conn.transaction():
            conn.execute(f"INSERT INTO books (book, added_at) VALUES (%s, {NOW}) ON CONFLICT DO NOTHING", (book,))
            conn.execute("INSERT INTO budgets (scope) VALUES (%s), (%s) ON CONFLICT DO NOTHING", (LIBRARY, f"book:{book}"))
            holder = conn.execute(
                "INSERT INTO holders (book, pid, host, lease_until) VALUES"
                " (%s, %s, %s, clock_timestamp() + make_interval(secs => %s)) RETURNING holder_id",
                (book, os.getpid(), socket.gethostname(), LEASE_S)).fetchone()[0]
        return cls(url, book, conn, holder)

    @classmethod
    def open_reader(cls, url: str, book: str, conn: psycopg.Connection | None = None) -> PgLedger | None:
        """Read-only view (through `conn`, a read-only connection, else its own); None when
        the book has no ledger yet."""
        conn = conn or connect(url, read_only=True)
        try:
            known = conn.execute("SELECT to_regclass('ar_schema') IS NOT NULL").fetchone()[0] and \
                conn.execute("SELECT 1 FROM books WHERE book = %s", (book,)).fetchone()
        except psycopg.OperationalError:
            raise  # the connection lost: PgLedger.read waits for the database
        except psycopg.Error as e:
            conn.close()
            raise LedgerError(f"ledger {describe(url)} cannot be read: {_first_line(e, url)}") from None
        return cls(url, book, conn) if known else None

    @classmethod
    def read(cls, url: str, book: str, queries: Callable[[PgLedger], T], absent: T) -> T:
        """What `queries` read from one snapshot of the book's ledger, through this thread's
        read-only connection (_reader: kept for the next read, as a library's checks read
        every book's ledger). A connection lost on the way (an outage once the database was
        reached) is waited for and the read done again: it changed nothing."""
        waited = 0.0
        while True:
            try:
                conn = _reader(url)
                ledger = cls.open_reader(url, book, conn)
                if ledger is None:
                    return absent
                with ledger.snapshot():
                    return queries(ledger)
            except LedgerError as e:
                if not _reached:
                    raise  # never reached from this process: a wrong URL, said at once
                waited = _wait_for_database(waited, describe(url), e, url)
            except psycopg.OperationalError as e:
                if not (conn.closed or conn.broken):
                    raise
                conn.close()
                waited = _wait_for_database(waited, describe(url), e, url)

    def close(self) -> None:
        if self._lease is not None:
            self._lease.stop()
            try:  # let go at once: the pages this writer claimed are free for the next
                self._db.execute("UPDATE holders SET lease_until = clock_timestamp() WHERE holder_id = %s",
                                 (self.holder_id,))
            except psycopg.Error:
                pass  # the lease lapses by itself
        self._db.close()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        self._in_snapshot = True
        try:
            with self._db.transaction():
                yield
        finally:
            self._in_snapshot = False

    # ---- meta ----------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE book = %s AND key = %s", (self.book, key))
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._write("DELETE FROM meta WHERE book = %s AND key = %s", (self.book, key))
        else:
            self._write("INSERT INTO meta (book, key, value) VALUES (%s, %s, %s)"
                        " ON CONFLICT (book, key) DO UPDATE SET value = excluded.value", (self.book, key, value))

    # ---- runs ----------------------------------------------------------------------

    def start_run(self, pid: int, command: str) -> int:
        """Open a run. The book's runs still marked running whose holder's lease has lapsed
        belong to a writer that died: close them (a live writer's runs stay open). The command
        is kept without the ledger's password (`--ledger URL`)."""
        command = mask(command, self.url)

        def work(conn):
            with conn.transaction():
                conn.execute(
                    "UPDATE runs SET status = 'crashed', ended_at = COALESCE("
                    "(SELECT MAX(COALESCE(ended_at, started_at)) FROM calls WHERE calls.run_id = runs.run_id),"
                    " started_at) WHERE book = %s AND status = 'running' AND NOT EXISTS ("
                    " SELECT 1 FROM holders h WHERE h.holder_id = runs.holder_id"
                    " AND h.lease_until > clock_timestamp() AND h.holder_id != %s)",
                    (self.book, self.holder_id))
                return conn.execute(
                    f"INSERT INTO runs (book, holder_id, started_at, status, pid, command)"
                    f" VALUES (%s, %s, {NOW}, 'running', %s, %s) RETURNING run_id",
                    (self.book, self.holder_id, pid, command)).fetchone()[0]
        return self._retrying(work)

    def end_run(self, run_id: int, status: str, message: str | None = None) -> None:
        assert status in RUN_STATUSES, status
        self._write(f"UPDATE runs SET status = %s, ended_at = {NOW}, message = %s WHERE run_id = %s",
                    (status, message, run_id))

    def set_key_usage(self, run_id: int, column: str, usd: float) -> None:
        assert column in ("key_usage_start", "key_usage_end"), column
        self._write(f"UPDATE runs SET {column} = %s WHERE run_id = %s", (usd, run_id))

    def runs(self) -> list[dict]:
        rows = self._all(
            f"SELECT r.run_id, r.started_at, r.ended_at, r.status, r.pid, r.message,"
            f" COALESCE(SUM({CALL_COST}), 0)::float8, COUNT(c.call_id),"
            f" COUNT(c.call_id) FILTER (WHERE c.status = 'pending'),"
            f" COUNT(c.call_id) FILTER (WHERE c.status IN ('recovered', 'lost')),"
            f" r.key_usage_start::float8, r.key_usage_end::float8"
            f" FROM runs r LEFT JOIN calls c ON c.run_id = r.run_id"
            f" WHERE r.book = %s GROUP BY r.run_id ORDER BY r.run_id", (self.book,))
        keys = ("run_id", "started_at", "ended_at", "status", "pid", "message", "cost_usd", "calls",
                "pending_calls", "settled_later", "key_usage_start", "key_usage_end")
        return [dict(zip(keys, row)) for row in rows]

    # ---- pages ---------------------------------------------------------------------

    def done_pages(self, stage: str) -> set[int]:
        rows = self._all("SELECT page FROM pages WHERE book = %s AND stage = %s AND status = 'done'",
                         (self.book, stage))
        return {r[0] for r in rows}

    def page_status(self, stage: str, page: int) -> str | None:
        row = self._one("SELECT status FROM pages WHERE book = %s AND stage = %s AND page = %s"
                        " AND status IN ('done', 'failed')", (self.book, stage, page))
        return row[0] if row else None

    def mark_done(self, stage: str, page: int, run_id: int, flags: dict[str, str] | None = None,
                  chars: int | None = None) -> None:
        self._set_page(stage, page, run_id, "done", None, json.dumps(flags) if flags else None, chars)

    def mark_failed(self, stage: str, page: int, run_id: int, error: str) -> None:
        self._set_page(stage, page, run_id, "failed", error, None, None)

    def page_marks(self, stage: str) -> dict[int, tuple[int, dict[str, str]]]:
        rows = self._all("SELECT page, chars, flags FROM pages WHERE book = %s AND stage = %s AND status = 'done'"
                         " AND chars IS NOT NULL", (self.book, stage))
        return {page: (chars, json.loads(flags) if flags else {}) for page, chars, flags in rows}

    def _set_page(self, stage, page, run_id, status, error, flags, chars) -> None:
        """A done- or failed-mark counts only under the page's current claim (its epoch), by a
        writer whose lease holds: a zombie (a worker stopped past its lease, a task Ray ran
        twice) marks nothing. A page not claimed yet (a book stage's) is claimed first."""
        if (stage, page) not in self._epochs and not self.claim_page(stage, page):
            raise LeaseLost(f"page {page} of {stage} is held by another writer")
        epoch = self._epochs.pop((stage, page))

        def work(conn):
            with conn.transaction():
                self._fence(conn)
                where = ("book = %s AND stage = %s AND page = %s AND holder_id = %s AND epoch = %s",
                         (self.book, stage, page, self.holder_id, epoch))
                marked = conn.execute(
                    f"UPDATE pages SET status = %s, attempts = attempts + 1, error = %s, run_id = %s,"
                    f" updated_at = {NOW}, flags = %s, chars = %s"
                    f" WHERE {where[0]} AND (status, run_id) IS DISTINCT FROM (%s, %s)",
                    (status, error, run_id, flags, chars, *where[1], status, run_id)).rowcount
                # nothing marked: already ours (this mark again, its commit's answer lost), else taken
                if not marked and not conn.execute(f"SELECT 1 FROM pages WHERE {where[0]}", where[1]).fetchone():
                    raise LeaseLost(f"page {page} of {stage} was taken by another writer (its lease lapsed)")
        self._retrying(work)

    # ---- leases and claims: one writer per page, fenced by epochs -------------------

    def claim_page(self, stage: str, page: int) -> bool:
        """Take `page` of `stage` for this writer, unless it is done or held by another writer
        whose lease holds; each claim raises the page's epoch. False: not ours."""
        self.check_lease()
        row = self._one(
            f"INSERT INTO pages AS p (book, stage, page, status, updated_at, holder_id, epoch)"
            f" VALUES (%s, %s, %s, 'claimed', {NOW}, %s, 1)"
            f" ON CONFLICT (book, stage, page) DO UPDATE SET holder_id = excluded.holder_id, epoch = p.epoch + 1"
            f" WHERE p.status != 'done' AND (p.holder_id IS NULL OR p.holder_id = excluded.holder_id"
            f"  OR NOT EXISTS (SELECT 1 FROM holders h WHERE h.holder_id = p.holder_id"
            f"   AND h.lease_until > clock_timestamp()))"
            f" RETURNING epoch", (self.book, stage, page, self.holder_id))
        if row is None:
            return False
        self._epochs[(stage, page)] = row[0]
        return True

    def lease_lapsed(self) -> bool:
        """This writer's lease has lapsed, or may have: it must stop (check_lease says why)."""
        return self._lease is not None and not self._lease.valid()

    def check_lease(self) -> None:
        """LeaseLost once this writer's lease has lapsed, or may have: it must stop."""
        if self.lease_lapsed():
            raise LeaseLost(f"the lease of writer {self.holder_id} on book {self.book!r} lapsed (stopped, or the "
                            "ledger out of reach for too long): another writer may have its pages; it stops here")

    def _fence(self, conn) -> None:
        """Inside a transaction: LeaseLost unless the database still holds this writer's lease."""
        if not conn.execute("SELECT 1 FROM holders WHERE holder_id = %s AND lease_until > clock_timestamp()",
                            (self.holder_id,)).fetchone():
            self._lease.lost.set()
            self.check_lease()

    # ---- budgets: running sums beside the calls, checked against them ---------------

    def run_budget(self, limit_usd: float | None) -> LedgerBudget:
        """The book's cap (None: none) kept on its budget row; every call admitted through the
        ledger, capped or not, so that every budget row counts it."""
        self._write("UPDATE budgets SET limit_usd = %s WHERE scope = %s", (_usd(limit_usd), f"book:{self.book}"))
        return LedgerBudget()

    def set_rate(self, per_minute: float) -> None:
        """The fleet's rate limit: calls a minute, all writers together (0: none; a pause
        still holds). Kept for the runs after, until a new value replaces it."""
        self._write("INSERT INTO rate (name, per_second, burst) VALUES ('provider', %s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET per_second = excluded.per_second",
                    (per_minute / 60, RATE_BURST))

    def pause_fleet(self, seconds: float) -> None:
        """The provider answered 429: no writer of the fleet sends a call for `seconds` from
        now, by the database's clock (a longer pause already set stands). The slots already
        given and not yet reached move back by what the pause adds (`shift_s`: the writers
        waiting for them read it before sending), and so does the next free one."""
        def work(conn):
            with conn.transaction():
                conn.execute("INSERT INTO rate (name, per_second, burst) VALUES ('provider', 0, %s)"
                             " ON CONFLICT (name) DO NOTHING", (RATE_BURST,))
                added, = conn.execute(
                    "SELECT GREATEST(0, %s - COALESCE(extract(epoch from paused_until - clock_timestamp()), 0))::float8"
                    " FROM rate WHERE name = 'provider' FOR UPDATE", (seconds,)).fetchone()
                conn.execute(
                    "UPDATE rate SET paused_until = GREATEST(paused_until, clock_timestamp() + make_interval(secs => %s)),"
                    " shift_s = shift_s + %s, next_at = GREATEST(next_at + make_interval(secs => %s),"
                    " clock_timestamp() + make_interval(secs => %s)) WHERE name = 'provider'",
                    (seconds, added, added, seconds))
        self._retrying(work)

    def slot_wait(self, call_id: int) -> tuple[float, float]:
        """How long the call admitted as `call_id` waits for its rate slot, and the pauses'
        shift when it was given (see `pauses_since`)."""
        return self._slots.pop(call_id, (0.0, 0.0))

    def pauses_since(self, shift_s: float) -> tuple[float, float]:
        """How far the pauses set since the shift `shift_s` moved the slots, and the shift now."""
        row = self._retrying(lambda conn: conn.execute("SELECT shift_s FROM rate WHERE name = 'provider'").fetchone())
        now = row[0] if row else shift_s
        return now - shift_s, now

    def budgets(self) -> dict[str, dict]:
        """Every budget row, beside what the calls it covers add up to (invariant 4: the rows
        are running sums, written in the transactions of the calls; this is their check)."""
        rows = self._all(
            f"SELECT b.scope, b.limit_usd::float8, b.spent_usd::float8, b.reserved_usd::float8,"
            f" d.spent::float8, d.reserved::float8, d.spent = b.spent_usd AND d.reserved = b.reserved_usd"
            f" FROM budgets b CROSS JOIN LATERAL (SELECT COALESCE(SUM({CALL_COST}), 0) AS spent,"
            f"  COALESCE(SUM(reserved_usd), 0) AS reserved FROM calls"
            f"  WHERE b.scope = %s OR b.scope = 'book:' || calls.book) d ORDER BY b.scope", (LIBRARY,))
        keys = ("limit_usd", "spent_usd", "reserved_usd", "calls_spent_usd", "calls_reserved_usd", "agrees")
        return {row[0]: dict(zip(keys, row[1:])) for row in rows}

    def page_flags(self, stages: list[str]) -> dict[int, dict[str, str]]:
        order = {stage: i for i, stage in enumerate(stages)}
        latest: dict[int, tuple[int, str | None]] = {}
        rows = self._all("SELECT stage, page, flags FROM pages WHERE book = %s AND status = 'done'"
                         " AND stage = ANY(%s)", (self.book, stages))
        for stage, page, flags in rows:
            if page not in latest or order[stage] > latest[page][0]:
                latest[page] = (order[stage], flags)
        return {page: json.loads(flags) for page, (_, flags) in sorted(latest.items()) if flags}

    def clear_stage(self, stage: str) -> int:
        return self._write("DELETE FROM pages WHERE book = %s AND stage = %s", (self.book, stage))

    def failed_pages(self, stage: str) -> dict[int, str]:
        return dict(self._all("SELECT page, error FROM pages WHERE book = %s AND stage = %s AND status = 'failed'",
                              (self.book, stage)))

    # ---- calls ---------------------------------------------------------------------

    def begin_call(self, run_id: int, stage: str, page: int | None, model: str, attempt: int,
                   reserve_usd: float = 0.0) -> int:
        """Admit a call, in one transaction, before it is sent: record it pending, reserve its
        worst case (`reserve_usd`) against every budget it falls under (the book's, the
        library's: their rows locked in one fixed order, so that two admissions never wait
        on each other crosswise) and take a slot of the fleet's rate limit (`slot_wait` says
        when it comes). NotYet when the budgets' room is held by calls in flight; BudgetReached when
        the call cannot fit even with nothing in flight; LeaseLost when this writer's lease
        has lapsed. A request key makes it safe to repeat when the answer was lost."""
        key = uuid.uuid4().hex
        self.check_lease()

        def work(conn):
            with conn.transaction():
                done = conn.execute("SELECT call_id FROM calls WHERE request_key = %s", (key,)).fetchone()
                if done:  # the commit whose answer was lost
                    return done[0]
                self._fence(conn)
                budgets = conn.execute(
                    "SELECT scope, limit_usd, spent_usd, reserved_usd FROM budgets WHERE scope = ANY(%s)"
                    " ORDER BY scope FOR UPDATE", (self.scopes,)).fetchall()
                reserve = _usd(reserve_usd)
                for scope, limit, spent, reserved in budgets:
                    if limit is not None and spent + reserved + reserve > limit:
                        stale = self._stale_reservations(conn, scope) if reserved > 0 else 0
                        if spent + stale + reserve <= limit:  # room, once calls in flight settle
                            raise NotYet(ADMIT_POLL_S)
                        stopped = (f"; ${float(stale):.4f} of it held by calls of writers that stopped, "
                                   "settled by the next run of their books") if stale else ""
                        raise (LibraryBudgetReached if scope == LIBRARY else BudgetReached)(reached(
                            f"{'library budget' if scope == LIBRARY else 'budget'} reached ({scope})", float(spent),
                            float(limit), float(reserve), float(limit - spent)) + stopped)
                slot = self._take_slot(conn)
                call_id = conn.execute(
                    f"INSERT INTO calls (book, run_id, holder_id, request_key, stage, page, model, attempt,"
                    f" status, reserved_usd, started_at)"
                    f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s, {NOW}) RETURNING call_id",
                    (self.book, run_id, self.holder_id, key, stage, page, model, attempt, reserve)).fetchone()[0]
                if reserve:
                    conn.execute("UPDATE budgets SET reserved_usd = reserved_usd + %s WHERE scope = ANY(%s)",
                                 (reserve, self.scopes))
            if slot[0] > 0:
                self._slots[call_id] = slot
            return call_id
        return self._retrying(work)

    @staticmethod
    def _stale_reservations(conn, scope: str) -> Decimal:
        """What the pending calls of writers whose lease lapsed hold of `scope`'s room: no call
        in flight will free it (a sweeper settles them, at the next run of their book), so a
        call waiting for it would wait for ever."""
        book = None if scope == LIBRARY else scope.removeprefix("book:")
        return conn.execute(
            "SELECT COALESCE(SUM(c.reserved_usd), 0) FROM calls c WHERE c.status = 'pending'"
            " AND (%s::text IS NULL OR c.book = %s) AND NOT EXISTS (SELECT 1 FROM holders h"
            "  WHERE h.holder_id = c.holder_id AND h.lease_until > clock_timestamp())", (book, book)).fetchone()[0]

    def _take_slot(self, conn) -> tuple[float, float]:
        """The call's slot in the fleet's rate limit: the next free one (GCRA: slots 1/rate
        apart, at most RATE_BURST of them behind now), so that calls go in the order they were
        admitted; after the pause, if the fleet is paused (a provider's 429: pause_fleet).
        Returns the seconds from now to it, and the pauses' shift."""
        row = conn.execute(
            "SELECT per_second, burst, extract(epoch from next_at - clock_timestamp())::float8,"
            " COALESCE(extract(epoch from paused_until - clock_timestamp())::float8, 0), shift_s"
            " FROM rate WHERE name = 'provider' FOR UPDATE").fetchone()
        if row is None:  # neither a limit nor a pause ever set
            return 0.0, 0.0
        per_second, burst, next_in, paused_for, shift = row
        if not per_second:
            return max(0.0, paused_for), shift
        slot = max(next_in, paused_for, -(burst - 1) / per_second)
        conn.execute("UPDATE rate SET next_at = clock_timestamp() + make_interval(secs => %s) WHERE name = 'provider'",
                     (slot + 1 / per_second,))
        return max(0.0, slot), shift

    def set_generation_id(self, call_id: int, generation_id: str) -> None:
        self._write("UPDATE calls SET generation_id = %s WHERE call_id = %s", (generation_id, call_id))

    def reject_call(self, call_id: int, error: str) -> None:
        """A call answered, and was billed, but its answer was not usable: failed (its cost stays)."""
        self._write("UPDATE calls SET status = 'failed', error = %s WHERE call_id = %s", (error, call_id))

    def finish_call(self, call_id: int, status: str, usage=None, computed_cost: float | None = None,
                    provider_cost: float | None = None, error: str | None = None,
                    generation_id: str | None = None) -> float:
        """Settle a call, in one transaction: its cost recorded, its reservation replaced by
        that cost in every budget it fell under. Returns the cost as the ledger counts it.
        Settling twice changes nothing, except that a call released as lost (a sweeper found
        its writer's lease lapsed and no id) takes the cost its writer brings after all."""
        assert status in CALL_FINAL_STATUSES, status
        tokens = _token_columns(usage)
        money = (_usd(computed_cost), _usd(provider_cost), _usd(usage.upstream_cost if usage else None))

        def work(conn):
            with conn.transaction():
                was, before, reserved = conn.execute(
                    f"SELECT status, {CALL_COST}, reserved_usd FROM calls WHERE call_id = %s FOR UPDATE",
                    (call_id,)).fetchone()
                if was != "pending" and not (was == "lost" and status != "lost"):
                    return float(before)
                cost = conn.execute(
                    f"UPDATE calls SET status = %s, prompt_tokens = %s, completion_tokens = %s,"
                    f" cached_tokens = %s, cache_write_tokens = %s, reasoning_tokens = %s, images = %s,"
                    f" computed_cost_usd = %s, provider_cost_usd = %s, upstream_cost_usd = %s, error = %s,"
                    f" generation_id = COALESCE(%s, generation_id), reserved_usd = 0, ended_at = {NOW}"
                    f" WHERE call_id = %s RETURNING {CALL_COST}",
                    (status, *tokens, *money, error, generation_id, call_id)).fetchone()[0]
                conn.execute("SELECT 1 FROM budgets WHERE scope = ANY(%s) ORDER BY scope FOR UPDATE", (self.scopes,))
                conn.execute("UPDATE budgets SET reserved_usd = reserved_usd - %s, spent_usd = spent_usd + %s"
                             " WHERE scope = ANY(%s)", (reserved, cost - before, self.scopes))
                return float(cost)
        return self._retrying(work)

    def pending_calls(self) -> list[PendingCall]:
        rows = self._all("SELECT call_id, run_id, stage, page, model, generation_id, started_at FROM calls"
                         " WHERE book = %s AND status = 'pending' ORDER BY call_id", (self.book,))
        return [PendingCall(*r) for r in rows]

    def orphaned_calls(self) -> list[PendingCall]:
        """The book's pending calls whose writer's lease has lapsed: no one else will settle
        them (the sweeper's work; a live writer's calls in flight are its own)."""
        rows = self._all(
            "SELECT call_id, run_id, stage, page, model, generation_id, started_at FROM calls c"
            " WHERE book = %s AND status = 'pending' AND c.holder_id IS DISTINCT FROM %s AND NOT EXISTS ("
            "  SELECT 1 FROM holders h WHERE h.holder_id = c.holder_id AND h.lease_until > clock_timestamp())"
            " ORDER BY call_id", (self.book, self.holder_id))
        return [PendingCall(*r) for r in rows]

    def calls_with_generation(self) -> list[dict]:
        rows = self._all(f"SELECT call_id, generation_id, model, {CALL_COST}::float8 FROM calls"
                         f" WHERE book = %s AND generation_id IS NOT NULL AND status != 'pending'"
                         f" ORDER BY call_id", (self.book,))
        return [dict(zip(("call_id", "generation_id", "model", "cost_usd"), r)) for r in rows]

    # ---- totals: always derived from `calls` ---------------------------------------

    def total_cost(self) -> float:
        return self._one(f"SELECT COALESCE(SUM({CALL_COST}), 0)::float8 FROM calls WHERE book = %s",
                         (self.book,))[0]

    def stage_cost(self, stage: str) -> float:
        return self._one(f"SELECT COALESCE(SUM({CALL_COST}), 0)::float8 FROM calls WHERE book = %s"
                         f" AND stage = %s", (self.book, stage))[0]

    def answered_page_costs(self, stage: str, images: bool | None = None) -> list[float]:
        """As infra/checkpoint.py's: what a page cost in `stage` each time a run got it answered."""
        having = "" if images is None else f" AND SUM(images) {'>' if images else '='} 0"
        rows = self._all(f"SELECT SUM({CALL_COST})::float8 FROM calls WHERE book = %s AND stage = %s"
                         f" AND page IS NOT NULL GROUP BY page, run_id"
                         f" HAVING COUNT(*) FILTER (WHERE status IN ('ok', 'recovered')) > 0{having}",
                         (self.book, stage))
        return [cost for (cost,) in rows]

    def page_models(self, stage: str) -> dict[int, str]:
        """The model whose answer each done page of `stage` holds: its latest answered call's."""
        return dict(self._all(
            "SELECT DISTINCT ON (c.page) c.page, c.model FROM calls c JOIN pages p"
            " ON p.book = c.book AND p.stage = c.stage AND p.page = c.page"
            " WHERE c.book = %s AND c.stage = %s AND p.status = 'done' AND c.status IN ('ok', 'recovered')"
            " ORDER BY c.page, c.call_id DESC", (self.book, stage)))

    def run_outcomes(self, run_id: int) -> dict[str, dict[str, list[int]]]:
        """As infra/checkpoint.py's: one run's failed calls, invalid answers, failed and flagged pages."""
        out: dict[str, dict[str, list[int]]] = {"calls": {"failed_calls": [], "invalid_answers": []},
                                                "failed": {}, "flags": {}}
        for page, error in self._all("SELECT page, error FROM calls WHERE book = %s AND run_id = %s"
                                     " AND status = 'failed' ORDER BY page", (self.book, run_id)):
            out["calls"]["failed_calls"].append(page)
            if (error or "").startswith("invalid answer"):
                out["calls"]["invalid_answers"].append(page)
        for stage, page, status, flags in self._all(
                "SELECT stage, page, status, flags FROM pages WHERE book = %s AND run_id = %s AND page > 0"
                " AND (status = 'failed' OR flags IS NOT NULL) ORDER BY page", (self.book, run_id)):
            if status == "failed":
                out["failed"].setdefault(stage, []).append(page)
            for flag in json.loads(flags) if flags else ():
                out["flags"].setdefault(flag, []).append(page)
        return out

    def page_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for stage, status, n in self._all("SELECT stage, status, COUNT(*) FROM pages WHERE book = %s"
                                          " AND status IN ('done', 'failed') GROUP BY stage, status",
                                          (self.book,)):
            out.setdefault(stage, {"done": 0, "failed": 0})[status] = n
        return out

    # ---- what a run is doing -------------------------------------------------------

    def run_activity(self, run_id: int) -> dict:
        done = dict(self._all("SELECT stage, COUNT(*) FROM pages WHERE run_id = %s AND status = 'done'"
                              " GROUP BY stage", (run_id,)))
        pending, retries = self._one(
            "SELECT COUNT(*) FILTER (WHERE status = 'pending'), COUNT(*) FILTER (WHERE attempt > 1)"
            " FROM calls WHERE run_id = %s", (run_id,))
        return {"pages_done": done, "calls_in_flight": pending, "retries": retries}

    def recent_errors(self, limit: int) -> list[dict]:
        rows = self._all(
            "SELECT at, run_id, stage, page, error FROM ("
            " SELECT COALESCE(ended_at, started_at) AS at, run_id, stage, page, error"
            "  FROM calls WHERE book = %s AND error IS NOT NULL"
            " UNION ALL SELECT updated_at, run_id, stage, page, error"
            "  FROM pages WHERE book = %s AND status = 'failed') e"
            " ORDER BY at DESC LIMIT %s", (self.book, self.book, limit))
        return [dict(zip(("at", "run_id", "stage", "page", "error"), r)) for r in rows]

    def costs_by(self, column: str) -> dict[str, dict]:
        assert column in ("stage", "model", "run_id"), column
        rows = self._all(
            f"SELECT {column}, COUNT(*), COUNT(*) FILTER (WHERE status = 'failed'),"
            f" SUM(CASE WHEN status = 'failed' THEN {CALL_COST} ELSE 0 END)::float8,"
            f" SUM(prompt_tokens), SUM(cached_tokens), SUM(cache_write_tokens),"
            f" SUM(completion_tokens), SUM(reasoning_tokens),"
            f" SUM({CALL_COST})::float8, SUM(computed_cost_usd)::float8, SUM(provider_cost_usd)::float8,"
            f" SUM(upstream_cost_usd)::float8,"
            f" COUNT(*) FILTER (WHERE status = 'pending'), COUNT(DISTINCT page)"
            f" FROM calls WHERE book = %s GROUP BY {column} ORDER BY {column}", (self.book,))
        keys = (
            "calls", "failed_calls", "failed_cost_usd", "prompt_tokens", "cached_tokens",
            "cache_write_tokens", "completion_tokens", "reasoning_tokens", "cost_usd",
            "computed_cost_usd", "provider_cost_usd", "upstream_cost_usd", "pending_calls", "pages",
        )
        return {str(row[0]): {k: (v or 0) for k, v in zip(keys, row[1:])} for row in rows}


class PgLibrary(_Connected):
    """The library's cap on a fleet (infra/library_budget.py's LibraryBudget): the `library`
    budget row. Every call's admission reserves on it in the ledger's own transaction
    (PgLedger.begin_call), so it adds no cap of its own to a run, and has nothing to sync."""

    @classmethod
    def open(cls, url: str, create: bool = False, read_only: bool = False) -> PgLibrary | None:
        """None when the database has no ledger yet and none is asked for."""
        conn = connect(url, read_only=read_only)
        if create:
            migrate(conn)
        elif not conn.execute("SELECT to_regclass('ar_schema') IS NOT NULL").fetchone()[0]:
            conn.close()
            return None
        return cls(url, conn, f"ledger {describe(url)} (library)")

    def close(self) -> None:
        self._db.close()

    @property
    def limit(self) -> float | None:
        row = self._one("SELECT limit_usd::float8 FROM budgets WHERE scope = %s", (LIBRARY,))
        return row[0] if row else None

    def set_limit(self, usd: float | None) -> None:
        """A new value replaces the kept one (None: no cap)."""
        self._write("INSERT INTO budgets (scope, limit_usd) VALUES (%s, %s)"
                    " ON CONFLICT (scope) DO UPDATE SET limit_usd = excluded.limit_usd", (LIBRARY, _usd(usd)))

    def sync(self, book_ids: list[str], own: frozenset[str] = frozenset()) -> None:
        """Nothing to copy: the row is written in the transactions of the calls it counts."""

    def caps(self, book_id: str) -> tuple:
        return ()  # the ledger's admission reserves on the library's row itself

    def check(self) -> dict:
        """Each budget row against the calls it counts (one statement: one snapshot): what a
        book's row and the library's have spent equals their calls' costs, and what they hold
        equals their pending calls' reservations. The shape of SqliteLibrary.check's report."""
        rows = self._all(
            f"WITH c AS (SELECT book, SUM({CALL_COST}) AS spent,"
            f" COALESCE(SUM(reserved_usd) FILTER (WHERE status = 'pending'), 0) AS held FROM calls GROUP BY book),"
            f" s AS (SELECT 'book:' || book AS scope, spent, held FROM c"
            f" UNION ALL SELECT %s, COALESCE(SUM(spent), 0), COALESCE(SUM(held), 0) FROM c)"
            f" SELECT b.scope, b.spent_usd::float8, b.reserved_usd::float8, COALESCE(s.spent, 0)::float8,"
            f" COALESCE(s.held, 0)::float8 FROM budgets b LEFT JOIN s ON s.scope = b.scope ORDER BY b.scope",
            (LIBRARY,))
        books, differences, total = [], [], (0.0, 0.0)
        for scope, spent, held, calls_spent, calls_held in rows:
            wrong = not (same_cost(spent, calls_spent) and same_cost(held, calls_held))
            if scope == LIBRARY:
                total = (spent, calls_spent)
                if wrong:
                    differences.append(LIBRARY)
                continue
            book = scope.removeprefix("book:")
            books.append({"book": book, "ledger_usd": calls_spent, "library_usd": spent, "calls_differing": []})
            if wrong:
                differences.append(book)
        return {"path": self.path, **self.figures(), "books": books, "books_removed": {},
                "running_total_usd": total[0], "rows_total_usd": total[1],
                "differences": differences, "ok": not differences}

    def figures(self) -> dict:
        """The cap, what is spent and held, and what is left (one statement: one snapshot)."""
        row = self._one("SELECT limit_usd::float8, spent_usd::float8, reserved_usd::float8, (SELECT COUNT(*)"
                        " FROM calls WHERE status = 'pending' AND reserved_usd > 0) FROM budgets WHERE scope = %s",
                        (LIBRARY,))
        limit, spent, reserved, held = row or (None, 0.0, 0.0, 0)
        return {"budget_usd": limit, "spent_usd": spent, "reserved_usd": reserved, "calls_held": held,
                "left_usd": None if limit is None else limit - spent - reserved}


class _Lease:
    """Renews its writer's lease (holders.lease_until) on a connection of its own, every third
    of the lease. `lost` once it could not: from then on the writer must stop itself (no new
    call, no output, no done-mark). The deadline is counted from before each renewal was
    sent, by this machine's monotonic clock (which runs on through a SIGSTOP), so it never
    ends after the lease the database holds."""

    def __init__(self, ledger: PgLedger):
        self.url, self.holder_id = ledger.url, ledger.holder_id
        self.lost = threading.Event()
        self.deadline = time.monotonic() + LEASE_S * 0.9
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="ar-lease", daemon=True)
        self._thread.start()

    def valid(self) -> bool:
        if time.monotonic() >= self.deadline:
            self.lost.set()
        return not self.lost.is_set()

    def _renew_loop(self) -> None:
        conn = None
        while not self._stop.wait(LEASE_S / 3) and not self.lost.is_set():
            sent = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(LEASE_S / 3)),
                                           options=SESSION_OPTIONS)
                renewed = conn.execute(
                    "UPDATE holders SET lease_until = clock_timestamp() + make_interval(secs => %s)"
                    " WHERE holder_id = %s AND lease_until > clock_timestamp()",
                    (LEASE_S, self.holder_id)).rowcount
            except psycopg.Error as e:
                log.warning("cannot renew the lease of holder %d: %s", self.holder_id, _first_line(e, self.url))
                conn = None
                self.valid()
                continue
            if renewed and self.valid():
                self.deadline = sent + LEASE_S * 0.9
            else:
                self.lost.set()
        if self.lost.is_set():
            log.warning("holder %d lost its lease: it stops", self.holder_id)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()


CALL_COLUMNS = ("stage", "page", "model", "attempt", "status", "generation_id", "prompt_tokens",
                "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens", "images",
                "computed_cost_usd", "provider_cost_usd", "upstream_cost_usd", "error", "started_at", "ended_at")


def _has_rows(conn: psycopg.Connection, book: str) -> bool:
    """The book has a ledger here: a run or a setting on record."""
    return conn.execute("SELECT 1 FROM runs WHERE book = %s UNION ALL SELECT 1 FROM meta WHERE book = %s"
                        " LIMIT 1", (book, book)).fetchone() is not None


def has_ledger(url: str, book: str) -> bool:
    conn = _reader(url)
    return conn.execute("SELECT to_regclass('ar_schema') IS NOT NULL").fetchone()[0] and _has_rows(conn, book)


def import_book(url: str, book) -> dict:
    """Move `book`'s checkpoint.db (infra.books.Book; its lock held) into the database at `url`,
    in one transaction, then keep the file aside as checkpoint.db.imported so that nothing
    writes to it again. Refused when the database already has a ledger for the book."""
    from infra.checkpoint import Ledger

    source = Ledger.open_reader(book.ledger_path)
    if source is None:
        raise LedgerError(f"book {book.id!r} has no checkpoint.db to import")
    conn = connect(url)
    try:
        migrate(conn)
        with source.snapshot(), conn.transaction():
            db = source._db
            conn.execute(f"INSERT INTO books (book, added_at) VALUES (%s, {NOW}) ON CONFLICT DO NOTHING", (book.id,))
            if _has_rows(conn, book.id):
                raise LedgerError(f"book {book.id!r} already has a ledger in {describe(url)}: nothing imported")
            for key, value in db.execute("SELECT key, value FROM meta"):
                conn.execute("INSERT INTO meta (book, key, value) VALUES (%s, %s, %s)", (book.id, key, value))
            run_ids = {}
            for old, *row in db.execute("SELECT run_id, started_at, ended_at, status, pid, command, message,"
                                        " key_usage_start, key_usage_end FROM runs ORDER BY run_id"):
                run_ids[old] = conn.execute(
                    "INSERT INTO runs (book, started_at, ended_at, status, pid, command, message,"
                    " key_usage_start, key_usage_end) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " RETURNING run_id", (book.id, *row)).fetchone()[0]
            pages = 0
            for stage, page, status, attempts, error, run_id, updated_at, flags, chars in db.execute(
                    "SELECT stage, page, status, attempts, error, run_id, updated_at, flags, chars FROM pages"):
                conn.execute("INSERT INTO pages (book, stage, page, status, attempts, error, run_id, updated_at,"
                             " flags, chars) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                             (book.id, stage, page, status, attempts, error, run_ids.get(run_id), updated_at,
                              flags, chars))
                pages += 1
            rows = [(book.id, run_ids[run_id], *row) for run_id, *row in db.execute(
                f"SELECT run_id, {', '.join(CALL_COLUMNS)} FROM calls ORDER BY call_id")]
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO calls (book, run_id, {', '.join(CALL_COLUMNS)}) VALUES"
                                f" (%s, %s, {', '.join(['%s'] * len(CALL_COLUMNS))})", rows)
            calls = len(rows)
            total = conn.execute(f"SELECT COALESCE(SUM({CALL_COST}), 0) FROM calls WHERE book = %s",
                                 (book.id,)).fetchone()[0]
            conn.execute("INSERT INTO budgets (scope) VALUES (%s), (%s) ON CONFLICT DO NOTHING", (LIBRARY, f"book:{book.id}"))
            conn.execute("SELECT 1 FROM budgets WHERE scope = ANY(%s) ORDER BY scope FOR UPDATE",
                         ([LIBRARY, f"book:{book.id}"],))
            conn.execute("UPDATE budgets SET spent_usd = spent_usd + %s WHERE scope IN (%s, %s)",
                         (total, LIBRARY, f"book:{book.id}"))
            total = float(total)
            if abs(total - source.total_cost()) > 1e-9:
                raise LedgerError(f"book {book.id!r}: imported total ${total} differs from checkpoint.db's "
                                  f"${source.total_cost()}: nothing imported")
    finally:
        source.close()
        conn.close()
    kept = book.imported_ledger_path
    book.ledger_path.rename(kept)
    return {"book": book.id, "ledger": describe(url), "runs": len(run_ids), "calls": calls, "pages": pages,
            "total_cost_usd": total, "kept_as": kept.name}


def carry_library_cap(url: str, cap_usd: float | None) -> dict | None:
    """library.db's cap (`cap_usd`) onto the database's `library` row when that row has none, so
    that moving a library in keeps its budget. A row that has a cap keeps it (the newer: given
    with AR_LEDGER); `differs` says that library.db's was another. None: library.db had no cap."""
    conn = connect(url)
    try:
        migrate(conn)  # reached, and ready for the books' imports: or one line for them all
        if cap_usd is None:
            return None
        with conn.transaction():
            conn.execute("INSERT INTO budgets (scope) VALUES (%s) ON CONFLICT DO NOTHING", (LIBRARY,))
            kept = conn.execute("SELECT limit_usd::float8 FROM budgets WHERE scope = %s FOR UPDATE",
                                (LIBRARY,)).fetchone()[0]
            if kept is None:
                conn.execute("UPDATE budgets SET limit_usd = %s WHERE scope = %s", (_usd(cap_usd), LIBRARY))
    finally:
        conn.close()
    status = "carried" if kept is None else "same" if same_cost(kept, cap_usd) else "differs"
    return {"status": status, "library_db_usd": cap_usd, "ledger_usd": cap_usd if kept is None else kept}
