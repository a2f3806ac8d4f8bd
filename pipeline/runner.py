"""Runs a book's stages as one pipeline: a page moves on to a stage as soon as that stage's
declared inputs (pipeline/registry.py) have it, and a stage waits for nothing else.

Each page stage has a queue and its own bounded pool of workers; correcting page 1 never
waits for the OCR of page 300. A book stage (merge, or one that needs every page, such as
finding running headers) runs once the stages it reads have finished, and may stand between
page stages: the pages of the stages that read it start when it is done. Resume is planning:
a page is queued for each selected stage that does not have it done and whose inputs have it.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from infra.errors import RUN_EXIT, PageFailed, StopRun, exit_code
from infra.logs import log_event
from pipeline.registry import BOOK_PAGE, StageSpec
from pipeline.stage import RunContext, Stage

log = logging.getLogger("ar.runner")

RESUME = "run the same command again to resume"
_CLOSED = math.inf  # sorts after every page: a worker that sees it knows the queue is drained
# How often a page another writer of the fleet holds is looked at again: done by it, or free
# to take once its lease lapsed (a writer killed: AR_LEASE_S at most)
HELD_RECHECK_S = 1.0


@dataclass
class Outcome:
    status: str = "done"  # a key of infra.errors.RUN_EXIT
    message: str = ""
    pages_processed: int = 0
    book_stages_done: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    run_id: int | None = None  # the run's number in the ledger, once it is closed
    ends_run: bool = False  # stopped by what no other book escapes (the key, the library's cap)

    @property
    def idle(self) -> bool:
        """It ended with nothing done and nothing failed: every page asked for was done."""
        return self.status == "done" and not (self.pages_processed or self.book_stages_done or self.failed)

    @property
    def ran(self) -> bool:
        """It has a run on record (not skipped, nor left unstarted: pipeline/process.py)."""
        return self.status in RUN_EXIT

    @property
    def exit_code(self) -> int:
        return exit_code(self.status)


class Pipeline:
    def __init__(self, ctx: RunContext, stages: list[Stage], pages: list[int], on_progress=None):
        """`stages`: the selected stages, in the registry's order; the others' outputs are read
        as the ledger has them."""
        self.ctx = ctx
        self.pages = pages
        self.stages = {s.name: s for s in stages}
        ledger = ctx.ledger
        self.done = {spec.name: ledger.done_pages(spec.name) for spec in ctx.registry}
        self.queues = {s.name: asyncio.PriorityQueue() for s in stages if s.per_page}
        self.queued: dict[str, set[int]] = {name: set() for name in self.queues}
        self.finished = {s.name: asyncio.Event() for s in stages}
        self.on_progress = on_progress or (lambda stage: None)
        self.outcome = Outcome()
        self.in_work = 0  # pages queued or in flight in a page stage: a run of several books opens the next when low
        self.held: dict[str, list[asyncio.Task]] = {s.name: [] for s in stages}  # _wait_for_held, per stage
        self._held_said = False
        self._forget_stale_book_stages()

    def _spec(self, name: str) -> StageSpec:
        return self.ctx.registry[name]

    def _forget_stale_book_stages(self) -> None:
        """A selected book stage is redone when a stage it reads, directly or not, has work
        left at the run's start: until then, the stages that read it must not take its old
        output, in this run or, if it stops first, the next."""
        busy: set[str] = set()
        for spec in self.ctx.registry:
            if spec.name not in self.stages:
                continue
            if busy & set(spec.reads) or len(self.done[spec.name]) < spec.total(len(self.pages)):
                busy.add(spec.name)
                if not spec.per_page and self.done[spec.name]:
                    self.done[spec.name] = set()
                    self.ctx.ledger.clear_stage(spec.name)  # so a run stopped before redoing it redoes it

    def _has(self, stage: str, page: int) -> bool:
        return (page if self._spec(stage).per_page else BOOK_PAGE) in self.done[stage]

    def _ready(self, stage: str, page: int) -> bool:
        return all(self._has(r, page) for r in self._spec(stage).reads)

    def _offer(self, stage: str, page: int) -> None:
        """Queue `page` for `stage` if it is not done there, not queued, and its inputs have it."""
        if page in self.done[stage] or page in self.queued[stage] or not self._ready(stage, page):
            return
        self.queued[stage].add(page)
        self.queues[stage].put_nowait(page)
        self.in_work += 1

    def _offer_downstream(self, stage: str, pages: list[int]) -> None:
        for name in self.queues:
            if stage in self._spec(name).reads:
                for page in pages:
                    self._offer(name, page)

    def plan(self) -> dict[str, list[int]]:
        """Which pages each page stage starts with: exactly the pages not done, where ready."""
        for name in self.queues:
            for page in self.pages:
                self._offer(name, page)
        return {name: sorted(q) for name, q in self.queued.items()}

    async def run(self) -> Outcome:
        self.plan()
        results = await asyncio.gather(*(self._run_stage(s) for s in self.stages.values()), return_exceptions=True)
        for error in results:  # an unexpected one: raised once every stage has stopped
            if isinstance(error, BaseException):
                raise error
        if self.outcome.status == "done" and self.ctx.stopping.is_set():
            self.outcome.status, self.outcome.message = "interrupted", RESUME
        elif self.outcome.status == "done" and self.outcome.failed:
            summary = ", ".join(f"{n} in {s}" for s, n in self.outcome.failed.items())
            self.outcome.status = "failed"
            self.outcome.message = (f"pages failed ({summary}): `ar.py log {self.ctx.book.id}` says why; "
                                    "run again to retry them")
        return self.outcome

    def _stop(self, stop: StopRun) -> None:
        if self.outcome.status in ("done", "failed"):
            self.outcome.status, self.outcome.message = stop.status, str(stop)
            self.outcome.ends_run = stop.ends_run
        self.ctx.stopping.set()

    async def _after_inputs(self, stage: Stage) -> None:
        """Until every selected stage that `stage` reads has finished."""
        for name in stage.spec.reads:
            if name in self.finished:
                await self.finished[name].wait()

    async def _run_stage(self, stage: Stage) -> None:
        try:
            if stage.per_page:
                await asyncio.gather(self._close_when_inputs_finish(stage),
                                     *(self._worker(stage) for _ in range(stage.concurrency)))
                await asyncio.gather(*self.held[stage.name])  # only the workers start them: all started now
            else:
                await self._run_book_stage(stage)
        except BaseException:  # a bug or a disk error: the other stages take no new page
            self.ctx.stopping.set()
            raise
        finally:
            self.finished[stage.name].set()

    async def _close_when_inputs_finish(self, stage: Stage) -> None:
        await self._after_inputs(stage)
        self.queues[stage.name].put_nowait(_CLOSED)  # no page can come any more

    async def _run_book_stage(self, stage: Stage) -> None:
        await self._after_inputs(stage)
        if BOOK_PAGE in self.done[stage.name]:
            return
        if self.ctx.stopping.is_set() or not all(self._has(r, p) for r in stage.spec.reads for p in self.pages):
            # stopped, or some page did not make it through: not done, but a stage that can
            # (merge) puts together what there is
            await stage.run_partial({r: set(self.done[r]) for r in stage.spec.reads})
            return
        try:
            if not self.ctx.ledger.claim_page(stage.name, BOOK_PAGE) and not await self._taken(stage, BOOK_PAGE):
                return  # done by another writer, or this run stopped while it held the stage
            started = time.monotonic()
            await stage.run_book()
        except StopRun as stop:
            self._stop(stop)
            return
        except PageFailed as e:
            self.ctx.ledger.mark_failed(stage.name, BOOK_PAGE, self.ctx.run_id, str(e))
            self.outcome.failed[stage.name] = 1
            stage.log_outcome(BOOK_PAGE, "failed", started, error=str(e))
            return
        stage.mark_book_done()
        stage.log_outcome(BOOK_PAGE, "done", started)
        self.outcome.book_stages_done += 1
        self.done[stage.name].add(BOOK_PAGE)
        self.on_progress(stage)
        self._offer_downstream(stage.name, self.pages)

    async def _worker(self, stage: Stage) -> None:
        queue = self.queues[stage.name]
        while True:
            page = await queue.get()
            if page == _CLOSED or self.ctx.stopping.is_set():
                queue.put_nowait(_CLOSED)  # let the other workers see it too
                return
            try:
                ok = await stage.run_page(page)
            except StopRun as stop:  # the other workers finish their pages in flight, then stop
                self._stop(stop)
                queue.put_nowait(_CLOSED)
                return
            finally:
                self.in_work -= 1
            if ok is None:  # another writer of the fleet has it: its outcome is waited for apart
                self.held[stage.name].append(asyncio.create_task(self._wait_for_held(stage, page)))
                continue
            self._record(stage, page, ok)

    def _record(self, stage: Stage, page: int, ok: bool) -> None:
        self.on_progress(stage)
        if not ok:
            self.outcome.failed[stage.name] = self.outcome.failed.get(stage.name, 0) + 1
            return
        self.outcome.pages_processed += 1
        self.done[stage.name].add(page)
        self._offer_downstream(stage.name, [page])

    async def _wait_for_held(self, stage: Stage, page: int) -> None:
        """A page another writer of the fleet holds (two runs of one book at once, or a run
        killed whose lease holds yet): done by that writer, it is done here too; taken once
        that writer let it go (its run ended, or its lease lapsed), it is done here."""
        try:
            if not await self._taken(stage, page):
                return
            ok = await stage.run_page(page)
        except StopRun as stop:  # this writer's own lease lapsed meanwhile
            self._stop(stop)
            return
        if ok is None:  # taken again by a third writer first
            await self._wait_for_held(stage, page)
        else:
            self._record(stage, page, ok)

    async def _taken(self, stage: Stage, page: int) -> bool:
        """Wait until another writer's page (`page` of `stage`) is done, then take it as done
        (False), or until this writer can claim it (True); False too if the run stops first."""
        what = "the book stage" if page == BOOK_PAGE else f"page {page} of"
        log_event(log, f"{self.ctx.book.id}: {what} {stage.name} is held by another writer: waiting for it to "
                  "finish it, or for its lease to lapse (AR_LEASE_S)",
                  logging.INFO if self._held_said else logging.WARNING,  # said once on the console
                  book=self.ctx.book.id, page=page)
        self._held_said = True
        ledger = self.ctx.ledger
        while not self.ctx.stopping.is_set():
            try:
                await asyncio.wait_for(self.ctx.stopping.wait(), HELD_RECHECK_S)
            except asyncio.TimeoutError:
                pass
            if self.ctx.stopping.is_set():
                break
            if ledger.page_status(stage.name, page) == "done":
                self.done[stage.name].add(page)
                stage.stats["pages_done"] += 1
                self.on_progress(stage)
                self._offer_downstream(stage.name, self.pages if page == BOOK_PAGE else [page])
                return False
            if ledger.claim_page(stage.name, page):
                return True
        return False
