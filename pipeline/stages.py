"""The book's stages, in order, how each is built from the settings, and the run's LLM client."""
from __future__ import annotations

import logging
from functools import partial

from infra.config import Settings
from infra.errors import UsageError
from infra.logs import log_event
from pipeline.stage import RunContext

log = logging.getLogger("ar.process")

STAGE_NAMES = ["ocr", "correct", "fix", "merge"]
LLM_STAGES = {"correct", "fix"}


def build_stages(selected: list[str], settings: Settings, vision: bool = False):
    """(name, factory) for each selected stage; a factory makes the stage from a RunContext."""
    from pipeline.correct import CorrectStage
    from pipeline.fix import FixStage
    from pipeline.merge import MergeStage
    from pipeline.ocr import OcrStage

    factories = {
        "ocr": OcrStage,
        "correct": partial(CorrectStage, model=settings.correct_model, vision=vision),
        "fix": partial(FixStage, model=settings.fix_model, vision=vision),
        "merge": MergeStage,
    }
    return [(name, factories[name]) for name in selected]


def make_llm_client(settings: Settings, workers: int):
    from infra.llm_client import LLMClient
    from infra.pricing import PricingCache

    return LLMClient(
        settings.base_url, settings.api_key, PricingCache(settings.base_url),
        timeout=settings.timeout_s, max_retries=settings.max_retries,
        concurrency=workers, requests_per_minute=settings.requests_per_minute,
    )


def llm_setup(settings: Settings, selected: list[str], budget_usd: float | None = None):
    """The run's first step: an LLM client if a stage needs one, the calls an earlier run
    left pending resolved through the provider before anything new is sent, then the
    book's budget (`budget_usd` given now, else kept in the ledger, else configured)."""

    async def before_run(ctx: RunContext) -> None:
        from infra.budget import Budget, book_budget
        from pipeline.llm_stage import LedgerRecorder

        limit = book_budget(ctx.ledger, budget_usd, settings.budget_usd)
        pending = ctx.ledger.pending_calls()
        needs_llm = bool(LLM_STAGES & set(selected))
        if not needs_llm and not pending:
            return
        if not needs_llm and settings.api_key is None:
            log.warning("%d calls of an earlier run are still pending: they will be resolved "
                        "by a run with an API key", len(pending))
            return
        ctx.llm = make_llm_client(settings, ctx.workers)
        if pending:
            counts = await ctx.llm.resolve_pending(
                pending, lambda call: LedgerRecorder(ctx.ledger, call.run_id, call.stage, call.page))
            log_event(log, "resolved calls left pending by an earlier run", **counts)
        if limit is not None:
            ctx.llm.budget = Budget(limit, ctx.ledger.total_cost())

    return before_run


def check_stage_names(names: list[str]) -> list[str]:
    unknown = [s for s in names if s not in STAGE_NAMES]
    if unknown or not names:
        raise UsageError(f"unknown stage {', '.join(unknown) or '(none)'}: choose from {','.join(STAGE_NAMES)}")
    return [s for s in STAGE_NAMES if s in names]

