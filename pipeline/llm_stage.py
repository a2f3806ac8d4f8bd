"""What the LLM stages (correct, fix) share: the page's call recorder and error policy."""
from __future__ import annotations

from pydantic import BaseModel, Field

from infra.checkpoint import Ledger
from infra.llm_client import FatalLLMError, InvalidAnswer, LLMError, Result
from infra.pricing import Usage
from pipeline.stage import PageFailed, Stage, StopRun


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


class LLMStage(Stage):
    model: str

    def __init__(self, ctx, model: str):
        super().__init__(ctx)
        self.model = model
        ctx.llm.pricing.get(model)  # an unpriced model stops the run before any call

    def recorder(self, page: int) -> LedgerRecorder:
        return LedgerRecorder(self.ctx.ledger, self.ctx.run_id, self.name, page, self.add_cost)

    async def ask(self, page: int, messages: list[dict], max_tokens: int) -> Result:
        """One validated answer for this page; errors become the page's or the run's fate.

        InvalidAnswer is left to the stage: an answer that never validated flags the page."""
        try:
            return await self.ctx.llm.call(self.model, messages, self.recorder(page),
                                           schema=CorrectedPage, max_tokens=max_tokens)
        except InvalidAnswer:
            raise
        except FatalLLMError as e:
            raise StopRun(str(e)) from None
        except LLMError as e:
            raise PageFailed(str(e)) from None


def max_tokens_for(text: str) -> int:
    """Room for the corrected text and the JSON around it; a page's text is ~4 chars a token."""
    return min(16384, 512 + len(text) // 2)
