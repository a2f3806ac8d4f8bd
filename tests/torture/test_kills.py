"""Kill the real `ar.py process` at random moments, many times, and check that nothing is lost:
no page, no cent, no file (docs/architecture.md, invariants 2 and 3). AR_TORTURE=long: more pages, more kills."""
import random
import signal
import subprocess
import time

from tests.conftest import llm_env, start_ar
from tests.torture.harness import (FAULTS, KEY, KILLS, PAGES, RUN_ENV, SUMMARIES, Torture,
                                   assert_no_key_anywhere, billing, check_book_is_whole, query, seed,
                                   summary)


def whole_and_paid(title: str, draws: int, torture: Torture, book, server, reference_md) -> dict:
    """The book is whole and the ledger equals the server's bill; the summary is printed and
    kept for the end of the session. Returns the billing figures."""
    check_book_is_whole(book, PAGES, reference_md)
    billed = server.credits()
    bill = billing(book, server.generations()["data"])
    text = summary(title, draws, torture, PAGES, bill, billed)
    SUMMARIES.append(text)
    print(text)
    assert abs(bill["recorded_usd"] + bill["unattributed_usd"] - billed) <= 1e-9
    return bill


def test_sigkill_at_random_moments_loses_nothing(sim, books_dir, tmp_path, torture_book):
    draws = seed()
    server = sim("--api-key", KEY, "--seed", str(draws), *FAULTS)
    book = torture_book.copy(books_dir)  # OCR not done: kills land in OCR too
    torture = Torture(book, llm_env(server, tmp_path, **RUN_ENV), (signal.SIGKILL,), random.Random(draws),
                      delays=(0.3, 2.0))
    torture.run()

    bill = whole_and_paid("SIGKILL torture", draws, torture, book, server, torture_book.reference_md)
    assert len(torture.stops) >= KILLS
    assert bill["wasted_calls"] <= sum(s.in_flight for s in torture.stops)
    assert_no_key_anywhere(KEY, books_dir, torture.outputs)


def test_sigterm_and_sigint_stop_gracefully_and_waste_nothing(sim, books_dir, tmp_path, torture_book):
    draws = seed()
    server = sim("--api-key", KEY, "--seed", str(draws), *FAULTS)
    book = torture_book.copy(books_dir, ocr_done=True)
    # two workers: the book takes long enough for many stops, each letting its pages finish
    torture = Torture(book, llm_env(server, tmp_path, **RUN_ENV), (signal.SIGTERM, signal.SIGINT),
                      random.Random(draws), delays=(0.2, 2.5), workers=2)
    torture.run()

    bill = whole_and_paid("SIGTERM/SIGINT torture", draws, torture, book, server, torture_book.reference_md)
    assert len(torture.stops) >= 8
    assert bill["wasted_calls"] == 0  # every call in flight at a stop finished and was used


def test_a_stop_while_ar_starts_is_a_stop_too(sim, books_dir, tmp_path, torture_book):
    """Before a run has set its own handlers (imports, lock, ledger), SIGTERM and Ctrl-C still
    end ar in one line with exit 130, never by the signal's default death or a traceback."""
    server = sim("--api-key", KEY, "--latency-ms", "500")  # one page a run at most: never done
    torture_book.copy(books_dir, ocr_done=True)
    for sig, delay in [(s, d) for d in (0.1, 0.25, 0.4, 0.6) for s in (signal.SIGTERM, signal.SIGINT)]:
        proc = start_ar("process", "book", "--workers", "1", books_dir=books_dir, env=llm_env(server, tmp_path),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in err.decode(), (sig, delay, err.decode())
    runs = query(books_dir / "book", "SELECT run_id, status, started_at, ended_at, message FROM runs WHERE run_id > 1")
    assert {r[1] for r in runs} <= {"interrupted"}, runs  # run 1: its OCR
