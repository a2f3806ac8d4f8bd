"""Every outcome says what happened (issue 16): a stage whose inputs are missing, an empty
--stages, a run that did nothing, a new model on a finished book, what a run's answers were."""
import asyncio
import json

import pytest
from pydantic import SecretStr

from infra.books import Book
from infra.llm_client import LLMClient
from infra.pricing import PricingCache
from pipeline.correct import CorrectedPage, CorrectStage
from pipeline.llm_stage import language_line, max_tokens_for, ocr_message
from pipeline.registry import STAGES
from tests.conftest import llm_env, make_book, one_error_line, run_ar, text_pages

KEY = "sk-or-v1-outcomes-0123456789"


@pytest.fixture
def ocr_done(books_dir, tmp_path) -> Book:
    """A book of 3 small real pages, its OCR done (one run)."""
    scans = text_pages(tmp_path / "scans", 3)
    for args in (("add", str(scans), "--id", "book"), ("process", "book", "--stages", "ocr")):
        assert run_ar(*args, books_dir=books_dir).returncode == 0
    return Book(books_dir / "book")


@pytest.mark.parametrize("stages, needs, run", [
    ("correct", "correct needs ocr (3 of 3 not done)", "--stages ocr,correct"),
    ("merge", "merge needs ocr (3 of 3 not done) and correct (3 of 3 not done) and fix (3 of 3 not done) and "
     "layout (1 of 1 not done)", "--stages ocr,layout,correct,fix,merge"),
    ("fix,merge", "fix needs ocr (3 of 3 not done) and correct (3 of 3 not done); merge needs ocr (3 of 3 not done)"
     " and correct (3 of 3 not done) and layout (1 of 1 not done)", "--stages ocr,layout,correct,fix,merge"),
])
def test_a_stage_whose_inputs_are_missing_is_an_error_naming_what_to_run_first(books_dir, stages, needs, run):
    make_book(books_dir, "book", 3)
    r = run_ar("process", "book", "--stages", stages, books_dir=books_dir)
    assert r.returncode == 1
    line = one_error_line(r, needs)
    assert f"run `ar.py process book {run}`" in line
    assert r.stdout == ""  # nothing claimed done
    assert not (books_dir / "book" / "checkpoint.db").exists()  # and no run opened for it


def test_a_dry_run_whose_inputs_are_missing_is_the_same_error(books_dir):
    make_book(books_dir, "book", 2)
    r = run_ar("process", "book", "--stages", "correct", "--dry-run", books_dir=books_dir)
    assert r.returncode == 1 and "correct needs ocr" in r.stderr


def test_an_empty_stages_is_a_usage_error(books_dir):
    make_book(books_dir, "book", 2)
    for empty in ("", " , "):
        r = run_ar("process", "book", "--stages", empty, books_dir=books_dir)
        assert r.returncode == 2
        one_error_line(r, "--stages is empty")


def test_a_run_that_did_nothing_is_counted_apart(books_dir, ocr_done):
    r = run_ar("process", "book", "--stages", "ocr", books_dir=books_dir)
    assert r.returncode == 0
    assert "over 1 run(s) (and 1 with nothing to do)" in r.stdout
    status = json.loads(run_ar("status", "book", "--json", books_dir=books_dir).stdout)
    assert status["runs"] == 1 and status["idle_runs"] == 1
    cost = json.loads(run_ar("cost", "book", "--json", books_dir=books_dir).stdout)
    assert [run["status"] for run in cost["runs"]] == ["done", "idle"]


def test_answers_that_never_validated_are_counted_with_their_pages(sim, books_dir, tmp_path, ocr_done):
    server = sim("--api-key", KEY, "--fail-malformed", "1")
    r = run_ar("process", "book", books_dir=books_dir, env=llm_env(server, tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    # three tries a page (the first, then two asked again), in correct and in fix: each billed, each failed
    assert "  this run:    18 failed calls (pages 1-3), of them 18 invalid answers (pages 1-3); " \
           "3 pages invalid (1-3)" in lines
    assert lines[-1].startswith("done, 3 pages to review (3 invalid)")  # never a plain "done"
    assert "book 'book' done." not in lines and "book 'book': every stage is through." in lines
    cost = json.loads(run_ar("cost", "book", "--json", books_dir=books_dir).stdout)
    for stage in ("correct", "fix"):
        row = cost["stages"][stage]
        assert row["calls"] == row["failed_calls"] == 9 and row["failed_cost_usd"] == row["cost_usd"] > 0
    summary = json.loads(run_ar("process", "book", "--json", books_dir=books_dir,
                                env=llm_env(server, tmp_path)).stdout)
    assert summary["this_run"]["failed_calls"] == {"count": 0, "pages": []}  # the next run: nothing to do


def test_a_finished_book_asked_for_another_model_says_which_pages_were_made_with_which(
        sim, books_dir, tmp_path, ocr_done):
    server = sim("--api-key", KEY)
    env = llm_env(server, tmp_path)
    assert run_ar("process", "book", books_dir=books_dir, env=env).returncode == 0
    r = run_ar("process", "book", "--model", "google/gemini-2.5-pro", books_dir=books_dir, env=env)
    assert r.returncode == 0
    assert ("  correct: pages 1-3 made with google/gemini-2.5-flash, not google/gemini-2.5-pro: "
            "`ar.py clean book correct` redoes them with it (and the stages made from them)") in r.stdout.splitlines()
    report = json.loads(run_ar("process", "book", "--model", "google/gemini-2.5-pro", "--json",
                               books_dir=books_dir, env=env).stdout)
    assert report["other_models"] == {"correct": {"model": "google/gemini-2.5-pro",
                                                  "made_with": {"google/gemini-2.5-flash": [1, 2, 3]}}}
    same = run_ar("process", "book", books_dir=books_dir, env=env)
    assert "made with" not in same.stdout


def test_the_run_log_holds_every_attempt_and_page_and_ar_log_sums_it_up(sim, books_dir, tmp_path, ocr_done):
    server = sim("--api-key", KEY, "--seed", "2", "--fail-429", "0.4", "--retry-after", "0.05")
    env = llm_env(server, tmp_path, AR_MAX_RETRIES="20")
    assert run_ar("process", "book", books_dir=books_dir, env=env).returncode == 0
    (log,) = (books_dir / "book" / "logs").glob("run-0002-*.jsonl")
    text = log.read_text()
    assert KEY not in text
    entries = [json.loads(line) for line in text.splitlines()]
    attempts = [e for e in entries if e.get("event") == "attempt"]
    limited = [e for e in attempts if e["http_status"] == 429]
    assert limited and all(e["retry_after"] == 0.05 and e["wait_s"] == 0.05 and e["outcome"] == "retried"
                           and e["cost_usd"] == 0.0 and e["page"] in (1, 2, 3) for e in limited)
    answered = [e for e in attempts if e["http_status"] == 200]
    assert all(e["outcome"] == "ok" and e["cost_usd"] > 0 for e in answered)
    # as many attempts in the log as calls in the ledger, and they cost the same
    cost = json.loads(run_ar("cost", "book", "--json", books_dir=books_dir).stdout)
    assert len(attempts) == cost["runs"][1]["calls"]
    assert sum(e["cost_usd"] for e in attempts) == pytest.approx(cost["runs"][1]["cost_usd"], abs=1e-12)
    page_events = {(e["stage"], e["page"]) for e in entries if e.get("event") == "page" and e["outcome"] == "done"}
    assert page_events == {(s, p) for s in ("correct", "fix") for p in (1, 2, 3)} | {("layout", 0), ("merge", 0)}

    r = run_ar("log", "book", "--json", books_dir=books_dir)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["run"] == 2 and report["status"] == "done"
    assert report["failed_attempts_by_cause"] == {"HTTP 429": len(limited)}
    assert report["waits"]["count"] == len(limited) and report["waits"]["retry_after_given"] == len(limited)
    by_page = {int(p): kinds for p, kinds in report["failures_by_page"].items()}
    assert sum(n for kinds in by_page.values() for n in kinds.values()) == len(limited)
    seconds = [p["seconds"] for p in report["slowest_pages"]]
    assert len(seconds) == 5 and seconds == sorted(seconds, reverse=True)
    human = run_ar("log", "book", books_dir=books_dir).stdout
    assert f"failed attempts by cause (retried, or given up): {len(limited)} HTTP 429" in human
    ocr_run = json.loads(run_ar("log", "book", "--run", "1", "--json", books_dir=books_dir).stdout)
    assert ocr_run["pages"] == {"ocr done": 3} and ocr_run["attempts"] == 0
    missing = run_ar("log", "book", "--run", "9", books_dir=books_dir)
    assert missing.returncode == 1
    one_error_line(missing, "no log of run 9: its logs are of runs 1, 2")


def test_a_dry_run_estimates_what_the_run_would_do_fresh_and_vision_included(sim, books_dir, tmp_path, ocr_done):
    server = sim("--api-key", KEY)
    env = llm_env(server, tmp_path)
    assert run_ar("process", "book", books_dir=books_dir, env=env).returncode == 0
    nothing = json.loads(run_ar("process", "book", "--dry-run", "--json", books_dir=books_dir, env=env).stdout)
    assert nothing["stages"]["correct"]["pages"] == 0 and nothing["high_usd"] == 0
    dry = run_ar("process", "book", "--fresh", "--vision", "--dry-run", "--json", books_dir=books_dir, env=env)
    assert dry.returncode == 0, dry.stderr
    fresh = json.loads(dry.stdout)
    assert fresh["vision"] is True and fresh["stages"]["correct"]["pages"] == 3  # as the run will: all again
    assert 0 < fresh["low_usd"] <= fresh["likely_usd"] <= fresh["high_usd"]
    text_only = json.loads(run_ar("process", "book", "--fresh", "--dry-run", "--json",
                                  books_dir=books_dir, env=env).stdout)
    assert text_only["stages"]["correct"]["high_usd"] < fresh["stages"]["correct"]["high_usd"]  # images counted
    assert server.credits() == fresh["spent_usd"]  # the dry runs spent nothing, discarded nothing
    assert json.loads(run_ar("status", "book", "--json", books_dir=books_dir).stdout)["state"] == "done"
    before = server.credits()
    assert run_ar("process", "book", "--fresh", "--vision", books_dir=books_dir, env=env).returncode == 0
    assert 0 < server.credits() - before <= fresh["high_usd"]


def test_a_dry_run_says_whether_the_budget_would_refuse_the_run(sim, books_dir, tmp_path, ocr_done):
    env = llm_env(sim("--api-key", KEY), tmp_path)
    dry = run_ar("process", "book", "--budget", "0.00001", "--dry-run", books_dir=books_dir, env=env)
    assert dry.returncode == 0
    refusal = dry.stdout.strip().splitlines()[-1]
    assert refusal.startswith("the budget would refuse this run: even the low estimate of the rest")
    real = run_ar("process", "book", "--budget", "0.00001", books_dir=books_dir, env=env)
    assert real.returncode == 3 and real.stderr.strip() == "ar: error: " + refusal.split(": ", 1)[1]
    fine = run_ar("process", "book", "--budget", "5", "--dry-run", "--json", books_dir=books_dir, env=env)
    assert json.loads(fine.stdout)["budget_refuses"] is None
    assert run_ar("process", "book", "--budget", "5", "--dry-run", books_dir=books_dir,
                  env=env).stdout.strip().endswith("the budget would let this run start")


def test_the_likely_figure_comes_from_the_books_own_pages_once_there_are_some(sim, books_dir, tmp_path, ocr_done):
    env = llm_env(sim("--api-key", KEY), tmp_path)
    prior = json.loads(run_ar("estimate", "book", "--json", books_dir=books_dir, env=env).stdout)["stages"]["correct"]
    assert prior["method"] == "tokens" and prior["low_usd"] < prior["likely_usd"] < prior["high_usd"]
    assert run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env).returncode == 0
    assert run_ar("clean", "book", "correct", books_dir=books_dir).returncode == 0
    cost = json.loads(run_ar("cost", "book", "--json", books_dir=books_dir).stdout)["stages"]["correct"]
    seen = json.loads(run_ar("estimate", "book", "--json", books_dir=books_dir, env=env).stdout)["stages"]["correct"]
    assert seen["method"] == "observed"
    assert seen["likely_usd"] == pytest.approx(cost["cost_usd"])  # the mean page, three pages again
    assert seen["low_usd"] < seen["likely_usd"] < seen["high_usd"]
    human = run_ar("estimate", "book", "--vision", books_dir=books_dir, env=env)
    assert human.returncode == 0 and "with page images" in human.stdout and "likely" in human.stdout


def test_a_budget_stop_reads_once_and_its_budget_to_finish_leaves_room_for_one_call(
        sim, books_dir, tmp_path, ocr_done):
    server = sim("--api-key", KEY)
    env = llm_env(server, tmp_path)
    r = run_ar("process", "book", "--budget", "0.0001", "--force", books_dir=books_dir, env=env)
    assert r.returncode == 3
    lines = r.stdout.splitlines()
    assert lines[0].startswith("budget reached: $0.0000 of $0.0001 spent") and "budget: budget" not in r.stdout
    report = json.loads(run_ar("process", "book", "--budget", "0.0001", "--force", "--json",
                               books_dir=books_dir, env=env).stdout)
    estimate = json.loads(run_ar("estimate", "book", "--json", books_dir=books_dir, env=env).stdout)
    assert estimate["reserve_usd"] > 0
    assert report["budget_to_finish_usd"] == pytest.approx(
        estimate["spent_usd"] + estimate["high_usd"] + estimate["reserve_usd"])
    # the room left is what the client reserves for the largest page's call, or more
    longest = max((STAGES["ocr"].read_page(ocr_done, p)["text"] for p in (1, 2, 3)), key=len)
    client = LLMClient(server.url, SecretStr(KEY), PricingCache(server.url, cache_dir=tmp_path / "cache"))
    messages = [{"role": "system", "content": CorrectStage.system + language_line("eng")},
                {"role": "user", "content": [{"type": "text", "text": ocr_message(longest)}]}]
    body = client.request_body("google/gemini-2.5-flash", messages, CorrectedPage, max_tokens_for(longest))
    assert client.worst_case(body) <= estimate["stages"]["correct"]["reserve_usd"] <= 1.5 * client.worst_case(body)
    asyncio.run(client.aclose())


def test_pricing_refresh_alone_says_what_it_fetched(sim, books_dir, tmp_path):
    r = run_ar("pricing", "--refresh", books_dir=books_dir, env=llm_env(sim("--api-key", KEY), tmp_path))
    assert r.returncode == 0 and "┃" not in r.stdout
    assert r.stdout.startswith("10 models at http://127.0.0.1:")


def test_after_clean_the_monitor_does_not_show_a_cost_per_page_of_zero(sim, books_dir, tmp_path, ocr_done):
    env = llm_env(sim("--api-key", KEY), tmp_path)
    assert run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env).returncode == 0
    assert run_ar("clean", "book", "correct", books_dir=books_dir).returncode == 0
    snapshot = json.loads(run_ar("monitor", "book", "--json", books_dir=books_dir).stdout)
    assert snapshot["stages"]["correct"]["cost_usd"] > 0 and snapshot["stages"]["correct"]["done"] == 0
    assert snapshot["cost_per_page_usd"] is None  # unknown, not $0.0000
    assert "-/page" in run_ar("monitor", "book", "--once", books_dir=books_dir).stdout


def test_ar_log_reads_a_log_cut_by_a_kill_and_says_when_there_is_none(books_dir):
    book = make_book(books_dir, "book", 2)
    none = run_ar("log", "book", books_dir=books_dir)
    assert none.returncode == 1
    one_error_line(none, "book 'book' has no run log yet")
    (book / "logs").mkdir()
    lines = [{"ts": 1.0, "msg": "run started", "run_id": 1},
             {"ts": 2.0, "msg": "page 1: attempt 1 with m: retried (HTTP 500)", "event": "attempt", "stage": "correct",
              "page": 1, "outcome": "retried", "cause": "HTTP 500", "http_status": 500, "retry_after": None,
              "wait_s": 0.5, "seconds": 0.1, "cost_usd": 0.0}]
    text = "".join(json.dumps(e) + "\n" for e in lines) + '{"ts": 3.0, "msg": "page 1: attem'  # SIGKILL mid-line
    (book / "logs" / "run-0001-20261126T000000.jsonl").write_text(text)
    report = json.loads(run_ar("log", "book", "--json", books_dir=books_dir).stdout)
    assert report["unreadable_lines"] == 1 and report["status"].startswith("not ended")
    assert report["failed_attempts_by_cause"] == {"HTTP 500": 1} and report["failures_by_page"] == {"1": {"correct: HTTP 500": 1}}


def test_in_a_run_of_two_books_each_run_log_holds_only_its_own_books_events(sim, books_dir, tmp_path):
    """Books of 1 and 2 pages, in one run: `ar.py log` of each counts its own calls, pages and
    cost (its ledger's), not the other's."""
    server = sim("--api-key", KEY)
    for book, pages in (("one", 1), ("two", 2)):
        assert run_ar("add", str(text_pages(tmp_path / book, pages)), "--id", book, books_dir=books_dir).returncode == 0
    r = run_ar("process", "one", "two", books_dir=books_dir, env=llm_env(server, tmp_path))
    assert r.returncode == 0, r.stderr
    for book, pages in (("one", 1), ("two", 2)):
        report = json.loads(run_ar("log", book, "--json", books_dir=books_dir).stdout)
        (run,) = json.loads(run_ar("cost", book, "--json", books_dir=books_dir).stdout)["runs"]
        assert report["status"] == "done"
        assert report["attempts"] == run["calls"] >= pages  # correct: a call a page
        assert report["cost_usd"] == pytest.approx(run["cost_usd"], abs=1e-12)
        assert report["pages"] == {"ocr done": pages, "layout done": 1, "correct done": pages,
                                   "fix done": pages, "merge done": 1}
