"""What the LLM stages (correct, fix) share: the page's call recorder and error policy."""
from __future__ import annotations

import bisect
import json
import logging

from pydantic import BaseModel, Field

from infra.budget import BudgetReached
from infra.checkpoint import Ledger
from infra.errors import EXIT_BUDGET
from infra.llm_client import FatalLLMError, InvalidAnswer, LLMError, Result
from infra.pricing import Usage
from infra.logs import log_event
from pipeline.stage import PageFailed, Stage, StopRun

log = logging.getLogger("ar.stage")
EXPENSIVE_PAGE_FACTOR = 5
MEDIAN_AFTER_PAGES = 5


class CorrectedPage(BaseModel):
    """The answer both LLM stages must give, validated before it is used."""

    text: str = Field(description="the page's corrected text, line structure kept")
    confidence: float = Field(ge=0, le=1, description="how sure the correction is right, 0..1")
    changes: list[str] = Field(description="what was changed, e.g. 'tbe -> the'")
    unsure: bool = Field(description="true when parts of the page could not be read with confidence")


class LedgerRecorder:
    """Reports each attempt of one page's call to the ledger, and its cost to the stage."""

    def __init__(self, ledger: Ledger, run_id: int, stage: str, page: int | None, on_cost=None):
        self.ledger, self.run_id, self.stage, self.page = ledger, run_id, stage, page
        self.on_cost = on_cost

    def begin(self, model: str, attempt: int) -> int:
        return self.ledger.begin_call(self.run_id, self.stage, self.page, model, attempt)

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


class LLMStage(Stage):
    model: str

    def __init__(self, ctx, model: str):
        super().__init__(ctx)
        self.model = model
        self._page_costs: list[float] = []  # sorted, for the median
        price = ctx.llm.pricing.get(model)  # an unpriced model stops the run before any call
        self._note_price_change(price)

    def _note_price_change(self, price) -> None:
        """Warn when the model's prices are not those of the book's last run with it."""
        key, now = f"price:{self.model}", price.model_dump()
        before = self.ctx.ledger.get_meta(key)
        if before is not None and json.loads(before) != now:
            changed = {k: (v, now.get(k)) for k, v in json.loads(before).items() if now.get(k) != v}
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
        return LedgerRecorder(self.ctx.ledger, self.ctx.run_id, self.name, page, self.add_cost)

    async def ask(self, page: int, messages: list[dict], max_tokens: int) -> Result:
        """One validated answer for this page; errors become the page's or the run's fate.

        InvalidAnswer is left to the stage: an answer that never validated flags the page."""
        try:
            result = await self.ctx.llm.call(self.model, messages, self.recorder(page),
                                             schema=CorrectedPage, max_tokens=max_tokens)
            self._note_page_cost(page, result.cost)
            return result
        except InvalidAnswer:
            raise
        except BudgetReached as e:
            raise StopRun(str(e), status="budget", exit_code=EXIT_BUDGET) from None
        except FatalLLMError as e:
            raise StopRun(str(e)) from None
        except LLMError as e:
            raise PageFailed(str(e)) from None


def max_tokens_for(text: str) -> int:
    """Room for the corrected text and the JSON around it; a page's text is ~4 chars a token."""
    return min(16384, 512 + len(text) // 2)
