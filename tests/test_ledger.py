"""The ledger's own tests: those that take `ledger_backend` run on SQLite and on PostgreSQL."""
import sqlite3

import pytest

from infra.books import Book
from infra.checkpoint import SCHEMA_VERSION, Ledger, LedgerError
from infra.ledgers import ledger_errors, open_ledger, read_ledger
from infra.pricing import Usage


@pytest.fixture
def book(tmp_path):
    (tmp_path / "b").mkdir()
    return Book(tmp_path / "b")


@pytest.fixture
def ledger(ledger_backend, book):
    led = open_ledger(book)
    yield led
    led.close()


@pytest.fixture
def sqlite_ledger(tmp_path):
    led = Ledger.open_writer(tmp_path / "checkpoint.db")
    yield led
    led.close()


def test_new_ledger_is_wal_with_current_schema(sqlite_ledger, tmp_path):
    conn = sqlite3.connect(tmp_path / "checkpoint.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_totals_are_derived_from_calls_provider_cost_first(ledger):
    run = ledger.start_run(1, "test")
    a = ledger.begin_call(run, "correct", 1, "m/a", 1)
    ledger.finish_call(a, "ok", Usage(prompt_tokens=100, completion_tokens=10), computed_cost=0.010, provider_cost=0.011)
    b = ledger.begin_call(run, "correct", 2, "m/a", 1)
    ledger.finish_call(b, "failed", Usage(prompt_tokens=50), computed_cost=0.002, error="boom")
    c = ledger.begin_call(run, "fix", 2, "m/b", 1)
    ledger.finish_call(c, "ok", computed_cost=0.5)
    assert ledger.total_cost() == pytest.approx(0.011 + 0.002 + 0.5)
    assert ledger.stage_cost("correct") == pytest.approx(0.013)
    models = ledger.costs_by("model")
    assert models["m/a"]["calls"] == 2 and models["m/a"]["failed_calls"] == 1
    assert models["m/a"]["failed_cost_usd"] == pytest.approx(0.002)
    assert models["m/a"]["prompt_tokens"] == 150
    assert ledger.runs()[0]["cost_usd"] == pytest.approx(0.513)


def test_pending_call_is_recorded_before_it_finishes(ledger):
    run = ledger.start_run(1, "test")
    call = ledger.begin_call(run, "correct", 3, "m/a", 1)
    ledger.set_generation_id(call, "gen-1")
    pending = ledger.pending_calls()
    assert [(p.call_id, p.generation_id, p.page) for p in pending] == [(call, "gen-1", 3)]
    ledger.finish_call(call, "recovered", provider_cost=0.25)
    assert ledger.pending_calls() == []
    assert ledger.total_cost() == 0.25


def test_clear_stage_forgets_pages_but_keeps_costs(ledger):
    run = ledger.start_run(1, "test")
    for page in (1, 2):
        call = ledger.begin_call(run, "correct", page, "m/a", 1)
        ledger.finish_call(call, "ok", computed_cost=0.1)
        ledger.mark_done("correct", page, run)
    assert ledger.done_pages("correct") == {1, 2}
    ledger.clear_stage("correct")
    assert ledger.done_pages("correct") == set()
    assert ledger.total_cost() == pytest.approx(0.2)


def test_attempts_count_each_try(ledger):
    run = ledger.start_run(1, "test")
    ledger.mark_failed("ocr", 7, run, "tesseract died")
    assert ledger.failed_pages("ocr") == {7: "tesseract died"}
    ledger.mark_done("ocr", 7, run)
    row = ledger._db.execute("SELECT status, attempts, error FROM pages WHERE page = 7").fetchone()
    assert row == ("done", 2, None)


def test_a_done_mark_keeps_the_length_of_the_page_text(ledger):
    run = ledger.start_run(1, "test")
    ledger.mark_done("ocr", 1, run, {"doubtful": "9 of 90 words"}, chars=2400)
    ledger.mark_done("ocr", 2, run)  # a page without text (or done before ledgers kept it)
    ledger.mark_failed("ocr", 3, run, "tesseract died")
    ledger.mark_done("correct", 1, run, chars=2390)
    assert ledger.page_marks("ocr") == {1: (2400, {"doubtful": "9 of 90 words"})}
    assert ledger.page_marks("correct") == {1: (2390, {})}
    ledger.clear_stage("ocr")
    assert ledger.page_marks("ocr") == {}


def test_a_new_run_closes_runs_left_running_as_crashed(ledger):
    first = ledger.start_run(1, "test")
    second = ledger.start_run(2, "test")
    runs = {r["run_id"]: r for r in ledger.runs()}
    assert runs[first]["status"] == "crashed" and runs[first]["ended_at"] is not None
    assert runs[second]["status"] == "running"


def test_reader_of_a_missing_ledger_creates_nothing(ledger_backend, book):
    assert read_ledger(book, lambda led: led.runs(), None) is None
    assert not book.ledger_path.exists()


def test_reader_cannot_write(ledger, book):
    ledger.start_run(1, "x")
    with pytest.raises(ledger_errors()):
        read_ledger(book, lambda reader: reader.start_run(1, "x"), None)
    assert len(read_ledger(book, lambda led: led.runs(), None)) == 1


def test_with_a_postgresql_ledger_no_checkpoint_db_is_written(ledger, ledger_backend, book):
    run = ledger.start_run(1, "t")
    ledger.mark_done("ocr", 1, run)
    assert book.ledger_path.exists() == (ledger_backend == "sqlite")


def test_money_is_exact_in_postgresql(pg_url, monkeypatch, book):
    """A million-fold sum of a tenth of a cent: numeric keeps every digit (a float sum drifts)."""
    monkeypatch.setenv("AR_LEDGER", pg_url)
    led = open_ledger(book)
    run = led.start_run(1, "t")
    for page in range(1, 11):
        led.finish_call(led.begin_call(run, "correct", page, "m", 1), "ok", computed_cost=0.001)
    exact = led._db.execute("SELECT SUM(computed_cost_usd)::text FROM calls").fetchone()[0]
    led.close()
    assert exact == "0.010"


def test_corrupt_checkpoint_is_reported_and_left_untouched(tmp_path):
    path = tmp_path / "checkpoint.db"
    junk = b"this is not a database" * 100
    path.write_bytes(junk)
    with pytest.raises(LedgerError, match="cannot be read") as err:
        Ledger.open_writer(path)
    assert str(path) in str(err.value)
    with pytest.raises(LedgerError, match="cannot be read"):
        Ledger.open_reader(path)
    assert path.read_bytes() == junk


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "checkpoint.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for opener in (Ledger.open_writer, Ledger.open_reader):
        with pytest.raises(LedgerError, match="newer than this ar knows"):
            opener(path)


def test_a_ledger_of_an_older_schema_is_read_as_it_is_and_migrated_by_the_next_writer(tmp_path):
    """A book last processed by an older ar: readers (status, cost, the monitor) never migrate
    it, and must read it all the same; the next writer migrates it, every figure unchanged."""
    from infra.checkpoint import MIGRATIONS

    path = tmp_path / "checkpoint.db"
    old = sqlite3.connect(path)  # as the ar of schema 1 left it
    old.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    old.execute("INSERT INTO runs (started_at, ended_at, status) VALUES (1, 2, 'done')")
    old.execute("INSERT INTO calls (run_id, stage, page, model, status, computed_cost_usd, started_at)"
                " VALUES (1, 'correct', 1, 'm', 'ok', 0.25, 1)")
    old.commit()
    old.close()

    def figures(ledger):
        return ledger.total_cost(), ledger.costs_by("stage")["correct"]["cost_usd"], ledger.runs()[0]["cost_usd"]

    path.chmod(0o444)
    path.parent.chmod(0o555)  # read-only, as an archive: opened immutable, no view may be written
    try:
        assert Ledger.read(path, figures, None) == (0.25, 0.25, 0.25)
        assert Ledger.read(path, Ledger.runs, [])[0]["key_usage_start"] is None
    finally:
        path.parent.chmod(0o755)
        path.chmod(0o644)
    led = Ledger.open_writer(path)
    assert figures(led) == (0.25, 0.25, 0.25)
    assert led._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    led.close()


def test_reopening_keeps_everything(ledger_backend, book):
    led = open_ledger(book)
    run = led.start_run(1, "t")
    led.finish_call(led.begin_call(run, "s", 1, "m", 1), "ok", computed_cost=1.5)
    led.close()
    again = open_ledger(book)
    assert again.total_cost() == 1.5
    again.close()


def test_with_a_shared_ledger_only_old_temp_files_are_taken_for_a_dead_writers(tmp_path):
    """Two runs of one book (PostgreSQL): a stage starting must not delete the temp file the
    other run is writing now (a CI run lost page_map.json so); one left long ago goes."""
    import os
    import time

    from infra.storage import remove_temp_files

    fresh, old = tmp_path / ".page_map.json.tmp-7504", tmp_path / ".book.md.tmp-99"
    fresh.write_text("{")
    old.write_text("{")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert remove_temp_files(tmp_path, 600) == 1 and fresh.exists() and not old.exists()
    assert remove_temp_files(tmp_path) == 1 and not fresh.exists()  # alone in the book: every one
