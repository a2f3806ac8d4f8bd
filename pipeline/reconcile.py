"""`ar.py cost BOOK --reconcile`: the ledger against the provider's own records.

Two checks. Each recorded generation against what `GET /generation` says it cost (with the
user's own provider key, BYOK, OpenRouter's fee plus the provider's bill). And the money no
generation id can attribute: over each run, how far the key's usage counter (`GET /key`)
moved against what the run's calls cost in the ledger. That counter is the key's, not the
book's: another process spending on the same key during a run shows here too. A run whose
calls were settled by a later run (cut, or pending at a crash, or killed before it could
note the counter) is measured together with the runs after it, up to the first that ended
with nothing left to settle: the provider bills a crash's cut calls in the meantime, and a
call killed before its generation id arrived is found only this way.
"""
from __future__ import annotations

import asyncio

from infra.books import Book
from infra.ledgers import read_ledger
from infra.config import Settings
from infra.llm_client import LLMClient
from infra.pricing import same_cost


def reconcile(book: Book, settings: Settings) -> dict:
    """Every recorded generation whose cost the provider states otherwise, or does not know;
    and the unattributed spend (None: no run of the book noted the key's counter at both ends)."""
    calls, runs, pending = read_ledger(
        book, lambda ledger: (ledger.calls_with_generation(), ledger.runs(), ledger.pending_calls()), ([], [], []))
    billed = asyncio.run(_provider_costs(settings, [c["generation_id"] for c in calls]))
    differences, unknown = [], []
    for call, provider in zip(calls, billed):
        if provider is None:
            unknown.append(call)
        elif not same_cost(provider, call["cost_usd"]):
            differences.append({**call, "provider_cost_usd": provider,
                                "difference_usd": provider - call["cost_usd"]})
    unattributed, measured = unattributed_spend(runs)
    return {"book": book.id, "generations": len(calls),
            "ledger_usd": sum(c["cost_usd"] for c in calls),
            "provider_usd": sum(b for b in billed if b is not None),
            "differences": differences, "unknown": unknown,
            # calls a run left pending (it died mid-call): billed or not, their cost is the next run's to settle
            "pending": [{"call_id": c.call_id, "generation_id": c.generation_id, "model": c.model, "page": c.page}
                        for c in pending],
            "unattributed_usd": unattributed, "runs_measured": measured}


def unattributed_spend(runs: list[dict]) -> tuple[float | None, int]:
    """How far the key's counter moved beyond the ledger, over spans of runs (see the top),
    and how many runs were measured; None when no span has both ends."""
    total, measured = None, 0
    start, cost, span = None, 0.0, 0
    for run in runs:
        if run["key_usage_start"] is None and run["calls"]:
            start = None  # spent with no counter noted (a run of several books): no span through it
            continue
        if start is None:
            if run["key_usage_start"] is None:
                continue  # no client: nothing to measure from here
            start, cost, span = run["key_usage_start"], 0.0, 0
        cost, span = cost + run["cost_usd"], span + 1
        if run["key_usage_end"] is not None and not run["pending_calls"] and not run["settled_later"]:
            # to the ledger's precision: float noise is no spend, and never a "-0"
            total = round((total or 0.0) + run["key_usage_end"] - start - cost, 9) + 0.0
            measured += span
            start = None
    return total, measured


def reconciled(report: dict) -> bool:
    """Every generation matches, none is left pending, and the key moved by what the ledger
    holds (or is unknown)."""
    unattributed = report["unattributed_usd"]
    return (not report["differences"] and not report["unknown"] and not report["pending"]
            and (unattributed is None or same_cost(unattributed, 0.0)))


async def _provider_costs(settings: Settings, generation_ids: list[str]) -> list[float | None]:
    client = LLMClient.from_settings(settings, concurrency=16)
    client.resolve_timeout = 5.0  # a generation the provider still does not know is reported as such
    try:
        stats = await asyncio.gather(*(client.generation_stats(g) for g in generation_ids))
    finally:
        await client.aclose()
    return [None if s is None else s[1] + (s[0].upstream_cost or 0.0) for s in stats]
