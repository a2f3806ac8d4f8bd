"""Makes N concurrent correction calls, each recorded in a ledger, in a real process.

python -m tests.drivers.call_llm LEDGER BASE_URL N  (key in OPENROUTER_API_KEY)
Used to kill a process mid-call and check that the next one resolves what it left pending.
"""
import asyncio
import os
import sys
from pathlib import Path

from pydantic import SecretStr

from infra.checkpoint import Ledger
from infra.llm_client import LLMClient
from infra.pricing import PricingCache
from pipeline.correct import CorrectedPage
from pipeline.llm_stage import LedgerRecorder


async def main(ledger_path: Path, base_url: str, n: int) -> None:
    ledger = Ledger.open_writer(ledger_path)
    run = ledger.start_run(os.getpid(), "call_llm")
    client = LLMClient(base_url, SecretStr(os.environ["OPENROUTER_API_KEY"]), PricingCache(base_url),
                       timeout=30, max_retries=0)
    text = "<ocr_text>\nTbe qnick brown f0x jumps over tbe lazy dog.\n</ocr_text>"

    async def one(page: int) -> None:
        await client.call("google/gemini-2.5-flash", [{"role": "user", "content": text}],
                          LedgerRecorder(ledger, run, "correct", page), schema=CorrectedPage)

    await asyncio.gather(*(one(p) for p in range(1, n + 1)))
    await client.aclose()
    ledger.end_run(run, "done")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
