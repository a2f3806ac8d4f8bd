"""A trivial page stage for testing the framework without OCR or an LLM.

Each page "costs" one billable call of PAGE_COST(page) USD, recorded in the ledger the
way the LLM client records real calls; `delay` in the run options slows each page down.
"""
import asyncio
import os

from pipeline.stage import PageFailed, Stage


def page_cost(page: int) -> float:
    return 0.001 * page


class EchoStage(Stage):
    name = "echo"

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

    name = "shout"

    async def process_page(self, page: int) -> dict:
        upstream = self.read_output("echo", page)
        await asyncio.sleep(self.ctx.options.get("delay", 0))
        return {"page": page, "echo_pid": upstream["pid"]}
