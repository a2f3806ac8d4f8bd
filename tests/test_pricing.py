"""Pricing: rates from the provider's /models (cached on disk 24 h) and the cost of a usage.

CostCalculator is checked against figures computed by hand, and over real HTTP against the
bill of the local OpenRouter-compatible server (which prices calls on its own); the cache
against an injected clock; the `ar.py pricing` command as a real process.
"""
import asyncio
import json
import logging
import socket

import pytest
from pydantic import SecretStr

from infra import pricing
from infra.llm_client import LLMClient
from infra.errors import PricingUnavailable, UnknownModel
from infra.pricing import TTL_SECONDS, CostCalculator, PricingCache, Usage
from pipeline.llm_stage import LedgerRecorder
from tests.conftest import run_ar
from tools.openrouter_sim import MODELS

KEY = "sk-or-test-0123456789abcdef"
FLASH = "google/gemini-2.5-flash"
T0 = 1_700_000_000.0
HOUR = 3600


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def cache_with(tmp_path, models: dict, fetched_at: float = T0, now: float = T0) -> PricingCache:
    """A PricingCache whose disk file (PricingCache._read_disk's format) we wrote ourselves."""
    url = "http://127.0.0.1:9/api/v1"  # never asked: the file is fresh
    cache = PricingCache(url, cache_dir=tmp_path, now=Clock(now))
    cache.path.write_text(json.dumps({"base_url": url, "fetched_at": fetched_at, "models": models}))
    return cache


def on_disk(cache: PricingCache) -> dict:
    return json.loads(cache.path.read_text())


FLASH_PRICES = {"prompt": 0.0000003, "completion": 0.0000025}
COST_TABLE = [  # (what, prices, usage, the bill by hand)
    ("prompt", FLASH_PRICES, dict(prompt_tokens=1000), 1000 * 0.0000003),
    ("completion", FLASH_PRICES, dict(prompt_tokens=100, completion_tokens=200),
     100 * 0.0000003 + 200 * 0.0000025),
    ("request fee", {**FLASH_PRICES, "request": 0.0002}, dict(prompt_tokens=100, completion_tokens=10),
     100 * 0.0000003 + 10 * 0.0000025 + 0.0002),
    ("image", {**FLASH_PRICES, "image": 0.001238}, dict(prompt_tokens=100, images=2),
     100 * 0.0000003 + 2 * 0.001238),
    ("cache read", {**FLASH_PRICES, "input_cache_read": 0.000000075},
     dict(prompt_tokens=1000, cached_tokens=600, completion_tokens=50),
     400 * 0.0000003 + 600 * 0.000000075 + 50 * 0.0000025),
    ("cache read unpriced: at prompt", FLASH_PRICES, dict(prompt_tokens=1000, cached_tokens=600),
     1000 * 0.0000003),
    ("cache write", {**FLASH_PRICES, "input_cache_write": 0.0000003833},
     dict(prompt_tokens=1000, cache_write_tokens=700), 300 * 0.0000003 + 700 * 0.0000003833),
    ("cache read and write", {**FLASH_PRICES, "input_cache_read": 0.000000075, "input_cache_write": 0.0000003833},
     dict(prompt_tokens=1000, cached_tokens=500, cache_write_tokens=200),
     300 * 0.0000003 + 500 * 0.000000075 + 200 * 0.0000003833),
    ("reasoning", {"prompt": 0.0000004, "completion": 0.000002, "internal_reasoning": 0.000003},
     dict(prompt_tokens=10, completion_tokens=500, reasoning_tokens=300),
     10 * 0.0000004 + 200 * 0.000002 + 300 * 0.000003),
    ("reasoning price 0: at completion", {"prompt": 0.0000004, "completion": 0.000002, "internal_reasoning": 0.0},
     dict(completion_tokens=500, reasoning_tokens=300), 500 * 0.000002),
    ("reasoning unpriced: at completion", {"prompt": 0.0000004, "completion": 0.000002},
     dict(completion_tokens=500, reasoning_tokens=300), 500 * 0.000002),
    ("web search", {**FLASH_PRICES, "web_search": 0.01}, dict(prompt_tokens=100, web_searches=2),
     100 * 0.0000003 + 2 * 0.01),
    ("discount", {"prompt": 0.00000025, "completion": 0.00000075, "request": 0.0002, "image": 0.0004,
                  "discount": 0.25}, dict(prompt_tokens=100, completion_tokens=10, images=1),
     (100 * 0.00000025 + 10 * 0.00000075 + 0.0002 + 1 * 0.0004) * (1 - 0.25)),
]


@pytest.mark.parametrize("prices, usage, expected", [row[1:] for row in COST_TABLE],
                         ids=[row[0] for row in COST_TABLE])
def test_cost_of_each_price_field_matches_the_hand_computed_bill(tmp_path, prices, usage, expected):
    costs = CostCalculator(cache_with(tmp_path, {"m/x": prices}))
    assert costs.cost("m/x", Usage(**usage)) == pytest.approx(expected, rel=1e-12, abs=0)


TINY_PNG = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
SYSTEM = "You correct OCR errors in scanned book pages. Keep the line structure. " * 8


def test_computed_cost_equals_the_providers_bill_over_real_http(sim, ledger, tmp_path):
    server = sim("--api-key", KEY)
    text = {"type": "text", "text": "<ocr_text>\nTbe qnick brown f0x.\n</ocr_text>"}
    models = {FLASH: [text], "openai/o4-mini": [text], "deepseek/deepseek-r1": [text],
              "google/gemini-2.5-pro": [text], "qwen/qwen2.5-vl-72b-instruct": [text, TINY_PNG]}

    async def go():
        client = LLMClient(server.url, SecretStr(KEY), PricingCache(server.url, cache_dir=tmp_path), timeout=5.0)
        try:
            for model, content in models.items():
                for page in (1, 2):  # the same system prompt twice: the second read from the cache
                    await client.call(model, [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": content}],
                                      LedgerRecorder(ledger, ledger.run, "correct", page))
        finally:
            await client.aclose()

    asyncio.run(go())
    rows = ledger._db.execute(
        "SELECT model, page, status, cached_tokens, cache_write_tokens, reasoning_tokens, images,"
        " computed_cost_usd, provider_cost_usd FROM calls ORDER BY call_id").fetchall()
    assert len(rows) == 10
    for model, page, status, cached, written, reasoning, images, computed, provider in rows:
        assert status == "ok" and provider > 0, model
        assert computed == pytest.approx(provider, rel=1e-9, abs=1e-15), (model, page)
    by = {(r[0], r[1]): r for r in rows}
    assert by[FLASH, 1][4] > 0 and by[FLASH, 2][3] > 0  # cache write, then cache read
    assert by["google/gemini-2.5-pro", 2][3] > 0 and by["google/gemini-2.5-pro", 1][5] > 0
    assert by["openai/o4-mini", 2][3] > 0 and by["openai/o4-mini", 1][5] > 0
    assert by["deepseek/deepseek-r1", 1][5] > 0  # reasoning at its own, dearer, rate
    assert by["qwen/qwen2.5-vl-72b-instruct", 1][6] == 1  # an image, a request fee, a discount
    assert ledger.total_cost() == pytest.approx(server.credits(), abs=1e-12)


@pytest.fixture
def fetches(monkeypatch):
    """How many times the price list was asked for over HTTP."""
    count = [0]
    real_get = pricing.httpx.get

    def counting_get(*args, **kwargs):
        count[0] += 1
        return real_get(*args, **kwargs)

    monkeypatch.setattr(pricing.httpx, "get", counting_get)
    return count


def test_prices_are_kept_24_hours_then_fetched_again(sim, tmp_path, fetches):
    server = sim()
    clock = Clock()
    cache = PricingCache(server.url, cache_dir=tmp_path, now=clock)
    assert cache.get(FLASH).prompt == 0.0000003 and fetches[0] == 1
    assert on_disk(cache)["fetched_at"] == T0
    marked = on_disk(cache)
    marked["models"][FLASH]["prompt"] = 1.0  # what a refetch would overwrite
    cache.path.write_text(json.dumps(marked))

    clock.t = T0 + TTL_SECONDS - 60
    assert cache.age_seconds() == TTL_SECONDS - 60
    again = PricingCache(server.url, cache_dir=tmp_path, now=clock)
    assert again.get(FLASH).prompt == 1.0  # from disk
    assert fetches[0] == 1

    clock.t = T0 + TTL_SECONDS + 60
    assert again.get(FLASH).prompt == 0.0000003
    assert fetches[0] == 2
    assert on_disk(cache)["fetched_at"] == T0 + TTL_SECONDS + 60
    assert cache.age_seconds() == 0 and fetches[0] == 2  # the other's fresh fetch, read from disk


def test_a_failed_refresh_falls_back_to_the_stale_cache_with_a_warning(sim, tmp_path, caplog):
    server = sim()
    clock = Clock()
    PricingCache(server.url, cache_dir=tmp_path, now=clock).models()
    server.stop()
    clock.t = T0 + 30 * HOUR
    caplog.set_level(logging.WARNING, logger="ar.pricing")
    cache = PricingCache(server.url, cache_dir=tmp_path, now=clock)
    assert cache.get(FLASH).completion == 0.0000025
    assert cache.age_seconds() == 30 * HOUR
    warnings = [r.getMessage() for r in caplog.records if r.name == "ar.pricing" and r.levelno == logging.WARNING]
    assert warnings and "30.0 h ago" in warnings[0] and "refresh failed" in warnings[0]
    assert on_disk(cache)["fetched_at"] == T0


def test_no_cache_and_no_server_is_an_error_naming_the_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api/v1"
    cache = PricingCache(url, cache_dir=tmp_path, timeout=2.0)
    with pytest.raises(PricingUnavailable, match=f"cannot read prices from {url}/models"):
        cache.get(FLASH)
    assert not cache.path.exists()


def test_an_unknown_model_is_named_with_close_ids_suggested(tmp_path):
    cache = cache_with(tmp_path, {m: FLASH_PRICES for m in (FLASH, "google/gemini-2.5-pro", "openai/o4-mini")})
    with pytest.raises(UnknownModel, match="unknown model 'google/gemini-2.5-flsh'") as err:
        CostCalculator(cache).cost("google/gemini-2.5-flsh", Usage(prompt_tokens=1))
    assert "did you mean: google/gemini-2.5-flash" in str(err.value)
    assert "openai/o4-mini" not in str(err.value)


def test_cli_pricing_shows_the_models_prices(sim, tmp_path):
    server = sim()
    env = {"OPENROUTER_BASE_URL": server.url, "AR_CACHE_DIR": str(tmp_path)}
    one = run_ar("pricing", FLASH, "--json", env=env, timeout=30)
    assert one.returncode == 0, one.stderr
    report = json.loads(one.stdout)
    assert report["base_url"] == server.url and report["models_known"] == len(MODELS)
    flash = report["models"][FLASH]
    assert flash == {"prompt": 0.0000003, "completion": 0.0000025, "request": 0.0, "image": 0.001238,
                     "web_search": 0.0, "input_cache_read": 0.000000075, "input_cache_write": 0.0000003833,
                     "internal_reasoning": 0.0, "discount": 0.0, "overrides": []}
    assert all(isinstance(v, float) for k, v in flash.items() if k != "overrides")

    listed = run_ar("pricing", "--list", "--json", env=env, timeout=30)
    assert listed.returncode == 0, listed.stderr
    prices = json.loads(listed.stdout)["models"]
    assert set(prices) == {m["id"] for m in MODELS}
    assert prices["qwen/qwen2.5-vl-72b-instruct"]["discount"] == 0.25

    # read through a pipe, the table is whole: no model id or column cut at 80 columns
    table = run_ar("pricing", "--list", env=env, timeout=30)
    assert table.returncode == 0, table.stderr
    assert all(m["id"] in table.stdout for m in MODELS) and "discount" in table.stdout


def test_cli_pricing_errors(sim, tmp_path):
    server = sim()
    env = {"OPENROUTER_BASE_URL": server.url, "AR_CACHE_DIR": str(tmp_path)}
    unknown = run_ar("pricing", "nosuch/model", env=env, timeout=30)
    assert unknown.returncode == 1
    [line] = unknown.stderr.strip().splitlines()
    assert line.startswith("ar: error:") and "nosuch/model" in line
    assert "did you mean" in line or "unknown model" in line
    typo = run_ar("pricing", "openai/o4-minii", env=env, timeout=30)
    assert typo.returncode == 1 and "did you mean: openai/o4-mini" in typo.stderr
    bare = run_ar("pricing", env=env, timeout=30)
    assert bare.returncode == 2 and bare.stderr.startswith("ar: error:")
