"""A disk that fills up mid-run and a books dir that is read-only: one clear line, a non-zero
exit, and a ledger that still tells the truth (a page is done only where its output is)."""
import json
import os
import subprocess
from contextlib import contextmanager

import pytest

from infra.books import Book
from infra.checkpoint import Ledger
from pipeline.registry import STAGES as REGISTRY
from tests.conftest import REAL_SCANS, llm_env, one_error_line, run_ar
from tests.torture.harness import KEY, PAGES, STAGES, check_book_is_whole, query


@contextmanager
def mount(*args: str):
    """mount(8) for the test's life (we are root in the test machine); skip where it is refused."""
    target = args[-1]
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", target], check=True)  # lazy: a dying child may still hold a file


def fill(folder, leave_bytes: int) -> None:
    st = os.statvfs(folder)
    with open(os.path.join(folder, "filler"), "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_bytes))


def pages_done_have_outputs(book) -> None:
    for stage in STAGES:
        spec = REGISTRY[stage]
        for (page,) in query(book, "SELECT page FROM pages WHERE stage = ? AND status = 'done'", stage):
            spec.read_page(Book(book), page)


# 40 KB: not even the run's first record fits; 400 KB: a few pages, then the disk is full
@pytest.mark.parametrize("free_kb", [40, 400])
def test_a_full_disk_stops_the_run_in_one_line_and_loses_nothing(sim, tmp_path, torture_book, free_kb):
    server = sim("--api-key", KEY, "--latency-ms", "50")
    env = llm_env(server, tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    with mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)):
        books = small / "books"
        book = torture_book.copy(books, ocr_done=True)
        fill(small, free_kb * 1024)
        r = run_ar("process", "book", "--workers", "4", books_dir=books, env=env)
        assert r.returncode == 1
        line = one_error_line(r, "disk is full", "No space left on device")
        assert f"cannot write {books / 'book'}" in line  # says where
        pages_done_have_outputs(book)

        os.unlink(small / "filler")  # space again: the next run finishes the book
        r = run_ar("process", "book", books_dir=books, env=env)
        assert r.returncode == 0, r.stderr
        check_book_is_whole(book, PAGES, torture_book.reference_md)
        recorded = Ledger.read(Book(book).ledger_path, Ledger.total_cost, None)
        assert abs(recorded - server.credits()) <= 1e-9


def test_a_read_only_books_dir_is_a_clear_error_and_changes_nothing(sim, tmp_path, torture_book):
    server = sim("--api-key", KEY)
    env = llm_env(server, tmp_path)
    books = tmp_path / "books"
    book = torture_book.copy(books, ocr_done=True)
    for f in book.glob("checkpoint.db-*"):  # as a writer leaves it: readers must make a -shm beside it
        f.unlink()
    ledger = (book / "checkpoint.db").read_bytes()
    with mount("--bind", str(books), str(books)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(books)], check=True)
        status = run_ar("status", "book", "--json", books_dir=books, env=env)  # reading needs no writing
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["stages"]["ocr"]["done"] == PAGES
        for args, needles in [
            (("process", "book"), ("writer.lock: Read-only file system",)),
            (("clean", "book", "fix"), ("Read-only file system",)),
            (("add", str(REAL_SCANS / "c02-22.pdf"), "--id", "new"), ("Read-only file system",)),
        ]:
            r = run_ar(*args, books_dir=books, env=env)
            assert r.returncode == 1, (args, r.stderr)
            one_error_line(r, *needles)
    assert (book / "checkpoint.db").read_bytes() == ledger and server.credits() == 0
    r = run_ar("process", "book", books_dir=books, env=env)  # writable again: it runs
    assert r.returncode == 0, r.stderr
