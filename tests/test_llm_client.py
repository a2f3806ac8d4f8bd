"""LLMClient over real HTTP against the local OpenRouter-compatible server."""
import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from pydantic import SecretStr

from infra.checkpoint import Ledger
from infra.errors import FatalLLMError, InvalidAnswer, RetryableError
from infra.llm_client import LLMClient
from infra.pricing import PricingCache
from pipeline.correct import CorrectedPage
from pipeline.llm_stage import LedgerRecorder
from tests.conftest import ROOT

KEY = "sk-or-test-0123456789abcdef"
MODEL = "google/gemini-2.5-flash"
OCR = "<ocr_text>\nTbe qnick brown f0x jumps over tbe lazy dog.\n</ocr_text>"


def client_for(server, tmp_path, **kw):
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff_cap", 0.05)
    return LLMClient(server.url, SecretStr(KEY), PricingCache(server.url, cache_dir=tmp_path / "cache"), **kw)


def correct(client, ledger, page=1, schema=CorrectedPage):
    return client.call(MODEL, [{"role": "user", "content": OCR}],
                       LedgerRecorder(ledger, ledger.run, "correct", page), schema=schema)


def calls(ledger):
    return ledger._db.execute(
        "SELECT status, generation_id, computed_cost_usd, provider_cost_usd, error FROM calls ORDER BY call_id"
    ).fetchall()


def run(coro_fn):
    return asyncio.run(coro_fn())


def test_a_call_returns_a_validated_answer_its_usage_and_what_it_cost(sim, ledger, tmp_path):
    server = sim("--api-key", KEY)

    async def go():
        client = client_for(server, tmp_path)
        try:
            return await correct(client, ledger)
        finally:
            await client.aclose()

    result = run(go)
    assert isinstance(result.response, CorrectedPage)
    assert "The quick brown fox" in result.response.text
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    [(status, gen_id, computed, provider, error)] = calls(ledger)
    assert status == "ok" and gen_id.startswith("gen-")
    assert provider == result.usage.cost == result.cost
    assert computed == pytest.approx(provider, rel=1e-9)
    assert ledger.total_cost() == pytest.approx(server.credits(), abs=1e-12)


def test_calls_keep_their_connections_alive(sim, ledger, tmp_path):
    """Each streamed answer is read to its end, so its connection serves the next call
    (with a real provider, a new connection is a TLS handshake)."""
    server = sim("--api-key", KEY)

    async def go():
        client = client_for(server, tmp_path, concurrency=4)
        try:
            await asyncio.gather(*(correct(client, ledger, page) for page in range(1, 25)))
        finally:
            await client.aclose()

    run(go)
    stats = server.generations()
    assert stats["requests"] == {"ok": 24}
    assert stats["connections"] <= 4


def test_the_call_is_pending_with_its_generation_id_while_it_streams(sim, ledger, tmp_path):
    server = sim("--api-key", KEY, "--latency-ms", "1500")
    seen = []

    async def go():
        client = client_for(server, tmp_path)
        task = asyncio.create_task(correct(client, ledger))
        for _ in range(100):
            await asyncio.sleep(0.02)
            reader = Ledger.open_reader(ledger.path)
            seen.extend((p.generation_id, p.page) for p in reader.pending_calls() if p.generation_id)
            reader.close()
            if seen:
                break
        await task
        await client.aclose()

    run(go)
    assert seen and seen[0][0].startswith("gen-") and seen[0][1] == 1
    assert calls(ledger)[0][0] == "ok"


@pytest.mark.parametrize("fault", ["--fail-429", "--fail-500", "--fail-midstream"])
def test_retryable_failures_are_retried_and_every_attempt_recorded(sim, ledger, tmp_path, fault):
    server = sim("--api-key", KEY, fault, "0.5", "--seed", "7", "--retry-after", "0")

    async def go():
        client = client_for(server, tmp_path, max_retries=30)
        try:
            await asyncio.gather(*(correct(client, ledger, page=p) for p in range(1, 9)))
        finally:
            await client.aclose()

    run(go)
    rows = calls(ledger)
    assert [r[0] for r in rows].count("ok") == 8
    failed = [r for r in rows if r[0] == "failed"]
    assert failed, "a fault rate of 0.5 over 8 calls must have failed some attempts"
    if fault == "--fail-midstream":  # HTTP 200 with an error body: the prompt was billed
        assert all(r[3] > 0 for r in failed)
    else:  # nothing generated, nothing billed
        assert all((r[3] or 0) == 0 for r in failed)
    assert ledger.total_cost() == pytest.approx(server.credits(), abs=1e-9)


def test_retry_after_is_honoured(sim, ledger, tmp_path):
    server = sim("--api-key", KEY, "--fail-429", "1", "--retry-after", "1")

    async def go():
        client = client_for(server, tmp_path, max_retries=1, backoff_cap=5)
        try:
            await correct(client, ledger)
        finally:
            await client.aclose()

    start = time.monotonic()
    with pytest.raises(RetryableError, match="HTTP 429"):
        run(go)
    assert time.monotonic() - start >= 1.0
    assert [r[0] for r in calls(ledger)] == ["failed", "failed"]


def test_a_timeout_is_retried_and_not_billed(sim, ledger, tmp_path):
    server = sim("--api-key", KEY, "--fail-timeout", "1")

    async def go():
        client = client_for(server, tmp_path, timeout=0.5, max_retries=1)
        try:
            await correct(client, ledger)
        finally:
            await client.aclose()

    with pytest.raises(RetryableError):
        run(go)
    assert [(r[0], r[2]) for r in calls(ledger)] == [("failed", 0.0), ("failed", 0.0)]
    assert server.credits() == 0


def test_an_invalid_answer_is_retried_with_the_error_then_given_up(sim, ledger, tmp_path):
    server = sim("--api-key", KEY, "--fail-malformed", "1")

    async def go():
        client = client_for(server, tmp_path, max_invalid_answers=2)
        try:
            await correct(client, ledger)
        finally:
            await client.aclose()

    with pytest.raises(InvalidAnswer, match="did not match the schema after 3 tries"):
        run(go)
    rows = calls(ledger)
    assert [r[0] for r in rows] == ["failed", "failed", "failed"]  # billed answers, all recorded, none usable
    errors = [e for (e,) in ledger._db.execute("SELECT error FROM calls ORDER BY call_id")]
    assert all(e.startswith("invalid answer: ") for e in errors), errors
    assert ledger.total_cost() == pytest.approx(server.credits(), abs=1e-12) and server.credits() > 0


@pytest.mark.parametrize("args, expected", [
    (("--api-key", "sk-or-another-key-000000"), "refused the API key"),
    (("--api-key", KEY, "--credits", "0"), "out of credits"),
])
def test_a_bad_key_or_no_credits_fail_at_once(sim, ledger, tmp_path, args, expected):
    server = sim(*args)

    async def go():
        client = client_for(server, tmp_path, max_retries=5)
        try:
            await correct(client, ledger)
        finally:
            await client.aclose()

    with pytest.raises(FatalLLMError, match=expected) as err:
        run(go)
    assert KEY not in str(err.value)
    assert len(calls(ledger)) == 1  # not retried


def test_an_unpriced_model_is_refused_before_any_call(sim, ledger, tmp_path):
    server = sim("--api-key", KEY)

    async def go():
        client = client_for(server, tmp_path)
        try:
            await client.call("google/gemini-2.5-flashh", [{"role": "user", "content": OCR}],
                              LedgerRecorder(ledger, ledger.run, "correct", 1))
        finally:
            await client.aclose()

    with pytest.raises(Exception, match="did you mean: google/gemini-2.5-flash"):
        run(go)
    assert calls(ledger) == []


def test_no_key_is_a_clear_error(sim, tmp_path):
    server = sim()
    with pytest.raises(FatalLLMError, match="OPENROUTER_API_KEY"):
        LLMClient(server.url, None, PricingCache(server.url, cache_dir=tmp_path))


def test_every_fault_at_once_and_the_ledger_still_equals_the_bill(sim, ledger, tmp_path):
    server = sim("--api-key", KEY, "--latency-ms", "20", "--jitter-ms", "20", "--seed", "3",
                 "--retry-after", "0", "--fail-429", "0.2", "--fail-500", "0.05", "--fail-timeout", "0.02",
                 "--fail-malformed", "0.02", "--fail-midstream", "0.02")

    async def go():
        client = client_for(server, tmp_path, timeout=1.0, max_retries=20)
        try:
            await asyncio.gather(*(correct(client, ledger, page=p) for p in range(1, 61)))
        finally:
            await client.aclose()

    run(go)
    rows = calls(ledger)
    assert [r[0] for r in rows].count("ok") >= 60
    assert ledger.pending_calls() == []
    assert abs(ledger.total_cost() - server.credits()) <= 1e-9


def test_calls_cut_by_a_sigkill_are_resolved_by_the_next_run(sim, tmp_path):
    server = sim("--api-key", KEY, "--latency-ms", "300", "--jitter-ms", "600", "--stream-ms", "150",
                 "--seed", "5", "--generation-delay-ms", "300")
    db = tmp_path / "checkpoint.db"
    env = dict(os.environ, OPENROUTER_API_KEY=KEY, AR_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "tests.drivers.call_llm", str(db), server.url, "12"],
                            cwd=ROOT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # kill once every call is in flight with its id
        reader = Ledger.open_reader(db) if db.exists() else None
        ids = [p.generation_id for p in reader.pending_calls()] if reader else []
        if reader:
            reader.close()
        if len(ids) == 12 and all(ids):
            break
        time.sleep(0.01)
    time.sleep(0.6)  # some answers are streaming now: billed in part
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)
    led = Ledger.open_writer(db)
    assert len(led.pending_calls()) > 0

    async def resolve():
        client = client_for(server, tmp_path)
        try:
            return await client.resolve_pending(
                led.pending_calls(), lambda c: LedgerRecorder(led, c.run_id, c.stage, c.page))
        finally:
            await client.aclose()

    counts = asyncio.run(resolve())
    assert counts["recovered"] > 0 and counts["unresolved"] == 0
    statuses = [g["status"] for g in server.generations()["data"]]
    assert "cut" in statuses  # a stream cut mid-answer, billed in part
    assert led.pending_calls() == []
    assert server.credits() > 0
    assert abs(led.total_cost() - server.credits()) <= 1e-9
    led.close()


def test_an_answer_after_an_invalid_one_is_about_the_same_page(sim, ledger, tmp_path):
    """The re-ask ("That answer is not valid...") follows the page: the answer to it must be the
    page's correction, so a malformed-answer fault cannot change a book's text."""
    server = sim("--api-key", KEY, "--fail-malformed", "0.5", "--seed", "11")

    async def go():
        client = client_for(server, tmp_path, max_invalid_answers=5)
        try:
            return [await correct(client, ledger, page=p) for p in range(1, 7)]
        finally:
            await client.aclose()

    results = run(go)
    assert len(calls(ledger)) > 6  # some answers were invalid and asked again
    assert all("The quick brown fox jumps over the lazy dog." in r.response.text for r in results)
