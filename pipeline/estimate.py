"""What the rest of a book will cost, before anything is spent: a low and a high figure per
LLM stage of the registry.

Two sources, the better one first:
- observed: once a stage has had pages answered, what they really cost (the ledger), each
  time a run got one answered, its failed attempts included (pages since cleaned too);
- tokens: otherwise, the token counts of the page's text (4 characters a token; its length as
  the ledger's done-mark kept it, so that no page is read) at the model's prices: the prompt
  (instructions and text) and an answer of about the text's length.
Pages without text yet are taken as long as the book's other pages (or a typical page).
Which pages will need a call is each stage's own estimate (LLMStage.pages_to_call): fix, for
one, takes only the pages correction flags or the OCR doubted, each with its image.

Between low and high, a likely figure: from what the stage's pages really cost once there
are some (their mean); before that, the prior of `page_cost_range`: every token at the
model's plain rates, an answer as long as the text. With `vision`, each page's image is
counted from the size it is sent at (infra/images.py): low, likely and high token counts,
and observed pages are only those paid with an image. With `fresh`, the stages it names (and
those made from them) are counted as not done, as the run would leave them.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable

from infra.books import Book
from infra.budget import kept_budget
from infra.checkpoint import Ledger
from infra.images import image_tokens, sent_size
from infra.ledgers import read_ledger
from infra.pricing import CostCalculator, ModelPrice, PricingCache
from pipeline.llm_stage import BookState, max_tokens_for
from pipeline.registry import STAGES, Registry, StageSpec

TYPICAL_PAGE_CHARS = 2000  # a printed book page, when no page has been OCR'd yet
CHARS_PER_TOKEN = 4
# the JSON around the text (confidence, changes, flags): a few tokens when nothing changed,
# more for a page of many changes
ANSWER_OVERHEAD_TOKENS = (10, 240)
MIN_OBSERVED_PAGES = 3
LANGUAGE_LINE_BYTES = 200  # what the prompt says of the book's language (llm_stage.language_line)


def _tokens(chars: float) -> float:
    return chars / CHARS_PER_TOKEN


def page_cost_range(model_price: ModelPrice, system: str, chars: float, copies: int = 1,
                    image: tuple[int, int, int] | None = None) -> tuple[float, float, float]:
    """Low, likely and high cost of one page of `chars` characters of text, sent `copies`
    times, with an image of (low, likely, high) tokens (the high one at the dearest of the
    model's prices, long-context ones included)."""
    if chars == 0 and image is None:
        return 0.0, 0.0, 0.0
    price, dearest = model_price.at(0), model_price.dearest()
    sent = copies * chars + 80
    pictures = image or (0, 0, 0)
    images = price.image if image else 0.0
    prompt_low = _tokens(len(system)) * price.cache_read_rate + (_tokens(sent) + pictures[0]) * price.prompt
    prompt_likely = (_tokens(len(system) + sent) + pictures[1]) * price.prompt
    prompt_high = ((_tokens(len(system) + sent) * 1.3 + pictures[2])
                   * max(dearest.prompt, dearest.input_cache_write or 0))
    answer_low = (0.8 * _tokens(chars) + ANSWER_OVERHEAD_TOKENS[0]) * price.completion
    answer_likely = (_tokens(chars) + sum(ANSWER_OVERHEAD_TOKENS) / 2) * price.completion
    # high: the answer as long as max_tokens allows when the model reasons, else 1.5x the text
    out_rate = max(dearest.completion, dearest.internal_reasoning or 0)
    answer_high = min(max_tokens_for("x" * int(chars)), 1.5 * _tokens(chars) + ANSWER_OVERHEAD_TOKENS[1]) * out_rate
    return ((prompt_low + answer_low + images + price.request) * (1 - price.discount),
            (prompt_likely + answer_likely + images + price.request) * (1 - price.discount),
            (prompt_high + answer_high + (dearest.image if image else 0.0) + dearest.request) * (1 - dearest.discount))


def worst_call(costs: CostCalculator, model: str, system: str, chars: float, copies: int = 1,
               image_tokens: int | None = None) -> float:
    """What the budget reserves for one call on a page of `chars` characters (as
    LLMClient.worst_case counts it: a token a byte, the image at its bound)."""
    prompt = len(system.encode()) + LANGUAGE_LINE_BYTES + copies * int(chars) + 80 + (image_tokens or 0)
    return costs.worst_case(model, prompt, max_tokens_for("x" * int(chars)), 1 if image_tokens else 0)


def _read(spec: StageSpec, book: Book, page: int) -> dict | None:
    try:
        return spec.read_page(book, page)
    except (FileNotFoundError, ValueError):
        return None


def estimate(book: Book, pricing: PricingCache, models: dict[str, str],
             default_budget_usd: float | None = None, registry: Registry = STAGES,
             vision: bool = False, fresh: Iterable[str] = (), only: Iterable[str] | None = None) -> dict:
    """The remaining cost of `book`'s LLM stages (those named in `only`, else every one) with
    `models` (stage -> model id), beside what the book has spent and its budget (kept in the
    ledger, else the default); with the page images if `vision`; as if the stages `fresh` (and
    those made from them) were not done. `reserve_usd`: the most one call of the rest can
    reserve against a budget."""
    pages = list(range(1, book.page_count() + 1))
    only = None if only is None else set(only)
    llm_stages = [spec for spec in registry if spec.uses_llm and (only is None or spec.name in only)]

    read = {name for spec in llm_stages for name in spec.reads}  # the stages whose pages the calls send

    def queries(ledger: Ledger):
        done = {spec.name: ledger.done_pages(spec.name) for spec in registry}
        observed = {s.name: ledger.answered_page_costs(s.name, vision or s.load().sees_image) for s in llm_stages}
        marks = {name: ledger.page_marks(name) for name in read}
        return done, observed, marks, ledger.total_cost(), kept_budget(ledger, default_budget_usd)

    nothing = ({spec.name: set() for spec in registry}, {s.name: [] for s in llm_stages},
               {name: {} for name in read}, 0.0, kept_budget(None, default_budget_usd))
    done, observed, marks, spent, budget = read_ledger(book, queries, nothing)
    texts = {name: _text_lengths(registry[name], book, done[name], marks[name]) for name in read}
    for name in fresh:  # what the run discards first
        done.update({spec.name: set() for spec in registry.downstream(name)})
    state = BookState(pages, done, lambda stage, page: _read(registry[stage], book, page),
                      {name: {p: flags for p, (_, flags) in m.items()} for name, m in marks.items()})
    seeing = vision or any(spec.load().sees_image for spec in llm_stages)
    images = {p: sent_size(book.source_image(p)) for p in pages} if seeing else {}
    stages = {}
    for spec in llm_stages:
        model = models[spec.name]
        stages[spec.name] = _stage_estimate(spec, state, pricing.get(model), model, observed[spec.name],
                                            texts[spec.reads[0]], images, CostCalculator(pricing), vision)
    return {"book": book.id, "pages": len(pages), "vision": vision, "stages": stages,
            **total_range(stages.values()), "spent_usd": spent, "budget_usd": budget}


def total_range(stages) -> dict:
    """The low, likely and high sums of stage estimates, None (unknown) if any stage's is;
    and the largest reservation of one call (reserve_usd)."""
    stages = list(stages)
    return {k: None if any(s[k] is None for s in stages) else sum(s[k] for s in stages)
            for k in ("low_usd", "likely_usd", "high_usd")} | {
            "reserve_usd": None if any(s["reserve_usd"] is None for s in stages)
            else max((s["reserve_usd"] for s in stages), default=0.0)}


def budget_to_finish(report: dict) -> float | None:
    """The budget that finishes the book: spent, the high estimate of the rest, and room for
    the worst case one call reserves before it is sent (without it the last call is refused)."""
    if report["high_usd"] is None or report["reserve_usd"] is None:
        return None
    return report["spent_usd"] + report["high_usd"] + report["reserve_usd"]


def _text_lengths(source: StageSpec, book: Book, done: set[int], marks: dict[int, tuple]) -> dict[int, int]:
    """The length of each done page's text: as its done-mark kept it (`marks`), else (a page
    done before ledgers kept it) read from the page's output."""
    texts = {p: _read(source, book, p) for p in done if p not in marks}
    return {**{p: chars for p, (chars, _) in marks.items()},
            **{p: len(t["text"]) for p, t in texts.items() if t is not None and "text" in t}}


def _stage_estimate(spec: StageSpec, book: BookState, price: ModelPrice, model: str, observed: list[float],
                    chars: dict[int, int], images: dict[int, tuple[int, int]], costs: CostCalculator,
                    vision: bool) -> dict:
    stage = spec.load()
    sees = vision or stage.sees_image  # each page's image goes with its text
    typical = statistics.mean(chars.values()) if chars else TYPICAL_PAGE_CHARS
    method = "observed" if len(observed) >= MIN_OBSERVED_PAGES else "tokens"
    low = likely = high = 0.0
    groups = stage.pages_to_call(spec, book)
    pages = sum(len(g.pages) for g in groups)
    if method == "tokens" and price.variable and pages:  # no price to count tokens at, until pages are paid
        return {"model": model, "pages": pages, "low_usd": None, "likely_usd": None, "high_usd": None,
                "reserve_usd": None, "method": "variable price"}
    for group in groups:
        middle = sum(group.share) / 2
        if method == "observed":
            mean = statistics.mean(observed)
            low += 0.8 * mean * len(group.pages) * group.share[0]
            likely += mean * len(group.pages) * middle
            high += 1.25 * mean * len(group.pages) * group.share[1]
        else:
            ranges = [page_cost_range(price, stage.system, chars.get(p, typical), stage.text_copies,
                                      image_tokens(*images[p]) if sees else None) for p in group.pages]
            low += sum(r[0] for r in ranges) * group.share[0]
            likely += sum(r[1] for r in ranges) * middle
            high += sum(r[2] for r in ranges) * group.share[1]
    called = [p for g in groups for p in g.pages]
    longest = max((chars.get(p, typical) for p in called), default=0)
    largest = max((image_tokens(*images[p])[2] for p in called), default=0) if sees else None
    if not called:
        reserve = 0.0
    elif price.variable:  # no worst case to reserve (a budget refuses such a model, infra/pricing.py)
        reserve = None
    else:
        reserve = worst_call(costs, model, stage.system, longest, stage.text_copies, largest)
    return {"model": model, "pages": pages, "low_usd": low, "likely_usd": min(max(likely, low), high),
            "high_usd": high, "reserve_usd": reserve, "method": method}
