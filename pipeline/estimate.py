"""What the rest of a book will cost, before anything is spent: a low and a high figure per
LLM stage of the registry.

Two sources, the better one first:
- observed: once a stage has done pages, what its pages really cost (the ledger);
- tokens: otherwise, the token counts of the page's text (4 characters a token) at the model's
  prices: the prompt (instructions and text) and an answer of about the text's length.
Pages without text yet are taken as long as the book's other pages (or a typical page).
Which pages will need a call is each stage's own estimate (LLMStage.pages_to_call): fix, for
one, takes only the pages correction flags or the OCR doubted, each with its image.
"""
from __future__ import annotations

import statistics

from infra.books import Book
from infra.budget import kept_budget
from infra.checkpoint import Ledger
from infra.pricing import ModelPrice, PricingCache
from pipeline.llm_stage import BookState, max_tokens_for
from pipeline.registry import STAGES, Registry, StageSpec

TYPICAL_PAGE_CHARS = 2000  # a printed book page, when no page has been OCR'd yet
CHARS_PER_TOKEN = 4
# the JSON around the text (confidence, changes, flags): a few tokens when nothing changed,
# more for a page of many changes
ANSWER_OVERHEAD_TOKENS = (10, 240)
MIN_OBSERVED_PAGES = 3


def _tokens(chars: float) -> float:
    return chars / CHARS_PER_TOKEN


def page_cost_range(model_price: ModelPrice, system: str, chars: float, copies: int = 1,
                    images: int = 0) -> tuple[float, float]:
    """Low and high cost of one page of `chars` characters of text, sent `copies` times with
    `images` images (the high one at the dearest of the model's prices, long-context ones
    included)."""
    if chars == 0:
        return 0.0, 0.0
    price, dearest = model_price.at(0), model_price.dearest()
    sent = copies * chars + 80
    prompt_low = _tokens(len(system)) * price.cache_read_rate + _tokens(sent) * price.prompt
    prompt_high = _tokens(len(system) + sent) * 1.3 * max(dearest.prompt, dearest.input_cache_write or 0)
    answer_low = (0.8 * _tokens(chars) + ANSWER_OVERHEAD_TOKENS[0]) * price.completion
    # high: the answer as long as max_tokens allows when the model reasons, else 1.5x the text
    out_rate = max(dearest.completion, dearest.internal_reasoning or 0)
    answer_high = min(max_tokens_for("x" * int(chars)), 1.5 * _tokens(chars) + ANSWER_OVERHEAD_TOKENS[1]) * out_rate
    return ((prompt_low + answer_low + price.request + images * price.image) * (1 - price.discount),
            (prompt_high + answer_high + dearest.request + images * dearest.image) * (1 - dearest.discount))


def _read(spec: StageSpec, book: Book, page: int) -> dict | None:
    try:
        return spec.read_page(book, page)
    except (FileNotFoundError, ValueError):
        return None


def estimate(book: Book, pricing: PricingCache, models: dict[str, str],
             default_budget_usd: float | None = None, registry: Registry = STAGES) -> dict:
    """The remaining cost of `book`'s LLM stages with `models` (stage -> model id), beside
    what the book has spent and its budget (kept in the ledger, else the default)."""
    pages = list(range(1, book.page_count() + 1))
    llm_stages = [spec for spec in registry if spec.uses_llm]

    def queries(ledger: Ledger):
        done = {spec.name: ledger.done_pages(spec.name) for spec in registry}
        observed = {s.name: list(ledger.page_costs(s.name, done[s.name]).values()) for s in llm_stages}
        return done, observed, ledger.total_cost(), kept_budget(ledger, default_budget_usd)

    nothing = ({spec.name: set() for spec in registry}, {s.name: [] for s in llm_stages}, 0.0,
               kept_budget(None, default_budget_usd))
    done, observed, spent, budget = Ledger.read(book.ledger_path, queries, nothing)
    state = BookState(pages, done, lambda stage, page: _read(registry[stage], book, page))
    stages = {spec.name: _stage_estimate(spec, state, pricing.get(models[spec.name]), models[spec.name],
                                         observed[spec.name], _text_lengths(registry[spec.reads[0]], state))
              for spec in llm_stages}
    return {"book": book.id, "pages": len(pages), "stages": stages, **total_range(stages.values()),
            "spent_usd": spent, "budget_usd": budget}


def total_range(stages) -> dict:
    """The low and high sums of stage estimates; None (unknown) if any stage's is."""
    stages = list(stages)
    return {k: None if any(s[k] is None for s in stages) else sum(s[k] for s in stages)
            for k in ("low_usd", "high_usd")}


def _text_lengths(source: StageSpec, book: BookState) -> dict[int, int]:
    """The length of each page's text where the stage's first input has it."""
    texts = {p: book.read(source.name, p) for p in book.done[source.name]}
    return {p: len(t["text"]) for p, t in texts.items() if t is not None}


def _stage_estimate(spec: StageSpec, book: BookState, price: ModelPrice, model: str,
                    observed: list[float], chars: dict[int, int]) -> dict:
    stage = spec.load()
    typical = statistics.mean(chars.values()) if chars else TYPICAL_PAGE_CHARS
    method = "observed" if len(observed) >= MIN_OBSERVED_PAGES else "tokens"
    low = high = 0.0
    groups = stage.pages_to_call(spec, book)
    pages = sum(len(g.pages) for g in groups)
    if method == "tokens" and price.variable and pages:  # no price to count tokens at, until pages are paid
        return {"model": model, "pages": pages, "low_usd": None, "high_usd": None, "method": "variable price"}
    for group in groups:
        if method == "observed":
            mean = statistics.mean(observed)
            low += 0.8 * mean * len(group.pages) * group.share[0]
            high += 1.25 * mean * len(group.pages) * group.share[1]
        else:
            ranges = [page_cost_range(price, stage.system, chars.get(p, typical), stage.text_copies,
                                      int(stage.sees_image)) for p in group.pages]
            low += sum(r[0] for r in ranges) * group.share[0]
            high += sum(r[1] for r in ranges) * group.share[1]
    return {"model": model, "pages": pages, "low_usd": low, "high_usd": high, "method": method}
