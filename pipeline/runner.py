"""Runs a book's stages as one pipeline: a page moves to the next stage as soon as it is ready.

Each page stage has a queue and its own bounded pool of workers. Resume is planning: a
page is queued for the first selected stage where the ledger does not have it done, and
only when the stage before that one has it done. Correcting page 1 never waits for the OCR
of page 300. A book stage (merge) runs once every page stage has finished.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from pipeline.stage import RunContext, Stage, StopRun

RESUME = "run the same command again to resume"
_CLOSED = math.inf  # sorts after every page: a worker that sees it knows the queue is drained


@dataclass
class Outcome:
    status: str = "done"  # done | failed | interrupted | budget
    message: str = ""
    exit_code: int = 0
    pages_processed: int = 0
    failed: dict[str, int] = field(default_factory=dict)


class Pipeline:
    def __init__(self, ctx: RunContext, stages: list[Stage], order: list[str], on_progress=None):
        """`stages`: the selected stages, in order; `order`: every stage name, in order."""
        self.ctx = ctx
        self.stages = stages
        self.order = order
        self.page_stages = [s for s in stages if s.per_page]
        self.book_stages = [s for s in stages if not s.per_page]
        self.queues = {s.name: asyncio.PriorityQueue() for s in self.page_stages}
        self.done = {s.name: ctx.ledger.done_pages(s.name) for s in self.page_stages}
        self.on_progress = on_progress or (lambda stage: None)
        self.outcome = Outcome()

    def _prerequisite(self, stage: str) -> str | None:
        i = self.order.index(stage)
        return self.order[i - 1] if i > 0 else None

    def _ready(self, stage: str, page: int) -> bool:
        before = self._prerequisite(stage)
        if before is None:
            return True
        if before in self.done:
            return page in self.done[before]
        return self.ctx.ledger.page_status(before, page) == "done"

    def plan(self, pages: list[int]) -> dict[str, list[int]]:
        """Which pages each stage starts with: exactly the pages not done, where ready."""
        plan: dict[str, list[int]] = {s.name: [] for s in self.page_stages}
        for page in pages:
            for stage in self.page_stages:
                if page in self.done[stage.name]:
                    continue
                if self._ready(stage.name, page):
                    plan[stage.name].append(page)
                break
        return plan

    async def run(self, pages: list[int]) -> Outcome:
        for name, todo in self.plan(pages).items():
            for page in todo:
                self.queues[name].put_nowait(page)
        if self.page_stages:
            self.queues[self.page_stages[0].name].put_nowait(_CLOSED)
        try:
            await asyncio.gather(*(self._run_stage(i) for i in range(len(self.page_stages))))
            if self._finished_pages(pages) and not self.ctx.stopping.is_set():
                for stage in self.book_stages:
                    if self.outcome.pages_processed or not self._book_stage_done(stage):
                        await stage.run_book()
                        stage.mark_book_done()
                        self.on_progress(stage)
        except StopRun as stop:
            self._stop(stop)
        if self.outcome.status == "done" and self.ctx.stopping.is_set():
            self.outcome.status, self.outcome.exit_code = "interrupted", 130
            self.outcome.message = RESUME
        elif self.outcome.status == "done" and self.outcome.failed:
            summary = ", ".join(f"{n} in {s}" for s, n in self.outcome.failed.items())
            self.outcome.status, self.outcome.exit_code = "failed", 1
            self.outcome.message = f"pages failed ({summary}): see `ar.py status`; run again to retry them"
        return self.outcome

    def _book_stage_done(self, stage: Stage) -> bool:
        return self.ctx.ledger.page_status(stage.name, 0) == "done"

    def _finished_pages(self, pages: list[int]) -> bool:
        last = self.page_stages[-1].name if self.page_stages else None
        if last is None:
            before = self._prerequisite(self.book_stages[0].name) if self.book_stages else None
            return before is None or all(self.ctx.ledger.page_status(before, p) == "done" for p in pages)
        return len(self.done[last]) == len(pages)

    def _stop(self, stop: StopRun) -> None:
        if self.outcome.status in ("done", "failed"):
            self.outcome.status, self.outcome.exit_code, self.outcome.message = (
                stop.status, stop.exit_code, str(stop))
        self.ctx.stopping.set()

    async def _run_stage(self, index: int) -> None:
        stage = self.page_stages[index]
        try:
            await asyncio.gather(*(self._worker(index) for _ in range(stage.concurrency)))
        finally:
            if index + 1 < len(self.page_stages):
                self.queues[self.page_stages[index + 1].name].put_nowait(_CLOSED)

    async def _worker(self, index: int) -> None:
        stage = self.page_stages[index]
        queue = self.queues[stage.name]
        following = self.page_stages[index + 1] if index + 1 < len(self.page_stages) else None
        while True:
            page = await queue.get()
            if page == _CLOSED or self.ctx.stopping.is_set():
                queue.put_nowait(_CLOSED)  # let the other workers see it too
                return
            try:
                ok = await stage.run_page(page)
            except StopRun as stop:
                self._stop(stop)
                queue.put_nowait(_CLOSED)
                return
            self.on_progress(stage)
            if not ok:
                self.outcome.failed[stage.name] = self.outcome.failed.get(stage.name, 0) + 1
                continue
            self.outcome.pages_processed += 1
            self.done[stage.name].add(page)
            if following is not None and page not in self.done[following.name] \
                    and self._ready(following.name, page):
                self.queues[following.name].put_nowait(page)
