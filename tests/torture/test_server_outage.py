"""The local server itself is killed (SIGKILL) mid-run and started again on the same port.

With retries the run waits through the outage and finishes; without, the pages it could not
do fail, the run ends cleanly (exit 1, "run again") and the next run finishes them. Either
way the ledger equals what both lives of the server billed (its --state journal keeps the
first life's bill, as the real service keeps its records through an outage)."""
import random
import subprocess
import time

import pytest

from tests.conftest import llm_env, run_ar, start_ar
from tests.torture.harness import (FAULTS, KEY, PAGES, SUMMARIES, billing, check_book_is_whole, query,
                                   seed)


@pytest.mark.parametrize("retries", ["20", "0"])
def test_the_server_killed_and_restarted_mid_run(sim, books_dir, tmp_path, torture_book, retries):
    draws = seed()
    rng = random.Random(draws)
    faults = FAULTS if retries != "0" else ("--latency-ms", "150", "--jitter-ms", "350")
    server = sim("--api-key", KEY, "--seed", str(draws), "--state", str(tmp_path / "bill.jsonl"), *faults)
    book = torture_book.copy(books_dir, ocr_done=True)
    env = llm_env(server, tmp_path, AR_TIMEOUT="2", AR_MAX_RETRIES=retries)
    proc = start_ar("process", "book", "--workers", "8", books_dir=books_dir, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while query(book, "SELECT COUNT(*) FROM pages WHERE stage = 'correct'") < [(10,)]:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    before = server.credits()
    in_flight = len(query(book, "SELECT 1 FROM calls WHERE status = 'pending'"))
    server.kill()
    outage = rng.uniform(1.0, 3.0)
    time.sleep(outage)
    server.restart()
    out, err = proc.communicate(timeout=300)
    runs = 1
    if retries == "0":  # it could not wait: the pages it could not do failed, and it said so
        assert proc.returncode == 1, err.decode()
        said = out.decode() + err.decode()
        assert "pages failed" in said and "run again" in said, said
        r = run_ar("process", "book", books_dir=books_dir, env={**env, "AR_MAX_RETRIES": "20"})
        assert r.returncode == 0, r.stderr
        runs += 1
    else:
        assert proc.returncode == 0, err.decode()

    check_book_is_whole(book, PAGES, torture_book.reference_md, failed_first=retries == "0")
    billed = server.credits()
    assert billed >= before
    bill = billing(book, server.generations()["data"])
    assert abs(bill["recorded_usd"] - billed) <= 1e-9
    assert bill["wasted_calls"] == 0
    SUMMARIES.append(
        f"server outage (seed {draws}, AR_MAX_RETRIES={retries}): killed with {in_flight} calls in flight, "
        f"down {outage:.1f} s; {runs} run(s) to the end; billed ${billed:.9f} (both lives), "
        f"recorded ${bill['recorded_usd']:.9f}; {bill['wasted_calls']} calls wasted")
