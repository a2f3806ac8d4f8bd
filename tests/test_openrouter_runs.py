"""Whole runs of the real `ar.py` against the local server behaving as OpenRouter does
(tools/openrouter_sim.py): a variable-price router, BYOK, a call abandoned while the provider
is still thinking, and spend that no generation id accounts for. Each checks the ledger
against the server's bill, and against the key's own usage counter (GET /key)."""
import json
import signal
import time

import httpx
import pytest

from infra.books import Book
from infra.checkpoint import Ledger
from tests.conftest import llm_env, one_error_line, run_ar, start_ar, text_pages

KEY = "sk-or-v1-openrouter-runs-0123456789"


@pytest.fixture
def small_book(books_dir, tmp_path):
    """A 3-page book of real prose, OCR done."""
    scans = text_pages(tmp_path / "scans", 3)
    for args in (("add", str(scans), "--id", "book"), ("process", "book", "--stages", "ocr")):
        r = run_ar(*args, books_dir=books_dir)
        assert r.returncode == 0, r.stderr
    return books_dir / "book"


def ledger_total(book_dir) -> float:
    return Ledger.read(Book(book_dir).ledger_path, Ledger.total_cost, 0.0)


def key_usage(server) -> float:
    data = server.key_info()
    return data["usage"] + data.get("byok_usage", 0.0)


def test_a_variable_price_router_is_refused_under_a_budget_and_runs_under_a_ceiling(sim, books_dir, tmp_path,
                                                                                    small_book):
    server = sim("--api-key", KEY, "--auto-router")
    env = llm_env(server, tmp_path)
    priced = run_ar("pricing", "openrouter/auto", "--json", books_dir=books_dir, env=env)
    assert priced.returncode == 0 and "-1" not in priced.stdout
    assert json.loads(priced.stdout)["models"]["openrouter/auto"]["prompt"] is None
    estimate = json.loads(run_ar("estimate", "book", "--model", "openrouter/auto", "--json",
                                 books_dir=books_dir, env=env).stdout)
    assert estimate["stages"]["correct"]["low_usd"] is None and estimate["low_usd"] is None  # unknown, not negative

    refused = run_ar("process", "book", "--model", "openrouter/auto", "--budget", "0.00001",
                     books_dir=books_dir, env=env)
    assert refused.returncode == 1
    one_error_line(refused, "openrouter/auto has a variable price")
    assert server.credits() == 0 and ledger_total(small_book) == 0  # not one call was sent

    ceiling = {**env, "AR_MAX_PROMPT_PRICE": "2", "AR_MAX_COMPLETION_PRICE": "10"}
    done = run_ar("process", "book", "--model", "openrouter/auto", "--budget", "1", "--json",
                  books_dir=books_dir, env=ceiling)
    assert done.returncode == 0, done.stderr
    assert 0 < server.credits() == pytest.approx(ledger_total(small_book), abs=1e-12)


def test_byok_calls_cost_the_fee_plus_the_providers_bill_and_reconcile_with_the_key(sim, books_dir, tmp_path,
                                                                                   small_book):
    server = sim("--api-key", KEY, "--byok")
    env = llm_env(server, tmp_path)
    r = run_ar("process", "book", "--json", books_dir=books_dir, env=env)
    assert r.returncode == 0, r.stderr
    cost = json.loads(run_ar("cost", "book", "--json", books_dir=books_dir, env=env).stdout)
    models = cost["models"].values()
    fee, upstream = sum(m["provider_cost_usd"] for m in models), sum(m["upstream_cost_usd"] for m in models)
    assert 0 < fee < upstream  # OpenRouter's fee is a small share of what the provider bills
    assert cost["total_cost_usd"] == pytest.approx(fee + upstream, abs=1e-12)
    assert cost["total_cost_usd"] == pytest.approx(key_usage(server), abs=1e-9)  # what the user pays, both parts

    check = run_ar("cost", "book", "--reconcile", "--json", books_dir=books_dir, env=env)
    report = json.loads(check.stdout)
    assert check.returncode == 0, check.stdout
    assert report["differences"] == [] and report["runs_measured"] == 1
    assert report["unattributed_usd"] == pytest.approx(0.0, abs=1e-9)


def test_a_call_killed_while_the_provider_thinks_is_billed_and_the_next_run_records_it(sim, books_dir, tmp_path,
                                                                                       small_book):
    # the provider keeps generating after ar leaves (as Google does), and bills it
    server = sim("--api-key", KEY, "--processing-ms", "4000", "--bill-abandoned")
    env = llm_env(server, tmp_path)
    ar = start_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env)
    db = Book(small_book).ledger_path
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the headers came (the id is recorded), no data chunk yet
        with_id = Ledger.read(db, lambda led: led._db.execute(
            "SELECT COUNT(*) FROM calls WHERE status = 'pending' AND generation_id IS NOT NULL").fetchone()[0], 0)
        if with_id:
            break
        time.sleep(0.05)
    assert with_id, "no call got its generation id from the headers"
    ar.send_signal(signal.SIGKILL)
    ar.wait()
    time.sleep(4.5)  # the abandoned generations finish on the provider's side, and are billed
    assert server.credits() > 0 and ledger_total(small_book) == 0

    r = run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env)
    assert r.returncode == 0, r.stderr
    assert ledger_total(small_book) == pytest.approx(server.credits(), abs=1e-9)  # every abandoned call recorded
    recovered = Ledger.read(db, lambda led: led._db.execute(
        "SELECT COUNT(*) FROM calls WHERE status = 'recovered'").fetchone()[0], 0)
    assert recovered >= 1


def test_spend_on_the_key_that_no_generation_accounts_for_shows_as_unattributed(sim, books_dir, tmp_path, small_book):
    server = sim("--api-key", KEY, "--latency-ms", "1500")
    env = llm_env(server, tmp_path)
    ar = start_ar("process", "book", "--stages", "correct", "--workers", "1", books_dir=books_dir, env=env)
    wait_for_key_counter(Book(small_book).ledger_path)
    elsewhere = spend_elsewhere(server)  # while ar runs (3 calls of 1.5 s, one at a time)
    assert ar.wait(timeout=60) == 0

    check = run_ar("cost", "book", "--reconcile", "--json", books_dir=books_dir, env=env)
    report = json.loads(check.stdout)
    assert check.returncode == 1 and report["differences"] == [] and report["unknown"] == []
    assert report["unattributed_usd"] == pytest.approx(elsewhere, abs=1e-9)
    human = run_ar("cost", "book", "--reconcile", books_dir=books_dir, env=env)
    assert f"unattributed: ${elsewhere:+.9f}" in human.stdout


def test_spend_while_a_killed_run_was_down_is_measured_with_the_run_that_settled_it(sim, books_dir, tmp_path,
                                                                                    small_book):
    """A run killed mid-call never notes the counter's end; it is measured together with the
    next run, which settles its calls. A call killed before its id arrived is seen only so."""
    server = sim("--api-key", KEY, "--latency-ms", "1500")
    env = llm_env(server, tmp_path)
    ar = start_ar("process", "book", "--stages", "correct", "--workers", "1", books_dir=books_dir, env=env)
    wait_for_key_counter(Book(small_book).ledger_path)
    ar.kill()
    ar.wait()
    elsewhere = spend_elsewhere(server)  # between the two runs: the killed run's span sees it
    assert run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env).returncode == 0

    report = json.loads(run_ar("cost", "book", "--reconcile", "--json", books_dir=books_dir, env=env).stdout)
    assert report["runs_measured"] == 2 and report["differences"] == []
    assert report["unattributed_usd"] == pytest.approx(elsewhere, abs=1e-9)


def wait_for_key_counter(db) -> None:
    """Until the running run has noted the key's counter at its start."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs = Ledger.read(db, Ledger.runs, [])
        if runs and runs[-1]["status"] == "running" and runs[-1]["key_usage_start"] is not None:
            return
        time.sleep(0.02)
    raise AssertionError("the run never noted the key's counter")


def spend_elsewhere(server) -> float:
    """Another program's call on the same key; its cost."""
    other = httpx.post(f"{server.url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                       json={"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hello"}]})
    assert other.status_code == 200
    return other.json()["usage"]["cost"]
