"""Many books on one machine: one run of several books sharing one client, and a library
budget (library.db) that holds with two `ar` processes at once and after a SIGKILL. Real
`ar.py` processes, a real SQLite library ledger, real HTTP to the local server."""
import json
import signal
import sqlite3
import time

import pytest

from infra.checkpoint import Ledger
from tests.conftest import llm_env, run_ar, start_ar

KEY = "sk-or-v1-library-test-0123456789"


def rows(path, sql):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def ledger_total(book_dir) -> float:
    return Ledger.read(book_dir / "checkpoint.db", lambda led: led.total_cost(), 0.0)


def call_spans(book_dir) -> list[tuple[float, float]]:
    return rows(book_dir / "checkpoint.db", "SELECT started_at, ended_at FROM calls")


def most_in_flight(spans) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_two_processes_on_two_books_share_one_library_budget(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY, "--latency-ms", "200", "--jitter-ms", "200", "--seed", "5")
    a, b = ocr_book(books_dir, "a"), ocr_book(books_dir, "b")
    env = llm_env(server, tmp_path)
    cap = 0.03  # about half of the two books together
    first = start_ar("process", "a", "--library-budget", str(cap), "--force", "--workers", "8",
                     books_dir=books_dir, env=env)
    time.sleep(1.5)  # the cap is kept in library.db: the second process takes it without the flag
    second = start_ar("process", "b", "--force", "--workers", "8", books_dir=books_dir, env=env)
    assert first.wait(timeout=300) == 3 and second.wait(timeout=300) == 3
    billed = server.credits()
    spent_a, spent_b = ledger_total(a), ledger_total(b)
    assert billed <= cap
    assert billed > cap / 2  # it did spend: the reservations did not starve it
    assert spent_a > 0 and spent_b > 0  # each got a share
    assert abs(spent_a + spent_b - billed) <= 1e-9  # the books' ledgers equal the bill
    # both worked at the same time: the cap held with two processes reserving at once
    assert max(s for s, _ in call_spans(b)) > min(s for s, _ in call_spans(a))
    assert min(s for s, _ in call_spans(b)) < max(e for _, e in call_spans(a))
    library_db = books_dir / "library.db"
    assert rows(library_db, "SELECT COUNT(*) FROM reservations") == [(0,)]
    check = run_ar("library", "--check", "--json", books_dir=books_dir)
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["ok"] and report["spent_usd"] == pytest.approx(billed, abs=1e-9)
    assert {x["book"]: x["library_usd"] for x in report["books"]} == pytest.approx({"a": spent_a, "b": spent_b})

    # kept: a run of either book stops at once, spending nothing
    again = run_ar("process", "a", "--force", books_dir=books_dir, env=env)
    assert again.returncode == 3 and "library budget reached" in again.stdout
    assert server.credits() == billed
    # without --force, the estimate of the rest is refused before anything starts
    refused = run_ar("process", "a", "b", books_dir=books_dir, env=env)
    assert refused.returncode == 3 and "library budget" in refused.stderr and "--force" in refused.stderr
    # a new value replaces the kept one
    done = run_ar("process", "--all", "--library-budget", "1", books_dir=books_dir, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert abs(ledger_total(a) + ledger_total(b) - server.credits()) <= 1e-9
    assert run_ar("library", "--check", books_dir=books_dir).returncode == 0


def test_reservations_a_killed_process_left_are_settled_from_the_book_ledgers(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY, "--latency-ms", "400", "--seed", "7")
    a, b = ocr_book(books_dir, "a"), ocr_book(books_dir, "b")
    env = llm_env(server, tmp_path)
    library_db = books_dir / "library.db"
    victim = start_ar("process", "a", "--library-budget", "0.5", "--workers", "8", books_dir=books_dir, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if rows(library_db, "SELECT COUNT(*) FROM spent")[0][0] >= 5 and \
                    rows(library_db, "SELECT COUNT(*) FROM reservations")[0][0] >= 4:
                break
        except sqlite3.OperationalError:  # not made yet, or its tables not yet
            pass
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    left = rows(library_db, "SELECT COUNT(*) FROM reservations")[0][0]
    assert left >= 4  # a SIGKILL leaves its calls' reservations in library.db

    # a run of another book releases what the dead process left, except calls still pending in book a
    other = run_ar("process", "b", "--stages", "ocr", books_dir=books_dir, env=env)
    assert other.returncode == 0, other.stderr
    pending_a = Ledger.read(a / "checkpoint.db", lambda led: led.pending_call_ids(), set())
    held = rows(library_db, "SELECT call_id, in_flight FROM reservations")
    assert {c for c, _ in held} == pending_a and all(f == 0 for _, f in held)

    # book a's next run resolves its pending calls; their reservations become their costs
    resumed = run_ar("process", "a", "--stages", "ocr", books_dir=books_dir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert rows(library_db, "SELECT COUNT(*) FROM reservations") == [(0,)]
    check = json.loads(run_ar("library", "--check", "--json", books_dir=books_dir).stdout)
    assert check["ok"]
    # nothing leaked, nothing counted twice: library.db = the ledgers = the bill
    time.sleep(0.5)  # the server bills an abandoned generation when it ends
    assert check["spent_usd"] == pytest.approx(ledger_total(a) + ledger_total(b), abs=1e-9)
    assert check["spent_usd"] == pytest.approx(server.credits(), abs=1e-9)


def test_one_run_of_two_books_shares_one_client_and_interleaves(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY, "--latency-ms", "100", "--jitter-ms", "50", "--seed", "3")
    a, b = ocr_book(books_dir, "a"), ocr_book(books_dir, "b")
    env = llm_env(server, tmp_path)
    r = run_ar("process", "a", "b", "--stages", "correct", "--workers", "6", "--json", books_dir=books_dir, env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [x["book"] for x in report["books"]] == ["a", "b"] and report["exit_code"] == 0
    assert all(x["outcome"]["status"] == "done" and x["stages"]["correct"]["done"] == 120 for x in report["books"])
    spans_a, spans_b = call_spans(a), call_spans(b)
    # one client: 6 calls in flight for both books together, never 6 each
    assert most_in_flight(spans_a + spans_b) <= 6
    assert most_in_flight(spans_a + spans_b) >= 5
    # interleaved: book b's calls run while book a's do, from the start
    assert min(s for s, _ in spans_b) < sorted(s for s, _ in spans_a)[10]
    # each book has its own run on record, and its own ledger equals its share of the bill
    for book in (a, b):
        assert [r[0] for r in rows(book / "checkpoint.db", "SELECT status FROM runs")] == ["done", "done"]
    assert abs(ledger_total(a) + ledger_total(b) - server.credits()) <= 1e-9


def test_the_exit_code_of_several_books_is_the_worst(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY, "--seed", "4")
    ocr_book(books_dir, "a")
    ocr_book(books_dir, "b")
    env = llm_env(server, tmp_path)
    first = run_ar("process", "a", "--stages", "correct", "--budget", "0.002", "--force", books_dir=books_dir, env=env)
    assert first.returncode == 3
    # a stops on its kept budget (3), b goes to its end (0): the run exits 3
    r = run_ar("process", "a", "b", "--stages", "correct", "--force", "--json", books_dir=books_dir, env=env)
    assert r.returncode == 3, r.stderr
    outcomes = {x["book"]: x["outcome"]["status"] for x in json.loads(r.stdout)["books"]}
    assert outcomes == {"a": "budget", "b": "done"}


@pytest.mark.parametrize("codes, worst", [([0, 3, 130, 1], 1), ([3, 130, 0], 130), ([0, 3, 0], 3), ([0, 0], 0)])
def test_worst_exit_code_orders_error_then_interrupt_then_budget(codes, worst):
    from pipeline.cli import worst_exit_code

    assert worst_exit_code(codes) == worst


def test_many_books_are_named_not_paths(books_dir):
    r = run_ar("process", "../x", "b", books_dir=books_dir)
    assert r.returncode == 2 and "invalid book id '../x'" in r.stderr
    r = run_ar("process", books_dir=books_dir)
    assert r.returncode == 2 and "give one BOOK or more, or --all" in r.stderr
    r = run_ar("process", "--all", books_dir=books_dir)
    assert r.returncode == 1 and "no book in" in r.stderr
