"""What the torture tests share: a book killed or stopped many times, then checked for loss.

The checks read the book's files, its ledger (read-only SQLite) and the local server's own
record of what it billed (`/sim/generations`), and compare them.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.books import Book
from infra.checkpoint import Ledger
from pipeline.registry import STAGES as REGISTRY
from pipeline.reconcile import unattributed_spend
from tests.conftest import start_ar

LONG = os.environ.get("AR_TORTURE") == "long"
PAGES = 300 if LONG else 100
KILLS = 50 if LONG else 20  # at least this many SIGKILLs before the book may be done (~1 for 3 pages)
KEY = "sk-or-v1-torture-RECOGNISABLE-5f3a9c0d7e"
# every fault at once; Retry-After 0 so that 429s cost no idle time
FAULTS = ("--latency-ms", "150", "--jitter-ms", "350", "--retry-after", "0", "--fail-429", "0.1",
          "--fail-500", "0.05", "--fail-timeout", "0.02", "--fail-malformed", "0.05", "--fail-midstream", "0.05")
# a timed-out attempt is retried after 2 s; 20 retries make a page that fails them all unlikely
RUN_ENV = {"AR_TIMEOUT": "2", "AR_MAX_RETRIES": "20"}
STAGES = [spec.name for spec in REGISTRY if spec.per_page]
SUMMARIES: list[str] = []  # printed at the end of the pytest session (conftest.py)


def seed() -> int:
    """AR_TORTURE_SEED replays a run's draws (the kill times; the machine's timing still varies)."""
    draws = int(os.environ.get("AR_TORTURE_SEED") or random.SystemRandom().randrange(1_000_000))
    print(f"AR_TORTURE_SEED={draws}")  # shown with a failure's captured output
    return draws


def query(book_dir: Path, sql: str, *params) -> list[tuple]:
    """A read-only look at the ledger, as `ar.py status` takes it (never blocks a writer)."""
    db = book_dir / "checkpoint.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # created, not yet initialised by the first writer
            return []
        raise
    finally:
        conn.close()


@dataclass
class Stop:
    """One run ended by a signal: what was in flight when it came, and where the run was."""

    signal: str
    after_s: float
    in_flight: int  # calls pending in the ledger right after a SIGKILL (for SIGTERM/INT: at the signal)
    phase: str  # the stages the run had worked in when stopped ("start" if none yet)
    exit_code: int


@dataclass
class Torture:
    """A book run again and again, each run stopped after a random time, until it is done.

    Runs are stopped by each of `signals` in turn."""

    book_dir: Path
    env: dict
    signals: tuple[signal.Signals, ...]
    rng: random.Random
    delays: tuple[float, float]
    workers: int = 4
    stops: list[Stop] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # every run's stdout and stderr
    seconds: float = 0.0

    def run(self, max_runs: int = 400) -> None:
        start = time.monotonic()
        for _ in range(max_runs):
            if self._one_run():
                break
        else:
            raise AssertionError(f"the book was not done after {max_runs} runs")
        self.seconds = time.monotonic() - start

    def _one_run(self) -> bool:
        """One run of `ar.py process`; True when it finished the book on its own."""
        last_run = self._last_run()
        proc = start_ar("process", self.book_dir.name, "--workers", str(self.workers),
                        books_dir=self.book_dir.parent, env=self.env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        delay = self.rng.uniform(*self.delays)
        sig = self.signals[len(self.stops) % len(self.signals)]
        try:
            out, err = proc.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            in_flight = self._pending()
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=180)
            self.outputs.append(out.decode() + err.decode())
            if proc.returncode == 0:  # it finished the book just as the signal came: too late to stop
                return True
            if sig == signal.SIGKILL:  # what the dead run left in flight
                in_flight = self._pending()
            run_id = self._last_run()
            self.stops.append(Stop(sig.name, delay, in_flight,
                                   self._phase(run_id) if run_id != last_run else "start", proc.returncode))
            self.check_after_stop(sig, proc.returncode, err.decode())
            return False
        self.outputs.append(out.decode() + err.decode())
        assert proc.returncode in (0, 1), err.decode()  # 1: pages failed by faults, run again
        return proc.returncode == 0

    def _pending(self) -> int:
        return len(query(self.book_dir, "SELECT 1 FROM calls WHERE status = 'pending'"))

    def _last_run(self) -> int | None:
        rows = query(self.book_dir, "SELECT MAX(run_id) FROM runs")
        return rows[0][0] if rows else None

    def _phase(self, run_id: int) -> str:
        """The stages in which the stopped run had done pages or made calls ("start": none)."""
        worked = {s for (s,) in query(self.book_dir, "SELECT DISTINCT stage FROM pages WHERE run_id = ?", run_id)}
        worked |= {s for (s,) in query(self.book_dir, "SELECT DISTINCT stage FROM calls WHERE run_id = ?", run_id)}
        return "+".join(s for s in ("ocr", "correct", "fix", "merge") if s in worked) or "start"

    def check_after_stop(self, sig: signal.Signals, exit_code: int, stderr: str) -> None:
        if sig == signal.SIGKILL:
            assert exit_code == -signal.SIGKILL
            return
        # graceful: exit 130, the calls in flight finished and recorded, the run closed as interrupted
        # (or as done, when the signal came while a run that had finished the book was closing;
        # idle, when that run had found nothing left to do)
        assert exit_code == 130, stderr
        assert query(self.book_dir, "SELECT COUNT(*) FROM calls WHERE status = 'pending'") == [(0,)]
        assert query(self.book_dir, "SELECT status FROM runs ORDER BY run_id DESC LIMIT 1") in (
            [("interrupted",)], [("done",)], [("idle",)])

    def phases(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for stop in self.stops:
            counts[stop.phase] = counts.get(stop.phase, 0) + 1
        return counts


def check_book_is_whole(book_dir: Path, pages: int, reference_md: bytes, failed_first: bool = False) -> None:
    """Every page done exactly once per stage, every output valid, nothing left behind.

    `failed_first`: pages may have been marked failed by a run before one did them (the
    ledger's attempts count both), so only that they are done is checked."""
    rows = query(book_dir, "SELECT stage, page, status, attempts FROM pages")
    for stage in STAGES:
        done = sorted(p for s, p, status, attempts in rows
                      if s == stage and status == "done" and (attempts == 1 or failed_first))
        assert done == list(range(1, pages + 1)), f"{stage}: pages not done exactly once"
        files = sorted(REGISTRY[stage].folder(Book(book_dir)).iterdir())
        assert [f.name for f in files] == [f"page_{p:04d}.json" for p in range(1, pages + 1)]
        for f in files:
            assert json.loads(f.read_bytes())["page"] == int(f.stem[5:]) or stage == "ocr"
    assert ("merge", 0, "done", 1) in rows
    for report in ("cost_report.json", "structured/metadata.json"):
        json.loads((book_dir / report).read_bytes())
    leftovers = [f for f in book_dir.rglob("*") if ".tmp-" in f.name or f.name == "writer.lock"]
    assert not leftovers, leftovers
    assert (book_dir / "book.md").read_bytes() == reference_md
    assert query(book_dir, "SELECT COUNT(*) FROM calls WHERE status = 'pending'") == [(0,)]
    assert query(book_dir, "SELECT COUNT(*) FROM runs WHERE status = 'running'") == [(0,)]


def billing(book_dir: Path, generations: list[dict]) -> dict:
    """The ledger against the server's own record of every generation it billed.

    A billed generation is wasted when it was made in a run other than the one that
    finished its page: the page had to be redone after that run was stopped."""
    calls = {gen_id: (run_id, stage, page) for gen_id, run_id, stage, page in
             query(book_dir, "SELECT generation_id, run_id, stage, page FROM calls WHERE generation_id IS NOT NULL")}
    finished_in = {(stage, page): run_id for stage, page, run_id in
                   query(book_dir, "SELECT stage, page, run_id FROM pages WHERE status = 'done'")}
    billed = [g for g in generations if g["cost"] > 0]
    # A kill after the server sent a stream's headers and before ar read them leaves a call
    # without an id, billed: only the key's counter sees it, as `cost --reconcile` shows.
    unrecorded = [g for g in billed if g["id"] not in calls]
    never_answered = query(book_dir, "SELECT COUNT(*) FROM calls WHERE status = 'lost' AND generation_id IS NULL")[0][0]
    unattributed, _ = Ledger.read(Book(book_dir).ledger_path, lambda ledger: unattributed_spend(ledger.runs()),
                                  (None, 0))
    assert len(unrecorded) <= never_answered, f"billed but not in the ledger: {[g['id'] for g in unrecorded]}"
    assert abs((unattributed or 0.0) - sum(g["cost"] for g in unrecorded)) <= 1e-9, \
        f"billed but not in the ledger, and not shown as unattributed ({unattributed}): {unrecorded}"
    wasted, late = [], []
    for g in billed:
        if g in unrecorded:
            continue
        run_id, stage, page = calls[g["id"]]
        if run_id < finished_in[(stage, page)]:
            wasted.append(g)
        elif run_id > finished_in[(stage, page)]:
            late.append(g)
    assert not late, f"billed again after its page was done: {late}"
    ledger_total = Ledger.read(Book(book_dir).ledger_path, Ledger.total_cost, 0.0)
    return {"billed_calls": len(billed), "billed_usd": sum(g["cost"] for g in billed),
            "recorded_usd": ledger_total, "unattributed_usd": unattributed or 0.0,
            "unattributed_calls": len(unrecorded), "wasted_calls": len(wasted),
            "wasted_usd": sum(g["cost"] for g in wasted),
            "calls_recorded": query(book_dir, "SELECT COUNT(*) FROM calls")[0][0],
            "recovered_calls": query(book_dir, "SELECT COUNT(*) FROM calls WHERE status = 'recovered'")[0][0]}


def assert_no_key_anywhere(key: str, books_dir: Path, outputs: list[str]) -> None:
    """The key reaches no file of the library (ledgers, logs, reports, outputs) and no output."""
    assert not [o for o in outputs if key in o]
    leaks = [f for f in books_dir.rglob("*") if f.is_file() and key.encode() in f.read_bytes()]
    assert not leaks, leaks


def summary(title: str, seed_: int, t: Torture, pages: int, bill: dict, total_billed: float) -> str:
    in_flight = sum(s.in_flight for s in t.stops)
    lines = [
        f"{title} (seed {seed_}, AR_TORTURE={'long' if LONG else 'default'})",
        f"  stops: {len(t.stops)} ({'/'.join(s.name for s in t.signals)}), then {len(t.outputs) - len(t.stops)} run(s) to the end; "
        f"{len(t.outputs)} runs, {t.seconds:.0f} s",
        f"  stopped in: {', '.join(f'{k} {v}' for k, v in sorted(t.phases().items()))}",
        f"  pages: {pages} x ocr, correct, fix, each done exactly once; book.md identical to the reference",
        f"  billed by the server ${total_billed:.9f} in {bill['billed_calls']} calls; recorded in the ledger "
        f"${bill['recorded_usd']:.9f} ({bill['calls_recorded']} calls, {bill['recovered_calls']} resolved "
        f"after a kill); unattributed (key counter) ${bill['unattributed_usd']:.9f} in {bill['unattributed_calls']} "
        f"calls never answered; difference ${abs(total_billed - bill['recorded_usd'] - bill['unattributed_usd']):.1e}",
        f"  wasted: {bill['wasted_calls']} billed calls (${bill['wasted_usd']:.6f}) for pages redone, "
        f"vs {in_flight} calls in flight at the stops",
    ]
    return "\n".join(lines)

