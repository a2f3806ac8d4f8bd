"""The Stage base: one step of the book (ocr, correct, fix, merge), declared in
pipeline/registry.py.

A page stage does the work of one page in `process_page`; this base does the rest the same
way for every stage: it loads what earlier runs spent (never resets it), writes each output
atomically and only then marks the page done in the ledger, and records failures. A book
stage does its work once, in `run_book`. A stage reads the outputs of the stages its
declaration names, through `inputs`, never through a stage's name.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from infra.books import Book
from infra.checkpoint import Ledger
from infra.errors import PageFailed, StopRun
from infra.logs import log_event
from infra.storage import atomic_write_json, remove_temp_files
from pipeline.registry import BOOK_PAGE, Registry, StageSpec

log = logging.getLogger("ar.stage")
STALE_TEMP_S = 600  # a page's or book's output is written in well under this
DEFAULT_LANG = "eng"


def kept_language(ledger: Ledger) -> str:
    """The book's languages (Tesseract codes, `eng+fra`) as kept with it, else English."""
    return ledger.get_meta("lang") or DEFAULT_LANG


@dataclass
class RunContext:
    """What every stage of one run shares."""

    book: Book
    ledger: Ledger
    run_id: int
    registry: Registry
    workers: int = 8
    options: dict[str, Any] = field(default_factory=dict)  # vision, warn_run_usd, and a test stage's own
    models: dict[str, str] = field(default_factory=dict)  # LLM stage -> the model it calls
    llm: Any = None  # the run's LLMClient, shared by the LLM stages (and the run's books)
    budgets: tuple = ()  # the caps this book's calls fall under (infra/budget.py's Cap)
    books_in_run: int = 1
    ocr_slots: Any = None  # the run's one bound on OCR pages in flight, shared by its books (OcrSlots)
    run_cost_usd: float = 0.0  # every stage's spending in this run
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class Stage:
    def __init__(self, ctx: RunContext, spec: StageSpec):
        self.ctx = ctx
        self.spec = spec
        self.name = spec.name
        # Page stages work page by page; a book stage (merge) works once on the whole book.
        self.per_page = spec.per_page
        folders = [spec.folder(ctx.book)] if self.per_page else [(ctx.book.root / f).parent for f in spec.writes]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            # alone in the book (its lock): every leftover; with a shared ledger another writer
            # may be writing one now, so only those no write takes that long for
            remove_temp_files(folder, STALE_TEMP_S if ctx.ledger.shared else 0.0)
        ledger = ctx.ledger
        # What earlier runs spent stays in the totals: loaded here, only ever added to.
        self.stats: dict[str, float | int] = {
            "total_cost_usd": ledger.stage_cost(self.name),
            "pages_done": len(ledger.done_pages(self.name)),
            "pages_failed": 0,
        }

    @classmethod
    def check_ready(cls, spec: StageSpec, book: Book, options: dict[str, Any]) -> None:
        """Before a run does any work: what this stage needs from the machine is there (an
        ArError saying what is missing, if not). Most stages need nothing."""

    @property
    def concurrency(self) -> int:
        return self.ctx.workers

    def inputs(self, page: int) -> list[dict]:
        """The page's outputs of the page stages this stage reads, in the declared order."""
        reads = (self.ctx.registry[name] for name in self.spec.reads)
        return [spec.read_page(self.ctx.book, page) for spec in reads if spec.per_page]

    def add_cost(self, cost: float) -> None:
        """Every billable call's cost comes through here (the ledger already holds it)."""
        self.stats["total_cost_usd"] += cost
        before, self.ctx.run_cost_usd = self.ctx.run_cost_usd, self.ctx.run_cost_usd + cost
        warn_at = self.ctx.options.get("warn_run_usd")
        if warn_at is not None and before <= warn_at < self.ctx.run_cost_usd:
            log_event(log, f"this run has spent ${self.ctx.run_cost_usd:.4f}, past the ${warn_at:.4f} "
                      "set by AR_WARN_RUN_USD", logging.WARNING, book=self.ctx.book.id)

    async def process_page(self, page: int) -> dict:
        raise NotImplementedError

    async def run_page(self, page: int) -> bool | None:
        """Do one page; True when it is done (output durable, then ledger updated), None when
        another writer of the fleet holds it."""
        try:
            return await self._run_page(page)
        except self.ctx.ledger.write_errors as e:  # the ledger cannot be written (disk full): nothing can be recorded
            raise StopRun(f"cannot write {self.ctx.ledger.path}: {e}") from None

    async def _run_page(self, page: int) -> bool | None:
        started = time.monotonic()
        if not self.ctx.ledger.claim_page(self.name, page):
            return None  # a fleet's other writer has it (PostgreSQL ledger)
        try:
            result = await self.process_page(page)
        except PageFailed as e:
            self.ctx.ledger.mark_failed(self.name, page, self.ctx.run_id, str(e))
            self.stats["pages_failed"] += 1
            self.log_outcome(page, "failed", started, error=str(e))
            return False
        path = self.spec.page_path(self.ctx.book, page)
        self.ctx.ledger.check_lease()  # a writer whose lease lapsed writes no output
        try:  # in a thread: its two fsyncs (a few ms each) would stall every page in flight
            await asyncio.to_thread(atomic_write_json, path, result)
        except OSError as e:  # disk full, read-only: no page can be saved, stop cleanly
            raise StopRun(f"cannot write {path}: {e.strerror or e}") from None
        text = result.get("text")
        self.ctx.ledger.mark_done(self.name, page, self.ctx.run_id, result.get("flags"),
                                  len(text) if isinstance(text, str) else None)
        self.stats["pages_done"] += 1
        self.log_outcome(page, "done", started, flags=sorted(result.get("flags") or ()))
        return True

    def log_outcome(self, page: int, outcome: str, started: float, **fields) -> None:
        """Each page's outcome in the run's log (a book stage's: page 0), with how long it
        took (`ar.py log`)."""
        log_event(log, f"page {page}: {self.name} {outcome}", event="page", stage=self.name, page=page,
                  outcome=outcome, seconds=round(time.monotonic() - started, 3), **fields)

    async def run_book(self) -> None:
        """Book stages (per_page = False) do their work here."""
        raise NotImplementedError

    async def run_partial(self, done: dict[str, set[int]]) -> None:
        """A book stage's work over what there is when the run stops before all its inputs
        are done (`done`: each stage it reads -> its pages done); not marked done. Most have
        nothing to do."""

    def mark_book_done(self) -> None:
        """A book stage's one unit of work (ledger page BOOK_PAGE) is done."""
        self.ctx.ledger.mark_done(self.name, BOOK_PAGE, self.ctx.run_id)
        self.stats["pages_done"] = 1
