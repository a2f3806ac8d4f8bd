"""The ledger of a book: runs, page status per stage and every billable call, in SQLite.

It is the single source of truth on disk. Every total (total_cost_usd per book, stage, run,
model) is derived from the `calls` table by a query; nothing keeps a second copy that could
disagree with it. One process writes (see infra/lock.py); readers open it read-only and, in
WAL mode, never block the writer and read one consistent snapshot per report.

Durability: WAL with synchronous=NORMAL. A commit survives the death of the process (the
threat here: SIGKILL, Ctrl-C, a closed laptop lid); only an OS crash or power loss can undo
the last commits, never corrupt the file.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from infra.budget import Budget
from infra.errors import LedgerError

SCHEMA_VERSION = 4

# Each entry upgrades the schema from version i to i + 1. Append, never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE runs (
        run_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at REAL NOT NULL,
        ended_at   REAL,
        status     TEXT NOT NULL DEFAULT 'running',
        pid        INTEGER,
        command    TEXT,
        message    TEXT
    );
    CREATE TABLE pages (
        stage      TEXT NOT NULL,
        page       INTEGER NOT NULL,
        status     TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        error      TEXT,
        run_id     INTEGER,
        updated_at REAL NOT NULL,
        PRIMARY KEY (stage, page)
    ) WITHOUT ROWID;
    CREATE TABLE calls (
        call_id            INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id             INTEGER NOT NULL,
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
        computed_cost_usd  REAL,
        provider_cost_usd  REAL,
        error              TEXT,
        started_at         REAL NOT NULL,
        ended_at           REAL
    );
    CREATE INDEX calls_pending ON calls (status) WHERE status = 'pending';
    """,
    # 2: BYOK (the provider's own bill beside OpenRouter's fee), and the key's usage counter
    # around each run, to show spend that no generation id accounts for
    """
    ALTER TABLE calls ADD COLUMN upstream_cost_usd REAL;
    ALTER TABLE runs ADD COLUMN key_usage_start REAL;
    ALTER TABLE runs ADD COLUMN key_usage_end REAL;
    """,
    # 3: each done page's quality flags ({"flag": "reason"}, JSON), for status and review
    """
    ALTER TABLE pages ADD COLUMN flags TEXT;
    """,
    # 4: the length of each done page's text, so that an estimate need not read every page
    """
    ALTER TABLE pages ADD COLUMN chars INTEGER;
    """,
]
# The columns each version added. A reader never migrates (it may not write, and a writer may
# be running an older ar): on an older ledger it sees them as NULL (_views_of_older_schema).
ADDED_COLUMNS: dict[int, dict[str, tuple[str, ...]]] = {
    2: {"calls": ("upstream_cost_usd",), "runs": ("key_usage_start", "key_usage_end")},
    3: {"pages": ("flags",)},
    4: {"pages": ("chars",)},
}

# What a call cost: the provider's figure when it gave one (that is the bill), else ours;
# plus, with the user's own provider key (BYOK), what that provider billed for it.
# The one definition: every total, and the cost finish_call returns, is this expression.
CALL_COST = "(COALESCE(provider_cost_usd, computed_cost_usd, 0) + COALESCE(upstream_cost_usd, 0))"
T = TypeVar("T")

# idle: a run that ended with nothing to do (every page asked for was done): counted apart
RUN_STATUSES = ("running", "done", "idle", "interrupted", "failed", "budget", "crashed")
CALL_FINAL_STATUSES = ("ok", "failed", "lost", "recovered")


@dataclass(frozen=True)
class PendingCall:
    call_id: int
    run_id: int
    stage: str
    page: int | None
    model: str
    generation_id: str | None
    started_at: float


class Ledger:
    """One book's checkpoint.db. Use `open_writer` (after taking the book's lock) or `open_reader`."""

    write_errors = (sqlite3.Error,)  # what a refused record raises (a full disk)
    shared = False  # other writers of the book's ledger may die meanwhile, leaving calls to settle (PgLedger)

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self._db = conn
        self.path = path

    # ---- opening -------------------------------------------------------------------

    @classmethod
    def open_writer(cls, path: Path) -> Ledger:
        conn = _connect(path, read_only=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            _migrate(conn, path)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise _unreadable(path, e) from None
        return cls(conn, path)

    @classmethod
    def open_reader(cls, path: Path) -> Ledger | None:
        """Read-only view; None when the book was never processed (no ledger yet)."""
        if not path.exists():
            return None
        conn = _connect(path, read_only=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            conn.close()
            raise _unreadable(path, e) from None
        _check_version(version, path)
        if version == 0:  # created but not yet initialised by a writer
            conn.close()
            return None
        _views_of_older_schema(conn, version)
        return cls(conn, path)

    @classmethod
    def read(cls, path: Path, queries: Callable[[Ledger], T], absent: T) -> T:
        """What `queries(ledger)` returns, read from one consistent state of the ledger at
        `path`, opened read-only and closed again: no read transaction outlives the call (a
        reader holding one would keep the writer's WAL from being checkpointed). `absent`
        when the book has no ledger yet."""
        ledger = cls.open_reader(path)
        if ledger is None:
            return absent
        try:
            with ledger.snapshot():
                return queries(ledger)
        finally:
            ledger.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run several queries against one consistent state of the ledger."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    # ---- meta ----------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # ---- runs ----------------------------------------------------------------------

    def start_run(self, pid: int, command: str) -> int:
        """Open a run. Runs still marked running belong to a writer that died: close them."""
        now = time.time()
        self._db.execute(
            "UPDATE runs SET status = 'crashed', ended_at = COALESCE("
            "(SELECT MAX(COALESCE(ended_at, started_at)) FROM calls WHERE calls.run_id = runs.run_id),"
            " started_at) WHERE status = 'running'"
        )
        cur = self._db.execute(
            "INSERT INTO runs (started_at, status, pid, command) VALUES (?, 'running', ?, ?)",
            (now, pid, command),
        )
        return cur.lastrowid

    def end_run(self, run_id: int, status: str, message: str | None = None) -> None:
        assert status in RUN_STATUSES, status
        self._db.execute(
            "UPDATE runs SET status = ?, ended_at = ?, message = ? WHERE run_id = ?",
            (status, time.time(), message, run_id),
        )

    def set_key_usage(self, run_id: int, column: str, usd: float) -> None:
        """The provider key's usage counter (USD) at the run's start or end."""
        assert column in ("key_usage_start", "key_usage_end"), column
        self._db.execute(f"UPDATE runs SET {column} = ? WHERE run_id = ?", (usd, run_id))

    def runs(self) -> list[dict]:
        rows = self._db.execute(
            f"SELECT r.run_id, r.started_at, r.ended_at, r.status, r.pid, r.message,"
            f" COALESCE(SUM({CALL_COST}), 0), COUNT(c.call_id), COALESCE(SUM(c.status = 'pending'), 0),"
            f" COALESCE(SUM(c.status IN ('recovered', 'lost')), 0),"
            f" r.key_usage_start, r.key_usage_end"
            f" FROM runs r LEFT JOIN calls c ON c.run_id = r.run_id"
            f" GROUP BY r.run_id ORDER BY r.run_id"
        ).fetchall()
        keys = ("run_id", "started_at", "ended_at", "status", "pid", "message", "cost_usd", "calls",
                "pending_calls", "settled_later", "key_usage_start", "key_usage_end")
        return [dict(zip(keys, row)) for row in rows]

    # ---- pages ---------------------------------------------------------------------

    def done_pages(self, stage: str) -> set[int]:
        rows = self._db.execute(
            "SELECT page FROM pages WHERE stage = ? AND status = 'done'", (stage,)
        )
        return {r[0] for r in rows}

    def page_status(self, stage: str, page: int) -> str | None:
        row = self._db.execute(
            "SELECT status FROM pages WHERE stage = ? AND page = ?", (stage, page)
        ).fetchone()
        return row[0] if row else None

    def mark_done(self, stage: str, page: int, run_id: int, flags: dict[str, str] | None = None,
                  chars: int | None = None) -> None:
        """O(1) in the size of the book: one upsert on the (stage, page) key. `flags`: what a
        person should look at on the page ({"flag": "reason"}); `chars`: its text's length."""
        self._set_page(stage, page, run_id, "done", None, json.dumps(flags) if flags else None, chars)

    def mark_failed(self, stage: str, page: int, run_id: int, error: str) -> None:
        self._set_page(stage, page, run_id, "failed", error, None, None)

    def _set_page(self, stage: str, page: int, run_id: int, status: str, error: str | None,
                  flags: str | None, chars: int | None) -> None:
        self._db.execute(
            "INSERT INTO pages (stage, page, status, attempts, error, run_id, updated_at, flags, chars)"
            " VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)"
            " ON CONFLICT (stage, page) DO UPDATE SET status = excluded.status,"
            " attempts = attempts + 1, error = excluded.error, run_id = excluded.run_id,"
            " updated_at = excluded.updated_at, flags = excluded.flags, chars = excluded.chars",
            (stage, page, status, error, run_id, time.time(), flags, chars),
        )

    def page_marks(self, stage: str) -> dict[int, tuple[int, dict[str, str]]]:
        """Each done page's text length and flags, where its done-mark kept the length (from
        schema 4): what an estimate needs of a page without reading it."""
        rows = self._db.execute(
            "SELECT page, chars, flags FROM pages WHERE stage = ? AND status = 'done' AND chars IS NOT NULL", (stage,))
        return {page: (chars, json.loads(flags) if flags else {}) for page, chars, flags in rows}

    def page_flags(self, stages: list[str]) -> dict[int, dict[str, str]]:
        """Each flagged page's flags, as the last of `stages` (in that order) to have it done
        left them: a later stage carries on, or settles, what an earlier one saw."""
        order = {stage: i for i, stage in enumerate(stages)}
        latest: dict[int, tuple[int, str | None]] = {}
        rows = self._db.execute(
            f"SELECT stage, page, flags FROM pages WHERE status = 'done' AND stage IN ({','.join('?' * len(stages))})",
            stages)
        for stage, page, flags in rows:
            if page not in latest or order[stage] > latest[page][0]:
                latest[page] = (order[stage], flags)
        return {page: json.loads(flags) for page, (_, flags) in sorted(latest.items()) if flags}

    def clear_stage(self, stage: str) -> int:
        """Forget a stage's page status (its outputs are being removed). Costs stay."""
        return self._db.execute("DELETE FROM pages WHERE stage = ?", (stage,)).rowcount

    def failed_pages(self, stage: str) -> dict[int, str]:
        rows = self._db.execute(
            "SELECT page, error FROM pages WHERE stage = ? AND status = 'failed'", (stage,)
        )
        return dict(rows.fetchall())

    # ---- calls: what the LLM client reports, attempt by attempt ---------------------

    def begin_call(self, run_id: int, stage: str, page: int | None, model: str, attempt: int,
                   reserve_usd: float = 0.0) -> int:
        """Record a call as pending before it is sent (docs/architecture.md, invariant 1). Its
        reservation, `reserve_usd`, is held by the run's Budget (run_budget), in memory: the
        book has one writer."""
        cur = self._db.execute(
            "INSERT INTO calls (run_id, stage, page, model, attempt, status, started_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            (run_id, stage, page, model, attempt, time.time()),
        )
        return cur.lastrowid

    def set_generation_id(self, call_id: int, generation_id: str) -> None:
        self._db.execute(
            "UPDATE calls SET generation_id = ? WHERE call_id = ?", (generation_id, call_id)
        )

    def finish_call(
        self,
        call_id: int,
        status: str,
        usage=None,
        computed_cost: float | None = None,
        provider_cost: float | None = None,
        error: str | None = None,
        generation_id: str | None = None,
    ) -> float:
        """Close a call with what it cost; returns the cost as the ledger counts it (CALL_COST).

        `usage` has the token counts (infra.pricing.Usage)."""
        assert status in CALL_FINAL_STATUSES, status
        tokens = _token_columns(usage)
        self._db.execute(
            "UPDATE calls SET status = ?, prompt_tokens = ?, completion_tokens = ?,"
            " cached_tokens = ?, cache_write_tokens = ?, reasoning_tokens = ?, images = ?,"
            " computed_cost_usd = ?, provider_cost_usd = ?, upstream_cost_usd = ?, error = ?,"
            " generation_id = COALESCE(?, generation_id), ended_at = ? WHERE call_id = ?",
            (status, *tokens, computed_cost, provider_cost, usage.upstream_cost if usage else None, error,
             generation_id, time.time(), call_id),
        )
        # read back through CALL_COST, the one definition (the one writer: nothing came between)
        return self._db.execute(f"SELECT {CALL_COST} FROM calls WHERE call_id = ?", (call_id,)).fetchone()[0]

    def reject_call(self, call_id: int, error: str) -> None:
        """A call answered, and was billed, but its answer was not usable: failed (its cost stays)."""
        self._db.execute("UPDATE calls SET status = 'failed', error = ? WHERE call_id = ?", (error, call_id))

    def pending_calls(self) -> list[PendingCall]:
        rows = self._db.execute(
            "SELECT call_id, run_id, stage, page, model, generation_id, started_at FROM calls"
            " WHERE status = 'pending' ORDER BY call_id"
        )
        return [PendingCall(*r) for r in rows]

    def orphaned_calls(self) -> list[PendingCall]:
        """Pending calls that no writer will settle: all of them, the book's writer being us."""
        return self.pending_calls()

    def run_budget(self, limit_usd: float | None):
        """What admits this run's calls under the book's cap (None: no cap)."""
        return Budget(limit_usd, self.total_cost()) if limit_usd is not None else None

    # ---- the fleet's page claims: one writer per book here (its lock), so every page is ours

    def claim_page(self, stage: str, page: int) -> bool:
        return True

    def check_lease(self) -> None:
        """(PostgreSQL: LeaseLost when the writer's lease has lapsed.)"""

    def pending_call_ids(self) -> set[int]:
        return {r[0] for r in self._db.execute("SELECT call_id FROM calls WHERE status = 'pending'")}

    def call_costs(self) -> dict[int, float]:
        """Every settled call's cost (CALL_COST): what the library ledger copies (infra/library_budget.py)."""
        return dict(self._db.execute(f"SELECT call_id, {CALL_COST} FROM calls WHERE status != 'pending'"))

    def calls_with_generation(self) -> list[dict]:
        rows = self._db.execute(
            f"SELECT call_id, generation_id, model, {CALL_COST} FROM calls"
            " WHERE generation_id IS NOT NULL AND status != 'pending' ORDER BY call_id"
        )
        return [dict(zip(("call_id", "generation_id", "model", "cost_usd"), r)) for r in rows]

    # ---- totals: always derived from `calls` ---------------------------------------

    def total_cost(self) -> float:
        return self._db.execute(f"SELECT COALESCE(SUM({CALL_COST}), 0) FROM calls").fetchone()[0]

    def stage_cost(self, stage: str) -> float:
        return self._db.execute(
            f"SELECT COALESCE(SUM({CALL_COST}), 0) FROM calls WHERE stage = ?", (stage,)
        ).fetchone()[0]

    def answered_page_costs(self, stage: str, images: bool | None = None) -> list[float]:
        """What a page cost in `stage` each time a run got it answered, every attempt of that
        run included, pages since cleaned too; only those whose calls carried an image
        (`images` True) or none (False), when it is given."""
        having = "" if images is None else f" AND SUM(images) {'>' if images else '='} 0"
        rows = self._db.execute(
            f"SELECT SUM({CALL_COST}) FROM calls WHERE stage = ? AND page IS NOT NULL GROUP BY page, run_id"
            f" HAVING SUM(status IN ('ok', 'recovered')) > 0{having}", (stage,))
        return [cost for (cost,) in rows]

    def page_models(self, stage: str) -> dict[int, str]:
        """The model whose answer each done page of `stage` holds: its latest answered call's."""
        rows = self._db.execute(
            "SELECT c.page, c.model FROM calls c JOIN pages p ON p.stage = c.stage AND p.page = c.page"
            " WHERE c.stage = ? AND p.status = 'done' AND c.call_id = (SELECT MAX(call_id) FROM calls"
            "  WHERE stage = c.stage AND page = c.page AND status IN ('ok', 'recovered'))", (stage,))
        return dict(rows.fetchall())

    def page_counts(self) -> dict[str, dict[str, int]]:
        """Per stage: how many pages are done and failed."""
        out: dict[str, dict[str, int]] = {}
        for stage, status, n in self._db.execute(
            "SELECT stage, status, COUNT(*) FROM pages GROUP BY stage, status"
        ):
            out.setdefault(stage, {"done": 0, "failed": 0})[status] = n
        return out

    # ---- what a run is doing (the live view, pipeline/monitor.py) ------------------

    def run_outcomes(self, run_id: int) -> dict[str, dict[str, list[int]]]:
        """What one run's calls and pages came to, each with its pages: its failed calls (a
        page once per failed attempt), those of them whose answer was invalid, its failed
        pages by stage, and its done pages by flag."""
        out: dict[str, dict[str, list[int]]] = {"calls": {"failed_calls": [], "invalid_answers": []},
                                                "failed": {}, "flags": {}}
        for page, error in self._db.execute(
                "SELECT page, error FROM calls WHERE run_id = ? AND status = 'failed' ORDER BY page", (run_id,)):
            out["calls"]["failed_calls"].append(page)
            if (error or "").startswith("invalid answer"):
                out["calls"]["invalid_answers"].append(page)
        for stage, page, status, flags in self._db.execute(
                "SELECT stage, page, status, flags FROM pages WHERE run_id = ? AND page > 0"
                " AND (status = 'failed' OR flags IS NOT NULL) ORDER BY page", (run_id,)):
            if status == "failed":
                out["failed"].setdefault(stage, []).append(page)
            for flag in json.loads(flags) if flags else ():
                out["flags"].setdefault(flag, []).append(page)
        return out

    def run_activity(self, run_id: int) -> dict:
        """Of one run: pages it marked done per stage, its calls in flight (pending) and its
        retries (attempts after a call's first)."""
        done = dict(self._db.execute(
            "SELECT stage, COUNT(*) FROM pages WHERE run_id = ? AND status = 'done' GROUP BY stage",
            (run_id,)).fetchall())
        pending, retries = self._db.execute(
            "SELECT COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(attempt > 1), 0)"
            " FROM calls WHERE run_id = ?", (run_id,)).fetchone()
        return {"pages_done": done, "calls_in_flight": pending, "retries": retries}

    def recent_errors(self, limit: int) -> list[dict]:
        """The newest `limit` errors, newest first: failed call attempts and failed pages."""
        rows = self._db.execute(
            "SELECT at, run_id, stage, page, error FROM ("
            " SELECT COALESCE(ended_at, started_at) AS at, run_id, stage, page, error"
            "  FROM calls WHERE error IS NOT NULL"
            " UNION ALL SELECT updated_at, run_id, stage, page, error"
            "  FROM pages WHERE status = 'failed')"
            " ORDER BY at DESC LIMIT ?", (limit,)).fetchall()
        return [dict(zip(("at", "run_id", "stage", "page", "error"), r)) for r in rows]

    def costs_by(self, column: str) -> dict[str, dict]:
        """Calls, failed attempts, tokens and cost grouped by stage, model or run_id."""
        assert column in ("stage", "model", "run_id"), column
        rows = self._db.execute(
            f"SELECT {column}, COUNT(*), SUM(status IN ('failed')),"
            f" SUM(CASE WHEN status = 'failed' THEN {CALL_COST} ELSE 0 END),"
            f" SUM(prompt_tokens), SUM(cached_tokens), SUM(cache_write_tokens),"
            f" SUM(completion_tokens), SUM(reasoning_tokens),"
            f" SUM({CALL_COST}), SUM(computed_cost_usd), SUM(provider_cost_usd), SUM(upstream_cost_usd),"
            f" SUM(status = 'pending'), COUNT(DISTINCT page)"
            f" FROM calls GROUP BY {column} ORDER BY {column}"
        ).fetchall()
        keys = (
            "calls", "failed_calls", "failed_cost_usd", "prompt_tokens", "cached_tokens",
            "cache_write_tokens", "completion_tokens", "reasoning_tokens", "cost_usd",
            "computed_cost_usd", "provider_cost_usd", "upstream_cost_usd", "pending_calls", "pages",
        )
        return {str(row[0]): {k: (v or 0) for k, v in zip(keys, row[1:])} for row in rows}


def _token_columns(usage) -> tuple[int, ...]:
    names = ("prompt_tokens", "completion_tokens", "cached_tokens",
             "cache_write_tokens", "reasoning_tokens", "images")
    return tuple(int(getattr(usage, n, 0) or 0) for n in names) if usage else (0,) * len(names)


def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    # isolation_level=None: autocommit, every statement is its own transaction unless a
    # snapshot() groups them; so each record is durable the moment its call returns.
    uri = f"file:{path}?mode=ro" if read_only else f"file:{path}?mode=rwc"
    if read_only and not os.access(path.parent, os.W_OK) and not Path(f"{path}-wal").exists():
        # A folder no one can write to (a read-only mount, an archive) holds no writer, and the
        # ledger was closed cleanly (no -wal): read the file as it is, without the -shm file a
        # WAL reader would otherwise have to create beside it.
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise LedgerError(f"checkpoint {path} cannot be opened: {e}") from None
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def _check_version(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"checkpoint {path} has schema version {version}, newer than this ar knows "
            f"({SCHEMA_VERSION}): upgrade ar to read it"
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    _check_version(version, path)
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _views_of_older_schema(conn: sqlite3.Connection, version: int) -> None:
    """Temporary views that shadow an older ledger's tables with the columns it lacks, as NULL."""
    missing: dict[str, list[str]] = {}
    for added in range(version + 1, SCHEMA_VERSION + 1):
        for table, columns in ADDED_COLUMNS.get(added, {}).items():
            missing.setdefault(table, []).extend(columns)
    for table, columns in missing.items():
        nulls = ", ".join(f"NULL AS {c}" for c in columns)
        conn.execute(f"CREATE TEMP VIEW {table} AS SELECT *, {nulls} FROM main.{table}")


def _unreadable(path: Path, error: Exception) -> LedgerError:
    if isinstance(error, sqlite3.OperationalError):  # the file may be fine: its folder, disk or a lock is not
        return LedgerError(f"checkpoint {path} cannot be opened ({error}): check that its folder is "
                           "writable (readers too need to write beside it), its disk not full, "
                           "and that no other program holds it")
    return LedgerError(
        f"checkpoint {path} cannot be read ({error}); it was left untouched: "
        "restore it from a backup, or move it aside to start the book's ledger anew"
    )
