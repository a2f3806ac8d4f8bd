"""The PostgreSQL ledger through the command line: `ledger import`, `--ledger`, and that the
default (SQLite) path never imports psycopg or Ray."""
import json
import subprocess
import sys

import pytest

from infra.books import Book
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
    assert json.loads(r.stdout)["calls"] == 6 and "password" not in r.stdout
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
