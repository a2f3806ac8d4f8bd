"""The PostgreSQL ledger through the command line: `ledger import`, `--ledger`, and that the
default (SQLite) path never imports psycopg or Ray."""
import json
import shutil
import subprocess
import sys

import pytest

from infra.books import Book, Library
from infra.checkpoint import Ledger
from infra.errors import LedgerError, UsageError
from infra.library_budget import SqliteLibrary
from infra.pg_ledger import has_ledger
from pipeline.process import process_book
from tests.conftest import ROOT, make_book, one_error_line, run_ar
from tests.fakestages import ECHO_STAGES, page_cost


def test_ledger_import_moves_a_sqlite_book_in(books_dir, pg_url, monkeypatch):
    monkeypatch.delenv("AR_LEDGER", raising=False)
    book = Book(make_book(books_dir, "b", 6))
    process_book(book, list(ECHO_STAGES), workers=2, registry=ECHO_STAGES, options={"fail_pages": {6}})
    before = json.loads(run_ar("cost", "b", "--json", books_dir=books_dir).stdout)

    r = run_ar("ledger", "import", "b", "--ledger", pg_url, "--json", books_dir=books_dir)
    assert r.returncode == 0, r.stderr
    (imported,) = json.loads(r.stdout)["books"]
    assert imported["status"] == "imported" and imported["calls"] == 6 and "password" not in r.stdout
    assert not book.ledger_path.exists() and (book.root / "checkpoint.db.imported").exists()
    after = json.loads(run_ar("cost", "b", "--json", "--ledger", pg_url, books_dir=books_dir).stdout)
    assert after["total_cost_usd"] == pytest.approx(sum(page_cost(p) for p in range(1, 6)))
    assert after["total_cost_usd"] == pytest.approx(before["total_cost_usd"])
    assert [r["status"] for r in after["runs"]] == ["failed"]
    assert after["stages"] == before["stages"]
    status = json.loads(run_ar("status", "b", "--json", "--ledger", pg_url, books_dir=books_dir).stdout)
    assert status["stages"]["echo"]["done"] == 5 and status["stages"]["echo"]["failed"] == 1

    (book.root / "checkpoint.db.imported").rename(book.ledger_path)  # imported twice: refused, nothing changed
    again = run_ar("ledger", "import", "b", "--ledger", pg_url, books_dir=books_dir)
    assert again.returncode == 1
    one_error_line(again, "already has a ledger")
    assert book.ledger_path.exists()


def _sqlite_book(books_dir, book_id: str, pages: int) -> Book:
    """A book run on SQLite (its checkpoint.db), through the echo stages."""
    book = Book(make_book(books_dir, book_id, pages))
    process_book(book, list(ECHO_STAGES), workers=2, registry=ECHO_STAGES)
    return book


def _runs(book: Book) -> list:
    return Ledger.read(book.ledger_path, lambda ledger: ledger.runs(), [])


def test_with_ar_ledger_a_checkpoint_not_imported_is_refused_not_paid_again(books_dir, pg_url, monkeypatch):
    monkeypatch.delenv("AR_LEDGER", raising=False)
    book = _sqlite_book(books_dir, "b", 3)
    runs, sqlite_bytes = _runs(book), book.ledger_path.read_bytes()

    for command in (("status", "b"), ("cost", "b"), ("status",), ("library",), ("process", "b")):
        r = run_ar(*command, "--ledger", pg_url, books_dir=books_dir)
        assert r.returncode == 1, (command, r.stdout, r.stderr)
        assert "ar.py ledger import b" in one_error_line(r, "book b's checkpoint.db is not in")
    monkeypatch.setenv("AR_LEDGER", pg_url)
    with pytest.raises(LedgerError, match="ledger import b"):  # the run itself: no call, no record
        process_book(book, list(ECHO_STAGES), workers=2, registry=ECHO_STAGES)
    assert not has_ledger(pg_url, "b")
    assert book.ledger_path.read_bytes() == sqlite_bytes and _runs(book) == runs

    assert run_ar("ledger", "import", "b", books_dir=books_dir, env={"AR_LEDGER": pg_url}).returncode == 0
    shutil.copy(book.imported_ledger_path, book.ledger_path)  # e.g. a run without AR_LEDGER made one again
    r = run_ar("status", "b", "--ledger", pg_url, books_dir=books_dir)
    assert r.returncode == 1
    one_error_line(r, "book b has both a checkpoint.db and a ledger in")


def test_a_library_run_with_one_book_not_imported_runs_the_others(books_dir, pg_url, monkeypatch):
    monkeypatch.delenv("AR_LEDGER", raising=False)
    _sqlite_book(books_dir, "old", 2)  # run on SQLite, never imported
    assert run_ar("add", str(ROOT / "tests" / "data" / "real-scans" / "c02-22.pdf"), "--id", "new",
                  books_dir=books_dir).returncode == 0
    r = run_ar("process", "--all", "--stages", "ocr", "--json", "--ledger", pg_url, books_dir=books_dir)
    assert r.returncode == 1, r.stderr  # the worst outcome: the refused book's
    report = json.loads(r.stdout)
    assert [b["book"] for b in report["books"]] == ["new"] and report["books"][0]["outcome"]["status"] == "done"
    (refused,) = report["refused"]
    assert refused["book"] == "old" and "ar.py ledger import old" in refused["why"]
    assert has_ledger(pg_url, "new") and not has_ledger(pg_url, "old")
    view = run_ar("library", "--json", "--ledger", pg_url, books_dir=books_dir)  # the others still shown
    assert view.returncode == 1
    one_error_line(view, "book old's checkpoint.db is not in")
    assert {b["book"]: b["state"] for b in json.loads(view.stdout)["books"]} == {"new": "partial", "old": "unreadable"}


def test_without_ar_ledger_an_imported_book_is_refused_not_paid_again(books_dir, pg_url, monkeypatch):
    monkeypatch.delenv("AR_LEDGER", raising=False)
    book = _sqlite_book(books_dir, "b", 3)
    assert run_ar("ledger", "import", "b", "--ledger", pg_url, books_dir=books_dir).returncode == 0

    for command in (("status", "b"), ("cost", "b"), ("status",), ("process", "b"), ("estimate", "b")):
        r = run_ar(*command, books_dir=books_dir)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        line = one_error_line(r, "book b's ledger is in PostgreSQL (checkpoint.db.imported)")
        assert line.endswith("set AR_LEDGER or --ledger")
    with pytest.raises(UsageError):  # the run itself: no call, no new checkpoint.db
        process_book(book, list(ECHO_STAGES), workers=2, registry=ECHO_STAGES)
    assert not book.ledger_path.exists()
    cost = json.loads(run_ar("cost", "b", "--json", "--ledger", pg_url, books_dir=books_dir).stdout)
    assert len(cost["runs"]) == 1 and cost["total_cost_usd"] == pytest.approx(sum(map(page_cost, (1, 2, 3))))


def test_without_ar_ledger_a_book_begun_in_postgresql_is_refused_not_paid_again(books_dir, pg_url, monkeypatch):
    """Never on SQLite, never imported: its ledger was made in PostgreSQL. A shell without
    AR_LEDGER must not take it for a new book (a new user's trial paid 13 books twice so)."""
    monkeypatch.delenv("AR_LEDGER", raising=False)
    assert run_ar("add", str(ROOT / "tests" / "data" / "real-scans" / "c02-22.pdf"), "--id", "b",
                  books_dir=books_dir).returncode == 0
    assert run_ar("process", "b", "--stages", "ocr", "--ledger", pg_url, books_dir=books_dir).returncode == 0
    for command in (("status", "b"), ("process", "b", "--stages", "ocr"), ("cost", "b")):
        r = run_ar(*command, books_dir=books_dir)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        one_error_line(r, "book b's ledger is in PostgreSQL (ledger.postgresql): set AR_LEDGER or --ledger")
    assert not (books_dir / "b" / "checkpoint.db").exists()
    status = json.loads(run_ar("status", "b", "--json", "--ledger", pg_url, books_dir=books_dir).stdout)
    assert status["stages"]["ocr"]["done"] == 1


def test_ledger_import_moves_a_library_in_with_its_cap(books_dir, pg_url, monkeypatch):
    monkeypatch.delenv("AR_LEDGER", raising=False)
    a, b = _sqlite_book(books_dir, "a", 2), _sqlite_book(books_dir, "b", 3)
    make_book(books_dir, "c", 2)  # added, never run: nothing to import
    make_book(books_dir, "d", 1)
    (books_dir / "d" / "checkpoint.db").write_bytes(b"not a database")
    library = SqliteLibrary.open(Library(books_dir), create=True)
    library.set_limit(1.0)
    library.close()

    r = run_ar("ledger", "import", "a", "c", "d", "--json", "--ledger", pg_url, books_dir=books_dir)
    assert r.returncode == 1  # d refused, in one line, and the others went on
    one_error_line(r, "book 'd'", "checkpoint")
    report = json.loads(r.stdout)
    assert {x["book"]: x["status"] for x in report["books"]} == {"a": "imported", "c": "skipped", "d": "refused"}
    assert (report["imported"], report["skipped"], report["refused"]) == (1, 1, 1)
    assert report["library_budget"] == {"status": "carried", "library_db_usd": 1.0, "ledger_usd": 1.0}

    library = SqliteLibrary.open(Library(books_dir))
    library.set_limit(2.0)  # library.db's cap changed since: the ledger keeps its own, and says so
    library.close()
    r = run_ar("ledger", "import", "--all", "--json", "--ledger", pg_url, books_dir=books_dir)
    report = json.loads(r.stdout)
    assert {x["book"]: x["status"] for x in report["books"]} == {
        "a": "skipped", "b": "imported", "c": "skipped", "d": "refused"}
    assert report["library_budget"] == {"status": "differs", "library_db_usd": 2.0, "ledger_usd": 1.0}
    assert "ar: warning: the ledger keeps its own library cap $1.0000" in r.stderr

    (books_dir / "d" / "checkpoint.db").unlink()  # otherwise the library's report is refused for d
    after = json.loads(run_ar("library", "--json", "--ledger", pg_url, books_dir=books_dir).stdout)
    assert after["library_budget"]["budget_usd"] == 1.0
    assert after["library_budget"]["spent_usd"] == pytest.approx(sum(map(page_cost, (1, 2, 1, 2, 3))))
    assert not a.ledger_path.exists() and not b.ledger_path.exists()


def test_an_unreachable_ledger_is_one_line_without_its_password(books_dir, tmp_path):
    make_book(books_dir, "b", 2)
    url = f"postgresql://ar:s3cret@/ar?host={tmp_path}&port=1"
    r = run_ar("status", "b", "--ledger", url, books_dir=books_dir)
    assert r.returncode == 1
    line = one_error_line(r, "cannot be reached")
    assert "s3cret" not in r.stderr and "ar:***@" in line


def test_the_default_path_imports_neither_psycopg_nor_ray(books_dir):
    make_book(books_dir, "b", 3)
    code = ("import sys, ar; from pipeline.cli import main; "
            f"rc = main(['--books-dir', {str(books_dir)!r}, 'status', 'b']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'ray')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={k: v for k, v in __import__("os").environ.items() if k != "AR_LEDGER"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
