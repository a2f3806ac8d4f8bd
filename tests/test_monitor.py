"""The live view (tools/monitor.py, `ar.py monitor`): its figures against the ledger, in a
real run against the local server and on ledgers built by hand; the live screen in a real
terminal (tmux); a writer SIGKILLed under it; one-line errors."""
import io
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from infra.books import Book, Library
from infra.checkpoint import CALL_COST, Ledger
from pipeline.monitor import book_snapshot
from tests.conftest import ROOT, make_book, run_ar
from pipeline.live import Watcher

MONITOR = str(ROOT / "tools" / "monitor.py")
KEY = "sk-or-v1-monitor-test-0123456789"


def llm_env(server, tmp_path) -> dict:
    return {"OPENROUTER_BASE_URL": server.url, "OPENROUTER_API_KEY": KEY, "AR_CACHE_DIR": str(tmp_path / "cache")}


def run_monitor(*args: str, books_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, MONITOR, *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "AR_BOOKS_DIR": str(books_dir)})


def start_process(book_id: str, books_dir: Path, env: dict, workers: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "ar.py"), "process", book_id, "--workers", str(workers)],
                            cwd=ROOT, env={**os.environ, "AR_BOOKS_DIR": str(books_dir), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def ledger_now(db: Path) -> dict:
    """The ledger's figures, read directly with SQL (not through the code under test)."""
    if not db.exists():
        return {"done": {}, "total": 0.0, "run_cost": 0.0}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        done = dict(conn.execute("SELECT stage, COUNT(*) FROM pages WHERE status = 'done' GROUP BY stage"))
        total = conn.execute(f"SELECT COALESCE(SUM({CALL_COST}), 0) FROM calls").fetchone()[0]
        run_cost = conn.execute(f"SELECT COALESCE(SUM({CALL_COST}), 0) FROM calls WHERE run_id ="
                                " (SELECT MAX(run_id) FROM runs)").fetchone()[0]
    finally:
        conn.close()
    return {"done": done, "total": total, "run_cost": run_cost}


def test_monitor_json_during_a_real_run_matches_the_ledger_and_only_moves_forward(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY, "--latency-ms", "300")
    ocr_book(books_dir, "book")
    db = books_dir / "book" / "checkpoint.db"
    proc = start_process("book", books_dir, llm_env(server, tmp_path), workers=4)
    snaps = []
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            before = ledger_now(db)
            r = run_monitor("book", "--once", "--json", books_dir=books_dir)
            after = ledger_now(db)
            assert r.returncode == 0, r.stderr
            s = json.loads(r.stdout)
            # read between `before` and `after`: every figure lies between the two
            for stage, st in s["stages"].items():
                assert before["done"].get(stage, 0) <= st["done"] <= after["done"].get(stage, 0), stage
            assert before["total"] - 1e-12 <= s["total_cost_usd"] <= after["total"] + 1e-12
            assert before["run_cost"] - 1e-12 <= s["run_cost_usd"] <= after["run_cost"] + 1e-12
            assert 0 <= s["calls_in_flight"] <= 8  # 4 workers, two LLM stages
            snaps.append(s)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0, proc.stderr.read()
    final = json.loads(run_monitor("book", "--json", books_dir=books_dir).stdout)
    snaps.append(final)

    running = [s for s in snaps if s["state"] == "running"]
    assert len(running) >= 3
    # seen mid-run: correction under way, calls in flight, a rate and an ETA
    assert any(0 < s["stages"]["correct"]["done"] < 120 and s["calls_in_flight"] > 0
               and s["eta_seconds"] > 0 for s in running)
    for a, b in zip(snaps, snaps[1:]):
        for stage in a["stages"]:
            assert b["stages"][stage]["done"] >= a["stages"][stage]["done"], stage
        assert b["total_cost_usd"] >= a["total_cost_usd"]
        if a["run"] and b["run"]["run_id"] == a["run"]["run_id"]:
            assert b["run_cost_usd"] >= a["run_cost_usd"]
    for s in running:  # the figures follow the formulas of pipeline/monitor.py
        correct = s["stages"]["correct"]
        elapsed = s["at"] - s["run"]["started_at"]
        assert correct["pages_per_minute"] == pytest.approx(correct["done_this_run"] * 60 / elapsed)
        if correct["pages_per_minute"]:
            assert correct["eta_seconds"] == pytest.approx((120 - correct["done"]) * 60 / correct["pages_per_minute"])
        if s["projected_total_usd"] is not None:
            left = sum(st["cost_per_page_usd"] * (st["total"] - st["done"])
                       for name, st in s["stages"].items() if name in ("correct", "fix"))
            assert s["projected_total_usd"] == pytest.approx(s["total_cost_usd"] + left)

    assert final["state"] == "done" and final["calls_in_flight"] == 0 and final["eta_seconds"] == 0
    billed = server.credits()
    assert final["total_cost_usd"] == pytest.approx(billed, abs=1e-9) == ledger_now(db)["total"]
    assert final["projected_total_usd"] == pytest.approx(final["total_cost_usd"])
    assert final["cost_per_page_usd"] == pytest.approx(final["total_cost_usd"] / 120)


# ---- on ledgers built by hand: exact figures -----------------------------------------------

def call(ledger: Ledger, run: int, stage: str, page: int, cost: float | None, attempt: int = 1,
         error: str | None = None) -> None:
    c = ledger.begin_call(run, stage, page, "m/a", attempt)
    if cost is not None:  # else it stays pending: in flight
        ledger.finish_call(c, "failed" if error else "ok", computed_cost=cost, error=error)


def half_done_book(books_dir: Path) -> tuple[Book, Ledger]:
    """10 pages: OCR done by an earlier run; this run (running: our pid) corrected 4 pages."""
    book = Book(make_book(books_dir, "half", 10))
    ledger = Ledger.open_writer(book.ledger_path)
    first = ledger.start_run(os.getpid(), "ar.py process half --stages ocr")
    for p in range(1, 11):
        ledger.mark_done("ocr", p, first)
    ledger.end_run(first, "done")
    ledger.set_meta("budget_usd", "1.0")
    run = ledger.start_run(os.getpid(), "ar.py process half")
    # begun a minute ago: a rate over a realistic time, not the microseconds this test takes
    ledger._db.execute("UPDATE runs SET started_at = started_at - 60 WHERE run_id = ?", (run,))
    call(ledger, run, "correct", 1, 0.0, error="HTTP 429: slow down")
    call(ledger, run, "correct", 1, 0.01, attempt=2)
    for p in range(1, 5):
        if p > 1:
            call(ledger, run, "correct", p, 0.01)
        ledger.mark_done("correct", p, run)
    call(ledger, run, "correct", 5, None)
    return book, ledger


def test_figures_of_a_run_under_way(books_dir):
    book, ledger = half_done_book(books_dir)
    try:
        s = book_snapshot(book)
        assert s["state"] == "running" and s["runs"] == 2
        correct, ocr = s["stages"]["correct"], s["stages"]["ocr"]
        assert (correct["done"], correct["done_this_run"], ocr["done"], ocr["done_this_run"]) == (4, 4, 10, 0)
        elapsed = s["at"] - s["run"]["started_at"]
        assert correct["pages_per_minute"] == pytest.approx(4 * 60 / elapsed)
        assert correct["eta_seconds"] == pytest.approx(6 * 60 / correct["pages_per_minute"])
        assert s["eta_seconds"] == correct["eta_seconds"] and s["pages_per_minute"] == correct["pages_per_minute"]
        assert ocr["pages_per_minute"] == 0 and ocr["eta_seconds"] == 0
        assert s["total_cost_usd"] == pytest.approx(0.04) and s["run_cost_usd"] == pytest.approx(0.04)
        assert correct["cost_per_page_usd"] == pytest.approx(0.01)
        assert s["projected_total_usd"] is None  # fix has pages left, and no cost per page yet
        assert s["budget_usd"] == 1.0 and s["budget_left_usd"] == pytest.approx(0.96)
        assert s["calls_in_flight"] == 1 and s["retries"] == 1
        assert [e["error"] for e in s["recent_errors"]] == ["HTTP 429: slow down"]

        call(ledger, s["run"]["run_id"], "fix", 1, 0.05)
        ledger.mark_done("fix", 1, s["run"]["run_id"])
        s = book_snapshot(book)
        assert s["projected_total_usd"] == pytest.approx(0.09 + 0.01 * 6 + 0.05 * 9)
        assert s["cost_per_page_usd"] == pytest.approx(0.01 + 0.05)
    finally:
        ledger.close()


def rendered(renderable, width: int = 80) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue()


def test_the_view_fits_80_columns_with_stages_costs_and_errors(books_dir):
    book, ledger = half_done_book(books_dir)
    ledger.close()
    screen = rendered(Watcher(Library(books_dir), ["half"], None).view())
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80
    for stage in ("ocr", "correct", "fix", "merge"):  # one line each, not wrapped
        assert any(re.match(rf"│ {stage} .* \d+/(10|1) ", line) for line in lines), stage
    assert "half" in screen and "running" in screen and "$0.0400" in screen
    assert "budget $1.0000, left $0.9600" in screen and "HTTP 429" in screen
    assert "calls in flight 1" in screen and "retries 1" in screen


def test_a_ledger_that_appears_or_cannot_be_read_is_shown_as_it_was_last_read(books_dir):
    book = Book(make_book(books_dir, "late", 3))
    watcher = Watcher(Library(books_dir), ["late"], None)
    assert watcher.refresh()["state"] == "new"  # never processed: no ledger yet
    ledger = Ledger.open_writer(book.ledger_path)
    run = ledger.start_run(os.getpid(), "ar.py process late")
    call(ledger, run, "correct", 1, 0.25)
    ledger.close()
    assert watcher.refresh()["total_cost_usd"] == pytest.approx(0.25)

    good = book.ledger_path.read_bytes()
    book.ledger_path.write_bytes(b"this is not a database" * 100)  # e.g. being replaced
    stale = rendered(watcher.view())
    assert "$0.2500" in stale and "stale, from" in stale and "cannot be read" in watcher.stale["late"]
    book.ledger_path.write_bytes(good)
    assert "stale" not in rendered(watcher.view())


def test_the_library_view_reads_again_only_the_books_that_moved(books_dir, monkeypatch):
    """Refreshed twice a second over a library of thousands of books, the view must not read
    every ledger each time: a book not running whose files did not move keeps its figures."""
    import pipeline.live

    def spent(book_id: str, cost: float, end: bool = True) -> None:
        ledger = Ledger.open_writer(Book(books_dir / book_id).ledger_path)
        run = ledger.start_run(os.getpid(), f"ar.py process {book_id}")
        call(ledger, run, "correct", 1, cost)
        if end:
            ledger.end_run(run, "done")
        ledger.close()

    for book_id in ("a", "b", "c"):
        make_book(books_dir, book_id, 2)
    spent("a", 0.25)
    spent("b", 0.5)
    spent("c", 0.125, end=False)  # its run goes on
    reads = Counter()
    real = pipeline.live.book_snapshot
    monkeypatch.setattr(pipeline.live, "book_snapshot", lambda book, budget: reads.update([book.id]) or real(book, budget))
    watcher = Watcher(Library(books_dir), [], None)
    assert watcher.refresh()["total_cost_usd"] == pytest.approx(0.875) and reads == Counter("abc")
    watcher.refresh()
    assert reads == Counter({"a": 1, "b": 1, "c": 2})  # only the running one again
    spent("b", 0.0625)
    report = watcher.refresh()
    assert reads == Counter({"a": 1, "b": 2, "c": 3})
    assert {x["book"]: x["total_cost_usd"] for x in report["books"]} == pytest.approx(
        {"a": 0.25, "b": 0.5625, "c": 0.125})


def test_monitor_json_has_the_status_figures_and_the_library_form(books_dir):
    book, ledger = half_done_book(books_dir)
    ledger.close()
    make_book(books_dir, "fresh", 2)
    status = json.loads(run_ar("status", "half", "--json", books_dir=books_dir).stdout)
    monitor = json.loads(run_ar("monitor", "half", "--json", books_dir=books_dir).stdout)
    for key, value in status.items():
        if key != "stages":
            assert monitor[key] == value, key
    for name, st in status["stages"].items():
        assert {k: monitor["stages"][name][k] for k in st} == st
    both = json.loads(run_monitor("--json", books_dir=books_dir).stdout)
    assert [b["book"] for b in both["books"]] == ["fresh", "half"]
    assert [b["state"] for b in both["books"]] == ["new", "running"]
    assert both["total_cost_usd"] == pytest.approx(0.04) and both["calls_in_flight"] == 1


def test_once_shows_the_library_running_books_in_full_the_others_in_a_line(books_dir):
    book, ledger = half_done_book(books_dir)
    ledger.close()
    make_book(books_dir, "fresh", 2)
    r = run_monitor("--once", books_dir=books_dir)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("2 books  this run $0.0400  all runs $0.0400  in ")
    assert any(re.match(r"╭─ half\s+running\s+10 pages", line) for line in lines)
    assert any(re.match(r"│ correct .* 4/10 ", line) for line in lines)
    assert any(re.match(r"fresh\s+new\s+2\s+\$0\.0000", line) for line in lines)
    assert not any("╭─ fresh" in line for line in lines)


def test_unknown_or_invalid_book_or_interval_is_a_one_line_error(books_dir):
    make_book(books_dir, "there", 1)
    r = run_monitor("there", "nosuch", "--once", books_dir=books_dir)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no book 'nosuch'" in r.stderr
    r = run_monitor("../etc", books_dir=books_dir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "invalid book id" in r.stderr
    r = run_monitor("there", "--interval", "0", books_dir=books_dir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--interval" in r.stderr


# ---- the live view in a real terminal -----------------------------------------------------

class Tmux:
    """A tmux server of our own (its own socket), 80x30, running one command."""

    def __init__(self, command: list[str]):
        self.socket = f"ar-test-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-x", "80", "-y", "30",
                   f"{shlex.join(command)}; echo monitor exited $?; sleep 600")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, check=True, timeout=10).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not on screen:\n{self.screen()}")

    def ctrl_c(self) -> None:
        self._tmux("send-keys", "C-c")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def live_monitor(books_dir: Path, *books: str) -> Tmux:
    return Tmux(["env", f"AR_BOOKS_DIR={books_dir}", sys.executable, MONITOR, *books])


def test_live_view_in_a_real_terminal_shows_the_run_and_quits_on_ctrl_c(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY, "--latency-ms", "300")
    ocr_book(books_dir, "book")
    term = live_monitor(books_dir, "book")  # started before the run
    proc = None
    try:
        term.wait_for(r"book\s+partial")
        proc = start_process("book", books_dir, llm_env(server, tmp_path), workers=2)
        screen = term.wait_for(r"book\s+running[\s\S]*all runs \$0\.0*[1-9]")
        for stage in ("ocr", "correct", "fix", "merge"):
            assert re.search(rf"│ {stage}\s.*\d+/(120|1)\s", screen), stage
        assert "calls in flight" in screen and "Traceback" not in screen
        term.ctrl_c()
        screen = term.wait_for(r"monitor exited \d+")
        assert "monitor exited 0" in screen and "Traceback" not in screen
        assert proc.poll() is None  # the run went on, untouched
    finally:
        term.kill()
        if proc is not None:
            proc.kill()
            proc.wait()


def test_live_view_survives_a_writer_sigkilled_under_it(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY, "--latency-ms", "300")
    ocr_book(books_dir, "book")
    proc = start_process("book", books_dir, llm_env(server, tmp_path), workers=2)
    term = live_monitor(books_dir, "book")
    try:
        term.wait_for(r"book\s+running[\s\S]*calls in flight [1-9]")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        screen = term.wait_for(r"book\s+crashed")
        assert "monitor exited" not in screen and "Traceback" not in screen
        s = json.loads(run_monitor("book", "--json", books_dir=books_dir).stdout)
        assert s["state"] == "crashed" and s["calls_in_flight"] == 0 and s["eta_seconds"] is None
        term.ctrl_c()
        assert "monitor exited 0" in term.wait_for(r"monitor exited \d+")
    finally:
        term.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_library_view_shows_the_books_in_progress_and_the_library_budget_left(sim, books_dir, tmp_path, ocr_book):
    from tests.conftest import llm_env, start_ar

    server = sim("--latency-ms", "300")
    ocr_book(books_dir, "a")
    ocr_book(books_dir, "b")
    run = start_ar("process", "a", "b", "--library-budget", "0.5", "--stages", "correct", "--workers", "4",
                   books_dir=books_dir, env=llm_env(server, tmp_path))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            report = json.loads(run_monitor("--json", books_dir=books_dir).stdout)
            cap = report["library_budget"]
            if report["books_running"] == ["a", "b"] and cap["spent_usd"] > 0:
                break
            time.sleep(0.2)
        assert report["books_running"] == ["a", "b"]
        assert cap["budget_usd"] == 0.5 and 0 < cap["spent_usd"] < 0.5
        assert cap["left_usd"] == pytest.approx(0.5 - cap["spent_usd"] - cap["reserved_usd"])
        shown = run_monitor("--once", books_dir=books_dir).stdout
        assert re.search(r"2 running\s+library budget \$0\.5000\s+spent \$0\.\d{4}\s+held .* left \$0\.\d{4}", shown)
        assert "╭─ a" in shown and "╭─ b" in shown
    finally:
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=120) == 130
