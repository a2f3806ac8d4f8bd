"""`ar.py cost BOOK --reconcile`: the ledger against the provider's own record of each generation."""
from __future__ import annotations

import asyncio

from infra.books import Book
from infra.checkpoint import Ledger
from infra.config import Settings
from infra.llm_client import LLMClient
from infra.pricing import same_cost


def reconcile(book: Book, settings: Settings) -> dict:
    """Every recorded generation whose cost the provider states otherwise, or does not know."""
    calls = Ledger.read(book.ledger_path, Ledger.calls_with_generation, [])
    billed = asyncio.run(_provider_costs(settings, [c["generation_id"] for c in calls]))
    differences, unknown = [], []
    for call, provider in zip(calls, billed):
        if provider is None:
            unknown.append(call)
        elif not same_cost(provider, call["cost_usd"]):
            differences.append({**call, "provider_cost_usd": provider,
                                "difference_usd": provider - call["cost_usd"]})
    return {"book": book.id, "generations": len(calls),
            "ledger_usd": sum(c["cost_usd"] for c in calls),
            "provider_usd": sum(b for b in billed if b is not None),
            "differences": differences, "unknown": unknown}


async def _provider_costs(settings: Settings, generation_ids: list[str]) -> list[float | None]:
    client = LLMClient.from_settings(settings, concurrency=16)
    client.resolve_timeout = 5.0  # a generation the provider still does not know is reported as such
    try:
        stats = await asyncio.gather(*(client.generation_stats(g) for g in generation_ids))
    finally:
        await client.aclose()
    return [None if s is None else s[1] for s in stats]
