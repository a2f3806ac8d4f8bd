"""A trivial page stage for testing the framework without OCR or an LLM.

Each page "costs" one billable call of PAGE_COST(page) USD, recorded in the ledger the
way the LLM client records real calls; `delay` in the run options slows each page down.
"""
import asyncio
import json
import os

from infra.errors import PageFailed
from pipeline.registry import Registry, StageSpec
from pipeline.stage import Stage


def page_cost(page: int) -> float:
    return 0.001 * page


class EchoStage(Stage):
    async def process_page(self, page: int) -> dict:
        ledger, ctx = self.ctx.ledger, self.ctx
        call = ledger.begin_call(ctx.run_id, self.name, page, "test/echo", 1)
        await asyncio.sleep(ctx.options.get("delay", 0))
        if page in ctx.options.get("fail_pages", ()):
            ledger.finish_call(call, "failed", computed_cost=0.0, error="planted failure")
            raise PageFailed("planted failure")
        ledger.finish_call(call, "ok", computed_cost=page_cost(page))
        self.add_cost(page_cost(page))
        return {"page": page, "pid": os.getpid()}


class ShoutStage(EchoStage):
    """A second stage after echo, to see pages flow from one stage to the next."""

    async def process_page(self, page: int) -> dict:
        (upstream,) = self.inputs(page)
        await asyncio.sleep(self.ctx.options.get("delay", 0))
        return {"page": page, "echo_pid": upstream["pid"]}


class TallyStage(Stage):
    """A book stage between two page stages: it needs every echo page."""

    async def run_book(self) -> None:
        pages = range(1, self.ctx.book.page_count() + 1)
        tally = sum(echo["page"] for p in pages for echo in self.inputs(p))
        (self.ctx.book.root / "tally.json").write_text(json.dumps({"tally": tally}))


class StampStage(Stage):
    """A page stage after the book stage tally: each page carries the book's tally."""

    async def process_page(self, page: int) -> dict:
        (echo,) = self.inputs(page)
        tally = json.loads((self.ctx.book.root / "tally.json").read_text())["tally"]
        return {"page": echo["page"], "tally": tally}


ECHO_STAGES = Registry([
    StageSpec("echo", EchoStage),
    StageSpec("shout", ShoutStage, reads=("echo",)),
])
