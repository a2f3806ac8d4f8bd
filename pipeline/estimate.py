"""What the rest of a book will cost, before anything is spent: a low and a high figure per stage.

Two sources, the better one first:
- observed: once a stage has done pages, what its pages really cost (the ledger);
- tokens: otherwise, the token counts of the OCR text (4 characters a token) at the model's
  prices: the prompt (instructions and text) and an answer of about the text's length.
Pages without OCR text yet are taken as long as the book's OCR'd pages (or a typical page).
The fix stage takes only the pages correction flags: those already known, and of the rest,
between half and twice the share flagged so far (none to all when nothing is known yet).
"""
from __future__ import annotations

import json
import statistics

from infra.books import Book, page_file
from infra.budget import kept_budget
from infra.checkpoint import Ledger
from infra.pricing import ModelPrice, PricingCache
from pipeline import correct, fix
from pipeline.llm_stage import max_tokens_for

TYPICAL_PAGE_CHARS = 2000  # a printed book page, when no page has been OCR'd yet
CHARS_PER_TOKEN = 4
# the JSON around the text (confidence, changes, flags): a few tokens when nothing changed,
# more for a page of many changes
ANSWER_OVERHEAD_TOKENS = (10, 240)
MIN_OBSERVED_PAGES = 3


def _tokens(chars: float) -> float:
    return chars / CHARS_PER_TOKEN


def page_cost_range(price: ModelPrice, system: str, chars: float, copies: int = 1) -> tuple[float, float]:
    """Low and high cost of one page of `chars` characters of text, sent `copies` times."""
    if chars == 0:
        return 0.0, 0.0
    sent = copies * chars + 80
    cache_read = price.prompt if price.input_cache_read is None else price.input_cache_read
    prompt_low = _tokens(len(system)) * cache_read + _tokens(sent) * price.prompt
    prompt_high = _tokens(len(system) + sent) * 1.3 * max(price.prompt, price.input_cache_write or 0)
    answer_low = (0.8 * _tokens(chars) + ANSWER_OVERHEAD_TOKENS[0]) * price.completion
    # high: the answer as long as max_tokens allows when the model reasons, else 1.5x the text
    out_rate = max(price.completion, price.internal_reasoning or 0)
    answer_high = min(max_tokens_for("x" * int(chars)), 1.5 * _tokens(chars) + ANSWER_OVERHEAD_TOKENS[1]) * out_rate
    scale = 1 - price.discount
    return ((prompt_low + answer_low + price.request) * scale,
            (prompt_high + answer_high + price.request) * scale)


def _read(book: Book, stage: str, page: int) -> dict | None:
    try:
        return json.loads((book.stage_dir(stage) / page_file(page, ".json")).read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def estimate(book: Book, pricing: PricingCache, models: dict[str, str],
             default_budget_usd: float | None = None) -> dict:
    """The remaining cost of `book`'s LLM stages with `models` ({"correct": id, "fix": id}),
    beside what the book has spent and its budget (kept in the ledger, else the default)."""
    pages = range(1, book.page_count() + 1)
    ledger = Ledger.open_reader(book.ledger_path)
    done: dict[str, set[int]] = {"ocr": set(), "correct": set(), "fix": set()}
    observed: dict[str, list[float]] = {"correct": [], "fix": []}
    spent, budget = 0.0, kept_budget(None, default_budget_usd)
    if ledger is not None:
        try:
            with ledger.snapshot():
                done = {s: ledger.done_pages(s) for s in done}
                observed = {s: list(ledger.page_costs(s, done[s]).values()) for s in observed}
                spent, budget = ledger.total_cost(), kept_budget(ledger, default_budget_usd)
        finally:
            ledger.close()
    chars = {p: len(_read(book, "ocr", p)["text"]) for p in pages if p in done["ocr"]}
    typical = statistics.mean(chars.values()) if chars else TYPICAL_PAGE_CHARS

    def stage_estimate(stage: str, todo: list[int], share: tuple[float, float], system: str,
                       copies: int) -> dict:
        """`share`: the low and high fraction of `todo` that will really need a call."""
        price = pricing.get(models[stage])
        costs = observed[stage]
        if len(costs) >= MIN_OBSERVED_PAGES:
            mean = statistics.mean(costs)
            low, high = 0.8 * mean * len(todo) * share[0], 1.25 * mean * len(todo) * share[1]
            method = "observed"
        else:
            ranges = [page_cost_range(price, system, chars.get(p, typical), copies) for p in todo]
            low, high = sum(r[0] for r in ranges) * share[0], sum(r[1] for r in ranges) * share[1]
            method = "tokens"
        return {"model": models[stage], "pages": len(todo), "low_usd": low, "high_usd": high,
                "method": method}

    uncorrected = [p for p in pages if p not in done["correct"]]
    stages = {"correct": stage_estimate("correct", uncorrected, (1.0, 1.0), correct.SYSTEM, 1)}
    # fix (the OCR text and the first pass in its prompt): the pages known to need it, and
    # a share of those whose correction is still to come
    corrected = {p: _read(book, "correct", p) for p in done["correct"]}
    needing = {p for p, c in corrected.items() if c is not None and fix.needs_fix(c)}
    share = len(needing) / len(corrected) if corrected else None
    flagged = sorted(needing - done["fix"])
    known = stage_estimate("fix", flagged, (1.0, 1.0), fix.SYSTEM, 2)
    guess = (0.0, 1.0) if share is None else (share / 2, min(1.0, 2 * share + 0.1))
    rest = stage_estimate("fix", uncorrected, guess, fix.SYSTEM, 2)
    stages["fix"] = {**known, "pages": len(flagged) + len(uncorrected), "flagged_pages": len(flagged),
                     "low_usd": known["low_usd"] + rest["low_usd"],
                     "high_usd": known["high_usd"] + rest["high_usd"]}
    return {"book": book.id, "pages": len(pages), "stages": stages,
            "low_usd": sum(s["low_usd"] for s in stages.values()),
            "high_usd": sum(s["high_usd"] for s in stages.values()),
            "spent_usd": spent, "budget_usd": budget}
