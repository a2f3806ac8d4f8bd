"""Prices and costs from OpenRouter's own payloads (tests/fixtures/openrouter, with their
sources in its README): the price list as it is served, variable "-1" prices, long-context
overrides, BYOK usage and the /generation record, each costed and kept in the ledger."""
import json
from pathlib import Path

import pytest

from infra.errors import VariablePrice
from infra.pricing import CostCalculator, ModelPrice, PricingCache, Rates, Usage
from pipeline.llm_stage import LedgerRecorder

FIXTURES = Path(__file__).parent / "fixtures" / "openrouter"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def served_prices(tmp_path, *files: str) -> PricingCache:
    """A PricingCache holding the models of `files` (GET /models bodies), parsed as a fetch does."""
    cache = PricingCache("http://127.0.0.1:9/api/v1", cache_dir=tmp_path)
    models = {e["id"]: ModelPrice.from_openrouter(e["pricing"]) for f in files for e in fixture(f)["data"]}
    cache.path.write_text(json.dumps({"base_url": cache.base_url, "fetched_at": cache.now(),
                                      "models": {m: p.model_dump() for m, p in models.items()}}))
    return cache


def test_the_price_list_as_served_in_2025_and_2026_is_read_with_absent_prices_at_zero(tmp_path):
    cache = served_prices(tmp_path, "models_subset_2025-08.json", "models_subset_2026-08.json")
    gpt35 = cache.get("openai/gpt-3.5-turbo")  # 2026: only prompt and completion are given
    assert (gpt35.prompt, gpt35.completion, gpt35.request, gpt35.image) == (0.0000005, 0.0000015, 0.0, 0.0)
    usage = Usage.from_openrouter({"prompt_tokens": 1000, "completion_tokens": 100})
    assert CostCalculator(cache).cost("openai/gpt-3.5-turbo", usage) == pytest.approx(1000 * 5e-7 + 100 * 1.5e-6)


def test_long_context_override_prices_a_request_past_its_threshold(tmp_path):
    cache = served_prices(tmp_path, "models_subset_2026-08.json")
    sonnet = cache.get("anthropic/claude-sonnet-4")
    assert [o.min_prompt_tokens for o in sonnet.overrides] == [200000]
    costs = CostCalculator(cache)
    short, long = Usage(prompt_tokens=1000, completion_tokens=100), Usage(prompt_tokens=250_000, completion_tokens=100)
    assert costs.cost("anthropic/claude-sonnet-4", short) == pytest.approx(1000 * 3e-6 + 100 * 15e-6)
    assert costs.cost("anthropic/claude-sonnet-4", long) == pytest.approx(250_000 * 6e-6 + 100 * 22.5e-6)
    # a worst case counts on the dearest prices, whatever the request's size
    assert costs.worst_case("anthropic/claude-sonnet-4", 1000, 100) == pytest.approx((1000 * 7.5e-6 + 100 * 22.5e-6) * 1.05)


def test_a_minus_one_price_is_a_variable_price_never_a_negative_one(tmp_path):
    cache = served_prices(tmp_path, "models_variable_price_reconstructed.json")
    auto = cache.get("openrouter/auto")  # known: not an unknown model
    assert auto.variable and auto.prompt is None and auto.completion is None
    assert "-1" not in json.dumps(auto.model_dump()) and "null" in json.dumps(auto.model_dump())
    costs = CostCalculator(cache)
    assert costs.cost("openrouter/auto", Usage(prompt_tokens=10, completion_tokens=10)) is None  # the bill says
    with pytest.raises(VariablePrice, match="AR_MAX_PROMPT_PRICE"):
        costs.worst_case("openrouter/auto", 1000, 100)
    ceiling = Rates.from_max_price({"prompt": 2.0, "completion": 8.0})  # USD per million tokens
    assert costs.worst_case("openrouter/auto", 1000, 100, ceiling=ceiling) == pytest.approx((1000 * 2e-6 + 100 * 8e-6) * 1.05)


def test_byok_usage_costs_the_fee_plus_the_providers_bill_and_the_ledger_keeps_both(ledger):
    byok = Usage.from_openrouter(fixture("chat_completion_byok_google.json")["usage"])
    assert byok.cost == 0 and byok.upstream_cost == pytest.approx(0.0003253)
    # OpenRouter fills upstream_inference_cost on calls without BYOK too, equal to the cost: counted once
    plain = Usage.from_openrouter(fixture("chat_completion_reasoning_cost_bedrock.json")["usage"])
    assert plain.cost == pytest.approx(0.000924) and plain.upstream_cost is None
    assert plain.reasoning_tokens == 48

    recorder = LedgerRecorder(ledger, ledger.run, "correct", 1)
    for usage in (byok, plain):
        handle = recorder.begin("google/gemini-2.5-flash", 1)
        recorded = recorder.finish(handle, "ok", usage, 0.0003, usage.cost, None, "gen-x")
        assert recorded == pytest.approx(usage.cost + (usage.upstream_cost or 0.0))
    assert ledger.total_cost() == pytest.approx(0.0003253 + 0.000924)
    model = ledger.costs_by("model")["google/gemini-2.5-flash"]
    assert model["provider_cost_usd"] == pytest.approx(0.000924) and model["upstream_cost_usd"] == pytest.approx(0.0003253)


def test_the_generation_record_costs_the_same_way():
    record = fixture("generation_doc_example.json")["data"]
    usage = Usage.from_generation(record)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens) == (10, 25, 3, 5)
    assert usage.cost == pytest.approx(0.0015) and usage.upstream_cost is None  # is_byok false
    byok = Usage.from_generation({**record, "is_byok": True})
    assert byok.upstream_cost == pytest.approx(0.0012)


def test_a_price_list_cached_by_an_older_ar_with_minus_one_is_still_a_variable_price(tmp_path):
    cache = PricingCache("http://127.0.0.1:9/api/v1", cache_dir=tmp_path)  # never asked: the file is fresh
    cache.path.write_text(json.dumps({"base_url": cache.base_url, "fetched_at": cache.now(), "models": {
        "openrouter/auto": {"prompt": -1.0, "completion": -1.0, "request": 0.0}}}))  # as the old ar stored it
    assert cache.get("openrouter/auto").variable
    with pytest.raises(VariablePrice):
        CostCalculator(cache).worst_case("openrouter/auto", 1000, 100)
