"""Budgets that hold with many calls in flight, estimates before spending, reports that add up."""
import json
import shutil

import pytest

from infra.checkpoint import Ledger
from tests.conftest import ROOT, llm_env, run_ar

KEY = "sk-or-v1-budget-test-0123456789"


def ledger_rows(book_dir, sql):
    led = Ledger.open_reader(book_dir / "checkpoint.db")
    try:
        return led._db.execute(sql).fetchall()
    finally:
        led.close()


def most_calls_in_flight(book_dir) -> int:
    events = []
    for start, end in ledger_rows(book_dir, "SELECT started_at, ended_at FROM calls"):
        events += [(start, 1), (end, -1)]
    level = peak = 0
    for _, step in sorted(events):
        level += step
        peak = max(peak, level)
    return peak


def test_a_budget_stops_the_run_and_is_never_exceeded_with_32_workers_and_8_calls_in_flight(sim, books_dir, tmp_path,
                                                                                             ocr_book):
    server = sim("--api-key", KEY, "--latency-ms", "300", "--jitter-ms", "200", "--seed", "2")
    book = ocr_book(books_dir)
    env = llm_env(server, tmp_path)
    budget = 0.02  # about two thirds of the book
    r = run_ar("process", "book", "--workers", "32", "--budget", str(budget), "--force", "--json",
               books_dir=books_dir, env=env)
    assert r.returncode == 3, r.stderr
    report = json.loads(r.stdout)
    assert report["outcome"]["status"] == "budget" and "budget reached" in report["outcome"]["message"]
    assert 0 < report["stages"]["correct"]["done"] < 120
    spent = report["total_cost_usd"]
    assert spent <= budget
    assert spent > budget / 2  # it did spend: the reservations did not starve it
    assert abs(spent - server.credits()) <= 1e-9  # in-flight calls finished and were recorded
    # 32 workers; the calls in flight are as many as the reservations of their worst cases fit
    # in the budget (11 were seen), and never fewer than 8
    assert most_calls_in_flight(book) >= 8
    assert ledger_rows(book, "SELECT status FROM runs")[-1] == ("budget",)  # the first run was the OCR
    assert json.loads((book / "cost_report.json").read_text())["total_cost_usd"] == spent

    # the budget is kept: a run without --budget stops again, before spending anything
    again = run_ar("process", "book", "--workers", "32", books_dir=books_dir, env=env)
    assert again.returncode == 3 and "budget" in again.stderr + again.stdout
    assert server.credits() == pytest.approx(spent, abs=1e-12)

    # raising it to what the stop said would finish the book does, and the ledger still equals the bill
    to_finish = report["budget_to_finish_usd"]
    assert spent < to_finish < 1
    done = run_ar("process", "book", "--workers", "32", "--budget", str(to_finish), books_dir=books_dir, env=env)
    assert done.returncode == 0, done.stderr
    cost = json.loads(run_ar("cost", "book", "--json", books_dir=books_dir).stdout)
    assert abs(cost["total_cost_usd"] - server.credits()) <= 1e-9
    assert ledger_rows(book, "SELECT COUNT(*) FROM pages WHERE stage = 'correct' AND status = 'done'") == [(120,)]


def test_process_refuses_a_budget_below_the_low_estimate(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY)
    ocr_book(books_dir)
    r = run_ar("process", "book", "--budget", "0.001", books_dir=books_dir, env=llm_env(server, tmp_path))
    assert r.returncode == 3
    assert r.stderr.startswith("ar: error: even the low estimate") and "--force" in r.stderr
    assert server.credits() == 0


def test_the_estimate_takes_page_lengths_from_the_ledger_not_the_pages(sim, books_dir, tmp_path, ocr_book):
    """A library's estimate must not read every page of every book: the OCR's done-marks keep
    each page's text length. A ledger from before they did (chars NULL) is read from the pages."""
    server = sim("--api-key", KEY)
    env = llm_env(server, tmp_path)
    book = ocr_book(books_dir)
    pages = sorted((book / "ocr").glob("page_*.json"))
    lengths = {int(f.stem.split("_")[1]): len(json.loads(f.read_text())["text"]) for f in pages}
    kept = dict(ledger_rows(book, "SELECT page, chars FROM pages WHERE stage = 'ocr' AND status = 'done'"))
    assert kept == lengths and len(kept) == 120

    def estimate() -> dict:
        r = run_ar("process", "book", "--stages", "correct", "--dry-run", "--json", books_dir=books_dir, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["stages"]["correct"]

    before = estimate()
    saved = {f: f.read_bytes() for f in pages}
    for f in pages:  # what the estimate would read, were it to read pages
        f.write_text('{"page": 0, "text": ""}')
    assert estimate() == before
    for f, data in saved.items():
        f.write_bytes(data)
    led = Ledger.open_writer(book / "checkpoint.db")
    led._db.execute("UPDATE pages SET chars = NULL")
    led.close()
    for f in pages[:60]:
        f.write_text('{"page": 0, "text": ""}')
    assert estimate()["low_usd"] < before["low_usd"]  # lengths not kept: the pages are read


@pytest.mark.parametrize("bad", ["abc", "-1", "0", "nan", "inf", ""])
def test_a_budget_that_is_not_a_positive_amount_is_a_usage_error(books_dir, bad):
    r = run_ar("process", "book", "--budget", bad, books_dir=books_dir)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--budget: must be a positive amount of USD" in r.stderr


def test_the_estimate_of_the_sample_book_holds_its_real_cost(sim, books_dir, tmp_path):
    from tools.make_sample import make

    sample = tmp_path / "sample"
    (sample / "truth").mkdir(parents=True)
    shutil.copy(ROOT / "books" / "sample" / "truth" / "book.md", sample / "truth")
    make(sample)
    server = sim("--api-key", KEY)
    env = llm_env(server, tmp_path)
    assert run_ar("add", str(sample / "source"), "--id", "sample", books_dir=books_dir).returncode == 0
    assert run_ar("process", "sample", "--stages", "ocr", books_dir=books_dir).returncode == 0
    before = run_ar("estimate", "sample", "--json", books_dir=books_dir, env=env)
    assert before.returncode == 0, before.stderr
    estimate = json.loads(before.stdout)
    dry = json.loads(run_ar("process", "sample", "--dry-run", "--json", books_dir=books_dir, env=env).stdout)
    assert dry["low_usd"] == estimate["low_usd"] and server.credits() == 0  # a dry run spends nothing
    assert run_ar("process", "sample", books_dir=books_dir, env=env).returncode == 0
    cost = json.loads(run_ar("cost", "sample", "--json", books_dir=books_dir).stdout)
    for stage in ("correct", "fix"):
        real = cost["stages"].get(stage, {}).get("cost_usd", 0.0)
        assert estimate["stages"][stage]["low_usd"] <= real <= estimate["stages"][stage]["high_usd"], stage
    assert estimate["low_usd"] <= cost["total_cost_usd"] <= estimate["high_usd"]
    after = json.loads(run_ar("estimate", "sample", "--json", books_dir=books_dir, env=env).stdout)
    assert after["high_usd"] == 0  # nothing left to do


def test_reconcile_finds_a_difference_planted_in_the_ledger(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY)
    book = ocr_book(books_dir)
    env = llm_env(server, tmp_path)
    assert run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env).returncode == 0
    clean = run_ar("cost", "book", "--reconcile", "--json", books_dir=books_dir, env=env)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["differences"] == []
    led = Ledger.open_writer(book / "checkpoint.db")
    call_id = led._db.execute("SELECT MIN(call_id) FROM calls WHERE generation_id IS NOT NULL").fetchone()[0]
    led._db.execute("UPDATE calls SET provider_cost_usd = provider_cost_usd + 0.001 WHERE call_id = ?", (call_id,))
    led.close()
    found = run_ar("cost", "book", "--reconcile", "--json", books_dir=books_dir, env=env)
    assert found.returncode == 1
    differences = json.loads(found.stdout)["differences"]
    assert [d["call_id"] for d in differences] == [call_id]
    assert differences[0]["difference_usd"] == pytest.approx(-0.001, abs=1e-12)

    led = Ledger.open_writer(book / "checkpoint.db")  # the difference undone; a call left pending, as a kill leaves it
    led._db.execute("UPDATE calls SET provider_cost_usd = provider_cost_usd - 0.001 WHERE call_id = ?", (call_id,))
    pending = led.begin_call(led.start_run(1, "killed"), "correct", 3, "m/a", 1)
    led.close()
    found = run_ar("cost", "book", "--reconcile", books_dir=books_dir, env=env)
    assert found.returncode == 1  # not "every recorded cost equals the provider's": that call's is not known
    assert "1 call(s) left pending by a run that died mid-call (pages 3)" in found.stdout
    report = json.loads(run_ar("cost", "book", "--reconcile", "--json", books_dir=books_dir, env=env).stdout)
    assert report["differences"] == [] and [c["call_id"] for c in report["pending"]] == [pending]


def test_the_cost_report_adds_up_failed_attempts_included(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY, "--seed", "4", "--retry-after", "0", "--fail-500", "0.2",
                 "--fail-midstream", "0.15", "--fail-malformed", "0.1")
    ocr_book(books_dir)
    env = llm_env(server, tmp_path, AR_MAX_RETRIES="20")
    assert run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env).returncode == 0
    assert run_ar("clean", "book", "correct", books_dir=books_dir).returncode == 0
    assert run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env).returncode == 0
    r = json.loads(run_ar("cost", "book", "--json", books_dir=books_dir).stdout)
    total = r["total_cost_usd"]
    assert abs(total - server.credits()) <= 1e-9
    for part in ("stages", "models"):
        assert sum(x["cost_usd"] for x in r[part].values()) == pytest.approx(total, abs=1e-12)
        assert sum(x["calls"] for x in r[part].values()) == sum(run["calls"] for run in r["runs"])
    assert sum(run["cost_usd"] for run in r["runs"]) == pytest.approx(total, abs=1e-12)
    assert [run["status"] for run in r["runs"]] == ["done", "done", "done"]  # ocr, correct, again
    model = r["models"]["google/gemini-2.5-flash"]
    assert model["failed_calls"] > 0 and model["failed_cost_usd"] > 0  # billed failures, on record
    assert model["cached_tokens"] > 0 and model["cached_tokens"] < model["prompt_tokens"]
    assert r["cost_per_page_usd"] == pytest.approx(total / 120)
    assert r["provider_cost_usd"] == pytest.approx(total, abs=1e-12)


def test_a_price_change_and_a_costly_run_are_warnings(sim, books_dir, tmp_path, ocr_book):
    server = sim("--api-key", KEY)
    book = ocr_book(books_dir)
    env = llm_env(server, tmp_path)
    assert run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env).returncode == 0
    led = Ledger.open_writer(book / "checkpoint.db")
    key = "price:google/gemini-2.5-flash"
    old = json.loads(led.get_meta(key))
    led.set_meta(key, json.dumps({**old, "prompt": old["prompt"] / 2}))
    led.close()
    assert run_ar("clean", "book", "correct", books_dir=books_dir).returncode == 0
    r = run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env={**env, "AR_WARN_RUN_USD": "0.001"})
    assert r.returncode == 0
    assert "prices of google/gemini-2.5-flash changed since the book's last run: prompt" in r.stderr
    assert r.stderr.count("past the $0.0010 set by AR_WARN_RUN_USD") == 1  # warned once, not stopped


def test_a_refusal_never_shows_the_next_call_and_the_room_left_as_one_figure():
    from infra.budget import reached

    assert reached("budget reached", 0.0066, 0.0099, 0.00331, 0.00329).endswith(
        "the next call could cost up to $0.00331 and only $0.00329 is left")
    assert reached("budget reached", 0.0066, 0.0099, 0.01, 0.0033).endswith("up to $0.0100 and only $0.0033 is left")
