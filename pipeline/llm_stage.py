"""What the LLM stages (correct, fix) share: their messages, the page's call recorder,
their estimate, and the run's first and last steps when one of them is selected (LLMSetup).

An LLM stage declares its instructions (`system`), its answer's schema (`answer`) and how
many times a page's text goes in its prompt (`text_copies`); the client's errors need no
translation here: infra/errors.py's tree says which fail the page and which stop the run.
"""
from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel

from infra.budget import LedgerBudget, book_budget
from infra.checkpoint import Ledger
from infra.config import Settings
from infra.errors import InvalidAnswer, TruncatedAnswer
from infra.llm_client import LLMClient, Result, check_key, image_part
from infra.logs import log_event
from infra.pricing import PricingCache, Usage
from pipeline.executor import llm_runner
from pipeline.faithful import unexplained
from pipeline.registry import StageSpec
from pipeline.stage import RunContext, Stage, kept_language

log = logging.getLogger("ar.stage")
EXPENSIVE_PAGE_FACTOR = 5
MEDIAN_AFTER_PAGES = 5


# What the scan itself is (the OCR stage sees it): carried by every later stage's page output.
SCAN_FLAGS = ("blank", "no_text", "low_confidence", "rotated")
LANGUAGES = {"eng": "English", "fra": "French", "deu": "German", "spa": "Spanish", "ita": "Italian",
             "por": "Portuguese", "nld": "Dutch", "lat": "Latin", "dan": "Danish", "swe": "Swedish"}


def ocr_message(ocr_text: str) -> str:
    return f"OCR text of the page:\n<ocr_text>\n{ocr_text}\n</ocr_text>"


def scan_flags(page_output: dict) -> dict[str, str]:
    """The flags of a stage's page output that say what the scan is."""
    return {k: v for k, v in (page_output.get("flags") or {}).items() if k in SCAN_FLAGS}


# What both LLM stages are told of faithfulness: the page's words as printed, only misreadings fixed.
FAITHFUL = """Fix recognition errors (wrong letters, split or merged words, stray symbols) and nothing
else: do not rewrite, modernise, complete or summarise. Keep the page's own spelling: dialect,
archaic and regional forms ("warn't", "to-day", "connexion", "'em") are printed so on purpose.
Keep the original punctuation as printed (curly or straight quotes and apostrophes, dashes).
Keep every line in its place, including running headers and page numbers, and the paragraph
breaks. A word broken by a hyphen at a line's end only because the line ended is joined into
one word on the first line; a real compound ("well-known", "to-morrow") keeps its hyphen."""


def answer_keys(schema: type[BaseModel]) -> str:
    """The prompt's sentence naming the keys of the answer, from the schema itself."""
    keys = "; ".join(f'"{name}": {field.description}' for name, field in schema.model_fields.items())
    return f"Answer with one JSON object with exactly these keys: {keys}."


def answer_flags(ocr_page: dict, answer: dict) -> dict[str, str]:
    """What a person should check in a model's answer: its own doubt, and a change larger than
    a correction of the OCR text explains (pipeline/faithful.py)."""
    flags = {"unsure": "the model was unsure of parts of the page"} if answer.get("unsure") else {}
    why = unexplained(ocr_page, answer["text"])
    if why:
        flags["changed_too_much"] = why
    return flags


def failure_flags(error: InvalidAnswer) -> dict[str, str]:
    return {"truncated" if isinstance(error, TruncatedAnswer) else "invalid": str(error)}


def language_line(lang: str | None) -> str:
    """What the prompts say of the page's language (Tesseract codes, `eng+fra` for several)."""
    if not lang:
        return ""
    names = " and ".join(LANGUAGES.get(code, code) for code in lang.split("+"))
    return f"\nThe page is in {names}: keep its spelling as printed (do not modernise it)."


@dataclass(frozen=True)
class BookState:
    """What an estimate knows of a book: its pages, each stage's done pages, a way to read a
    done page's output (None if it cannot be read), and the flags of the done pages whose
    done-mark kept them (the ledger's page_marks), which need no reading."""

    pages: list[int]
    done: dict[str, set[int]]
    read: Callable[[str, int], dict | None]
    marked_flags: dict[str, dict[int, dict[str, str]]] = field(default_factory=dict)

    def flags(self, stage: str, page: int) -> dict[str, str] | None:
        """A done page's flags, from its done-mark, else from its output (None: unreadable)."""
        kept = self.marked_flags.get(stage, {}).get(page)
        if kept is not None:
            return kept
        output = self.read(stage, page)
        return None if output is None else output.get("flags") or {}


@dataclass(frozen=True)
class PagesToCall:
    """Pages an LLM stage has still to do, and the low and high share of them that will
    really need a call."""

    pages: list[int]
    share: tuple[float, float] = (1.0, 1.0)


class LedgerRecorder:
    """Reports each attempt of one page's call to the ledger, and its cost to the stage."""

    def __init__(self, ledger: Ledger, run_id: int, stage: str, page: int | None, on_cost=None,
                 budgets: tuple = ()):
        self.ledger, self.run_id, self.stage, self.page = ledger, run_id, stage, page
        self.on_cost = on_cost
        self.budgets = budgets  # the caps its calls fall under (infra/budget.py's Cap): the book's, the library's

    def begin(self, model: str, attempt: int, reserve_usd: float = 0.0) -> int:
        return self.ledger.begin_call(self.run_id, self.stage, self.page, model, attempt, reserve_usd)

    def generation(self, handle: int, generation_id: str) -> None:
        self.ledger.set_generation_id(handle, generation_id)

    def finish(self, handle: int, status: str, usage: Usage | None, computed: float | None,
               provider: float | None, error: str | None, generation_id: str | None) -> float:
        cost = self.ledger.finish_call(handle, status, usage, computed, provider, error, generation_id)
        if self.on_cost is not None:
            self.on_cost(cost)
        return cost

    def unresolved(self, handle: int) -> None:
        """It stays pending in the ledger: the next run asks the provider again."""

    def rejected(self, handle: int, reason: str) -> None:
        self.ledger.reject_call(handle, reason)


class LLMStage(Stage):
    system: ClassVar[str]
    answer: ClassVar[type[BaseModel]]
    text_copies: ClassVar[int] = 1
    sees_image: ClassVar[bool] = False  # the page's image goes with its text even without --vision

    def __init__(self, ctx: RunContext, spec: StageSpec):
        super().__init__(ctx, spec)
        self.model = ctx.models[self.name]
        self.vision = self.sees_image or bool(ctx.options.get("vision"))
        # the book's languages: given for this run, else kept with the book (see pipeline/ocr.py)
        self.language = language_line(ctx.options.get("lang") or kept_language(ctx.ledger))
        self._page_costs: list[float] = []  # sorted, for the median
        price = ctx.llm.pricing.get(self.model)  # an unpriced model stops the run before any call
        self._note_price_change(price)

    @classmethod
    def pages_to_call(cls, spec: StageSpec, book: BookState) -> list[PagesToCall]:
        """For the estimate: the pages not done yet, each needing a call."""
        return [PagesToCall([p for p in book.pages if p not in book.done[spec.name]])]

    def _note_price_change(self, price) -> None:
        """Warn when the model's prices are not those of the book's last run with it."""
        key, now = f"price:{self.model}", price.model_dump()
        before = self.ctx.ledger.get_meta(key)
        # the prices kept then, compared one by one (a field added to ModelPrice since is no change)
        changed = {k: (v, now.get(k)) for k, v in json.loads(before).items() if now.get(k) != v} if before else {}
        if changed:
            log_event(log, f"prices of {self.model} changed since the book's last run: " + ", ".join(
                f"{k} {a} -> {b}" for k, (a, b) in changed.items()), logging.WARNING, book=self.ctx.book.id)
        self.ctx.ledger.set_meta(key, json.dumps(now))

    def _note_page_cost(self, page: int, cost: float) -> None:
        """Warn about a page that cost far more than the book's median page so far."""
        costs = self._page_costs
        if len(costs) >= MEDIAN_AFTER_PAGES and cost > EXPENSIVE_PAGE_FACTOR * costs[len(costs) // 2]:
            log_event(log, f"page {page} cost ${cost:.4f} in {self.name}, over {EXPENSIVE_PAGE_FACTOR}x "
                      f"the median page (${costs[len(costs) // 2]:.4f})", logging.WARNING,
                      book=self.ctx.book.id, page=page)
        bisect.insort(costs, cost)

    def recorder(self, page: int) -> LedgerRecorder:
        return LedgerRecorder(self.ctx.ledger, self.ctx.run_id, self.name, page, self.add_cost, self.ctx.budgets)

    async def messages(self, page: int, text: str) -> list[dict]:
        """The stage's instructions, then the page's text (and its image, with --vision: scaled
        and encoded in a thread, a fraction of a second the other pages need not wait for)."""
        user: list[dict] = [{"type": "text", "text": text}]
        if self.vision:
            user.append(await asyncio.to_thread(image_part, self.ctx.book.source_image(page)))
        system = self.system + self.language
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    async def ask(self, page: int, text: str, max_tokens: int) -> Result:
        """One answer for this page, validated against the stage's schema."""
        result = await self.ctx.llm.call(self.model, await self.messages(page, text), self.recorder(page),
                                         schema=self.answer, max_tokens=max_tokens)
        self._note_page_cost(page, result.cost)
        return result


def max_tokens_for(text: str) -> int:
    """Room for the corrected text and the JSON around it; a page's text is ~4 chars a token."""
    return min(16384, 512 + len(text) // 2)


class LLMSetup:
    """The run's LLM side: `before_run` is each book's first step when an LLM stage is
    selected, `after_run` its last, `close` the run's last. One client serves every book of the run (one
    concurrency, one rate limit); each call's recorder carries its book's ledger and caps."""

    def __init__(self, settings: Settings, selected: list[StageSpec], budget_usd: float | None = None,
                 library=None):
        """`budget_usd`: each book's cap given now (else kept in its ledger, else configured);
        `library`: the library's cap (infra/library_budget.py), or None."""
        self.settings, self.selected, self.budget_usd, self.library = settings, selected, budget_usd, library
        self.llm: LLMClient | None = None

    def check_ready(self, models: dict[str, str]) -> None:
        """Before any book's run opens: the key (the provider's word on it, where it has one) and
        a price for each model of the selected LLM stages, so that a run they would refuse is no
        run (the books' ledgers stay as they were)."""
        if not any(spec.uses_llm for spec in self.selected):
            return
        check_key(self.settings.base_url, self.settings.api_key)
        pricing = PricingCache(self.settings.base_url)
        for spec in self.selected:
            if spec.uses_llm:
                pricing.get(models[spec.name])

    async def before_run(self, ctx: RunContext) -> None:
        """The client (made once), the calls an earlier run of the book left pending resolved
        through the provider before anything new is sent, then the book's caps."""
        settings = self.settings
        limit = book_budget(ctx.ledger, self.budget_usd, settings.budget_usd)
        pending = ctx.ledger.orphaned_calls()
        needs_llm = any(spec.uses_llm for spec in self.selected)
        if not needs_llm and not pending:
            return
        if not needs_llm and settings.api_key is None:
            log.warning("%d calls of an earlier run are still pending: they will be resolved "
                        "by a run with an API key", len(pending))
            return
        if self.llm is None:
            self.llm = llm_runner(LLMClient.from_settings(settings, ctx.workers), ctx.workers)
        ctx.llm = self.llm
        await _note_key_usage(ctx, "key_usage_start")
        if pending:
            await _settle(ctx, pending)
        if limit is not None or self.library is not None:
            for spec in self.selected:  # a model whose price is known only from the bill: VariablePrice
                if spec.uses_llm:
                    ctx.llm.costs.worst_case(ctx.models[spec.name], 0, 0, ceiling=ctx.llm.ceiling)
        budget = ctx.ledger.run_budget(limit)
        if isinstance(budget, LedgerBudget):  # the fleet's ledger admits each call against every cap itself
            if "requests_per_minute" in settings.model_fields_set:  # AR_RPM given: the fleet's one rate, kept
                ctx.ledger.set_rate(settings.requests_per_minute)
            ctx.llm.budget = budget
        elif budget is not None:
            ctx.budgets += (budget,)
        if self.library is not None:  # after the pending calls: their costs are the book's now
            self.library.sync([ctx.book.id], own=frozenset([ctx.book.id]))
            ctx.budgets += self.library.caps(ctx.book.id)

    async def after_run(self, ctx: RunContext) -> None:
        """A book's last step, before its run closes: its calls cut mid-answer settled (in its
        ledger), and with a shared ledger those of writers that died during the run; the key's
        counter noted."""
        if ctx.llm is None:
            return
        await ctx.llm.drain()
        if ctx.ledger.shared:  # a writer that died during the run (its lease lapsed since): its calls
            pending = ctx.ledger.orphaned_calls()
            if pending:
                await _settle(ctx, pending)
        await _note_key_usage(ctx, "key_usage_end")

    async def close(self) -> None:
        """The run's last step: the client closed."""
        if self.llm is not None:
            await self.llm.aclose()


async def _settle(ctx: RunContext, pending: list) -> None:
    """Calls no live writer will settle (a run killed mid-call), resolved through the provider:
    their cost recorded as billed, or released as lost."""
    counts = await ctx.llm.resolve_pending(
        pending, lambda call: LedgerRecorder(ctx.ledger, call.run_id, call.stage, call.page))
    log_event(log, "resolved calls left pending by a writer that stopped", **counts)


async def _note_key_usage(ctx: RunContext, column: str) -> None:
    """The key's usage counter around the run: `cost --reconcile` compares how far it moved
    with what the run's calls cost, to show spend that no generation id accounts for. Not in
    a run of several books: the counter moves with all of them, not with one book's calls."""
    if ctx.books_in_run > 1:
        return
    usage = await ctx.llm.key_usage()
    if usage is None:
        return
    try:
        ctx.ledger.set_key_usage(ctx.run_id, column, usage)
    except ctx.ledger.write_errors as e:  # a full disk: the run's own records say so; this one only informs
        log.warning("cannot note the key's usage in %s: %s", ctx.ledger.path, e)
