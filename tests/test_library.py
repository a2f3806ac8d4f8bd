"""Many books on one machine: one run of several books sharing one client, and a library
budget (library.db) that holds with two `ar` processes at once and after a SIGKILL. Real
`ar.py` processes, a real SQLite library ledger, real HTTP to the local server."""
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from infra.checkpoint import Ledger
from tests.conftest import ROOT, llm_env, make_book, one_error_line, run_ar, start_ar

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
    # interleaved where it keeps the workers busy: book b opens when a's pages left no longer fill
    # them, so its calls start while a's last ones are in flight
    assert min(s for s, _ in spans_b) < max(e for _, e in spans_a)
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
    # without --force, a's own budget refuses a before any work: a is left out, named, and b runs
    r = run_ar("process", "a", "b", "--stages", "correct", "--json", books_dir=books_dir, env=env)
    assert r.returncode == 3, r.stderr
    report = json.loads(r.stdout)
    assert [x["book"] for x in report["refused"]] == ["a"] and "budget" in report["refused"][0]["why"]
    assert {x["book"]: x["outcome"]["status"] for x in report["books"]} == {"b": "done"}
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


def text_layer_books(books_dir, count: int, pages: int) -> list[str]:
    """`count` books of `pages` blank scans whose text is their PDF text layer: OCR is a file read."""
    from io import BytesIO

    from PIL import Image

    blank = BytesIO()
    Image.new("L", (850, 1100), 255).save(blank, "PNG")
    ids = [f"b{n:03d}" for n in range(1, count + 1)]
    for book_id in ids:
        source = make_book(books_dir, book_id, pages) / "source"
        for p in range(1, pages + 1):
            (source / f"page_{p:04d}.png").write_bytes(blank.getvalue())
            (source / f"page_{p:04d}.txt").write_text(f"Page {p} of {book_id}: call me Ishmael.\n")
    return ids


def test_two_processes_on_all_split_the_books_and_do_each_page_once(sim, books_dir, tmp_path):
    server = sim("--api-key", KEY, "--latency-ms", "400", "--seed", "11")
    ids = text_layer_books(books_dir, 10, 3)
    env = llm_env(server, tmp_path)
    args = ("process", "--all", "--stages", "ocr,correct", "--text-layer", "use", "--workers", "2", "--json")
    procs = [start_ar(*args, books_dir=books_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reports = [json.loads(out) for out, _ in outs]
    worked = [{b["book"] for b in r["books"] if b["outcome"]["pages_processed"]} for r in reports]
    assert worked[0] and worked[1] and not worked[0] & worked[1]  # split: each did books, none did one twice
    assert worked[0] | worked[1] == set(ids)
    for me, other, err in ((0, 1, outs[0][1]), (1, 0, outs[1][1])):
        skipped = reports[me]["skipped"]
        assert skipped and all(f"pid {procs[other].pid} " in s["why"] for s in skipped)  # who holds it
        assert {s["book"] for s in skipped} <= worked[other]
        assert all(f"ar: skipped {s['book']}: being processed by pid {procs[other].pid}" in err for s in skipped)
    processed = {}
    for r in reports:
        for b in r["books"]:
            processed[b["book"]] = processed.get(b["book"], 0) + b["outcome"]["pages_processed"]
    assert processed == {b: 6 for b in ids}  # 3 pages in ocr and 3 in correct, once each
    for book_id in ids:  # each page marked done once, with one call
        db = books_dir / book_id / "checkpoint.db"
        assert rows(db, "SELECT stage, COUNT(*), MAX(attempts) FROM pages WHERE status = 'done' GROUP BY stage") == \
            [("correct", 3, 1), ("ocr", 3, 1)]
        assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT page) FROM calls") == [(3, 3)]
    assert abs(sum(ledger_total(books_dir / b) for b in ids) - server.credits()) <= 1e-9


def test_a_book_another_process_holds_is_skipped_and_all_skipped_is_not_a_success(books_dir):
    from infra.books import Book
    from infra.lock import WriterLock

    a, b = (Book(books_dir / i) for i in text_layer_books(books_dir, 2, 1))
    args = ("process", "--all", "--stages", "ocr", "--text-layer", "use", "--json")
    with WriterLock(a.lock_path, a.id):
        r = run_ar(*args, books_dir=books_dir)
        assert r.returncode == 0, r.stderr  # b was run; a is the other process's work
        report = json.loads(r.stdout)
        assert [x["book"] for x in report["books"]] == [b.id] and report["exit_code"] == 0
        assert [x["book"] for x in report["skipped"]] == [a.id]
        assert f"being processed by pid {os.getpid()} on " in report["skipped"][0]["why"]
        assert f"ar: skipped {a.id}: being processed by pid {os.getpid()} on " in r.stderr
        with WriterLock(b.lock_path, b.id):
            r = run_ar(*args[:-1], books_dir=books_dir)
    assert r.returncode == 1 and "no book was run" in r.stdout  # nothing done here: not a success
    assert r.stderr.count("ar: skipped ") == 2 and "Traceback" not in r.stderr
    # one book named alone, held: the one-line error, as ever
    with WriterLock(a.lock_path, a.id):
        r = run_ar("process", a.id, "--stages", "ocr", books_dir=books_dir)
    assert r.returncode == 1 and "is being processed by pid" in r.stderr


def test_a_run_of_many_books_holds_few_open_at_once(books_dir):
    """Under an open-files limit that every book open at once would pass (5 files a book: its
    lock, its ledger and its WAL and shared memory, its log), the books open in a window."""
    ids = text_layer_books(books_dir, 30, 1)

    def few_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    r = subprocess.run([sys.executable, str(ROOT / "ar.py"), "process", "--all", "--stages", "ocr",
                        "--text-layer", "use", "--workers", "2", "--json"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**os.environ, "AR_BOOKS_DIR": str(books_dir)},
                       preexec_fn=few_files)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert [x["book"] for x in report["books"]] == ids
    assert all(x["outcome"]["status"] == "done" and x["stages"]["ocr"]["done"] == 1 for x in report["books"])
    for book_id in ids:  # each book's run opened and closed
        assert rows(books_dir / book_id / "checkpoint.db", "SELECT status FROM runs") == [("done",)]


def test_a_run_of_many_books_shows_one_bar_per_stage_for_all_of_them():
    from types import SimpleNamespace

    from pipeline.progress import StageProgress

    ids = [f"b{n}" for n in range(20)]
    progress = StageProgress({(b, s): 10 for b in ids for s in ("ocr", "correct")},
                             {(b, "ocr"): 10 for b in ids}, {(b, "correct"): 0.5 for b in ids})
    assert [t.description for t in progress.progress.tasks] == ["ocr (20 books)", "correct (20 books)"]
    stage = SimpleNamespace(ctx=SimpleNamespace(book=SimpleNamespace(id="b3")), name="correct",
                            stats={"pages_done": 4, "total_cost_usd": 0.75, "pages_failed": 1})
    progress.update(stage)
    stage.stats.update(pages_done=6, total_cost_usd=1.0)
    progress.update(stage)
    correct = progress.progress.tasks[1]
    assert (correct.total, correct.completed) == (200, 6)
    assert correct.fields["cost"] == pytest.approx(20 * 0.5 + 0.5) and correct.fields["failed"] == "1 failed"
    assert progress.progress.tasks[0].completed == 200


def test_a_book_whose_run_cannot_be_opened_fails_alone_and_the_others_go_on(books_dir):
    a, b = text_layer_books(books_dir, 2, 1)
    (books_dir / b / "logs").write_text("not a folder")  # its run's log cannot be made
    r = run_ar("process", "--all", "--stages", "ocr", "--text-layer", "use", "--json", books_dir=books_dir)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    outcomes = {x["book"]: x["outcome"] for x in json.loads(r.stdout)["books"]}
    assert outcomes[a]["status"] == "done" and outcomes[b]["status"] == "failed"
    assert "logs" in outcomes[b]["message"]
    assert rows(books_dir / b / "checkpoint.db", "SELECT status FROM runs") == [("failed",)]


def test_a_stop_on_the_library_budget_opens_no_further_book(sim, books_dir, tmp_path):
    from pipeline.process import BOOKS_OPEN_AT_ONCE

    server = sim("--api-key", KEY, "--seed", "5")
    ids = text_layer_books(books_dir, BOOKS_OPEN_AT_ONCE + 2, 1)  # under a library budget, the window opens at once
    r = run_ar("process", "--all", "--stages", "ocr,correct", "--text-layer", "use", "--workers", "1",
               "--library-budget", "0.0001", "--force", "--json", books_dir=books_dir, env=llm_env(server, tmp_path))
    assert r.returncode == 3, r.stderr
    report = json.loads(r.stdout)
    run = [x["book"] for x in report["books"]]
    assert run == ids[:BOOKS_OPEN_AT_ONCE]  # they advance together, each to have its share
    assert all(x["outcome"]["status"] == "budget" and "library budget reached" in x["outcome"]["message"]
               for x in report["books"])
    # what would finish them is the library's budget raised, not a book's
    assert all(x["outcome"]["library_budget"] and x["budget_to_finish_usd"] is None for x in report["books"])
    assert [x["book"] for x in report["not_started"]] == ids[len(run):]  # no run on record, nothing spent
    assert all(not (books_dir / b / "checkpoint.db").exists() for b in ids[len(run):])
    assert server.credits() == 0


def test_a_dry_run_of_several_books_is_one_report_and_says_what_the_library_budget_would_do(sim, books_dir, tmp_path):
    """One JSON document for the books together, with the library budget's verdict: the same
    refusal the real run then makes (exit 3), and the dry run wrote nothing."""
    env = llm_env(sim("--api-key", KEY), tmp_path)
    ids = text_layer_books(books_dir, 2, 1)
    args = ("process", *ids, "--stages", "ocr,correct", "--text-layer", "use", "--library-budget", "0.00001")
    dry = run_ar(*args, "--dry-run", "--json", books_dir=books_dir, env=env)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert [b["book"] for b in report["books"]] == ids and report["low_usd"] > 0.00001
    refusal = report["library_budget_refuses"]
    assert refusal.startswith("even the low estimate of the rest of these books")
    assert not (books_dir / "library.db").exists() and all(not (books_dir / b / "checkpoint.db").exists() for b in ids)
    text = run_ar(*args, "--dry-run", books_dir=books_dir, env=env)
    assert text.stdout.strip().endswith("the library budget would refuse this run: " + refusal)
    real = run_ar(*args, books_dir=books_dir, env=env)
    assert real.returncode == 3 and real.stderr.strip() == "ar: error: " + refusal


def test_a_library_budget_below_what_was_spent_refuses_nothing_that_costs_nothing(sim, books_dir, tmp_path):
    """A cap set below the library's spend stops every paid call, but a run with nothing left
    to pay for (its low estimate $0) is not refused; one with something left is, in figures
    that can be told apart."""
    env = llm_env(sim("--api-key", KEY), tmp_path)
    done, todo = text_layer_books(books_dir, 2, 1)
    args = ("--stages", "ocr,correct", "--text-layer", "use")
    assert run_ar("process", done, *args, books_dir=books_dir, env=env).returncode == 0
    again = run_ar("process", done, *args, "--library-budget", "0.000000001", books_dir=books_dir, env=env)
    assert again.returncode == 0, again.stderr
    refused = run_ar("process", todo, *args, "--library-budget", "0.000000001", books_dir=books_dir, env=env)
    assert refused.returncode == 3
    line = one_error_line(refused, "exceeds what is left of the library budget")
    assert "($0.0000 of $0.0000)" not in line and "($0.000000000 of $0.000000001)" in line
