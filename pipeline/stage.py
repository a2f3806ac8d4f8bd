"""The Stage base: one step of the book (ocr, correct, fix, merge), page by page.

A stage does the work of one page in `process_page`; this base does the rest the same way
for every stage: it loads what earlier runs spent (never resets it), writes each output
atomically and only then marks the page done in the ledger, and records failures.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from infra.books import Book, page_file
from infra.checkpoint import Ledger
from infra.errors import EXIT_ERROR
from infra.logs import log_event
from infra.storage import atomic_write_json, remove_temp_files


log = logging.getLogger("ar.stage")


class PageFailed(Exception):
    """This page could not be done in this run; the others go on."""


class StopRun(Exception):
    """Nothing more can be done in this run (out of credits, bad key, budget reached)."""

    def __init__(self, message: str, status: str = "failed", exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.status = status
        self.exit_code = exit_code


@dataclass
class RunContext:
    """What every stage of one run shares."""

    book: Book
    ledger: Ledger
    run_id: int
    workers: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    llm: Any = None  # the run's LLMClient, shared by the LLM stages
    run_cost_usd: float = 0.0  # every stage's spending in this run
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class Stage:
    name: ClassVar[str]
    # Page stages work page by page; a book stage (merge) works once on the whole book.
    per_page: ClassVar[bool] = True

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.out_dir = ctx.book.stage_dir(self.name)
        if self.per_page:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_temp_files(self.out_dir)
        ledger = ctx.ledger
        # What earlier runs spent stays in the totals: loaded here, only ever added to.
        self.stats: dict[str, float | int] = {
            "total_cost_usd": ledger.stage_cost(self.name),
            "run_cost_usd": 0.0,
            "pages_done": len(ledger.done_pages(self.name)),
            "pages_failed": 0,
            "calls": 0,
        }

    @property
    def concurrency(self) -> int:
        return self.ctx.workers

    def output_path(self, page: int) -> Path:
        return self.out_dir / page_file(page, ".json")

    def read_output(self, stage: str, page: int) -> dict:
        return json.loads((self.ctx.book.stage_dir(stage) / page_file(page, ".json")).read_bytes())

    def add_cost(self, cost: float) -> None:
        """Every billable call's cost comes through here (the ledger already holds it)."""
        self.stats["total_cost_usd"] += cost
        self.stats["run_cost_usd"] += cost
        self.stats["calls"] += 1
        before, self.ctx.run_cost_usd = self.ctx.run_cost_usd, self.ctx.run_cost_usd + cost
        warn_at = self.ctx.options.get("warn_run_usd")
        if warn_at is not None and before <= warn_at < self.ctx.run_cost_usd:
            log_event(log, f"this run has spent ${self.ctx.run_cost_usd:.4f}, past the ${warn_at:.4f} "
                      "set by AR_WARN_RUN_USD", logging.WARNING, book=self.ctx.book.id)

    async def process_page(self, page: int) -> dict:
        raise NotImplementedError

    async def run_page(self, page: int) -> bool:
        """Do one page; True when it is done (output durable, then ledger updated)."""
        try:
            return await self._run_page(page)
        except sqlite3.Error as e:  # the ledger cannot be written (disk full): nothing can be recorded
            raise StopRun(f"cannot write {self.ctx.ledger.path}: {e}") from None

    async def _run_page(self, page: int) -> bool:
        try:
            result = await self.process_page(page)
        except PageFailed as e:
            self.ctx.ledger.mark_failed(self.name, page, self.ctx.run_id, str(e))
            self.stats["pages_failed"] += 1
            return False
        try:
            atomic_write_json(self.output_path(page), result)
        except OSError as e:  # disk full, read-only: no page can be saved, stop cleanly
            raise StopRun(f"cannot write {self.output_path(page)}: {e.strerror or e}") from None
        self.ctx.ledger.mark_done(self.name, page, self.ctx.run_id)
        self.stats["pages_done"] += 1
        return True

    async def run_book(self) -> None:
        """Book stages (per_page = False) do their work here."""
        raise NotImplementedError

    def mark_book_done(self) -> None:
        """A book stage's one unit of work (ledger page 0) is done."""
        self.ctx.ledger.mark_done(self.name, 0, self.ctx.run_id)
        self.stats["pages_done"] = 1
