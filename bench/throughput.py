"""How close `ar.py process` gets to the provider's limit, and what ar itself costs per page.

(a) Throughput: `ar.py process BOOK --stages correct --workers 32`, the whole command timed
    (start-up, price list, resolving nothing, every page, the cost report), against the
    local server with a latency of L = 200 ms. With C = 32 calls in flight the limit is
    C / L = 160 pages/s; the figure is pages/s as a fraction of it. Goal >= 0.9.
    Beside it, the same calls (the same prompts, streamed) from a bare httpx client (on ar's
    transport, infra/transport.py) with 32 tasks and nothing else: no ledger, no files, no
    validation, no start-up. That is as fast as the HTTP stack and the local server go on
    this machine; ar's rate is also given against it.
(b) Overhead at L = 0: the CPU time (user + system, from wait4) of the `ar.py` process per
    corrected page, the server's CPU apart (it runs in its own process). Marginal: the
    difference between a large and a small book over the difference in pages, so start-up
    (imports, price list) is not spread over the pages; the least of the repeats, as timeit
    does (on a shared virtual machine, interference only adds CPU time). Goal <= 2 ms.

Both parts stream each answer as real providers do, a few tokens a chunk (--chunk-tokens,
default 3: about 200 chunks a corrected page); --chunk-tokens 0 gives the old 4 chunks an
answer. --stream-ms paces the chunks (the time between two), so that they reach ar one by
one as from a real provider, rather than in the few large reads of an unpaced local stream.

    python -m bench.throughput [--pages 2000] [--repeat 3] [--chunk-tokens 3] [--stream-ms 0]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.books import ocr_done_book, page_text
from infra.transport import SlotTransport
from pipeline.correct import CorrectedPage, CorrectStage
from pipeline.llm_stage import ocr_message
from tests.conftest import ROOT
from tests.simserver import Sim

WORKERS = 32
LATENCY_S = 0.2


def run_process(book_id: str, books_dir: Path, server: Sim, cache: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the ar process) of one `ar.py process ... --stages correct`."""
    env = {**os.environ, "AR_BOOKS_DIR": str(books_dir), "OPENROUTER_BASE_URL": server.url,
           "OPENROUTER_API_KEY": server.key, "AR_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "ar.py"), "process", book_id, "--stages", "correct",
                             "--workers", str(WORKERS)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"ar.py process {book_id} exited {proc.returncode}: {proc.stderr.read().decode()}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


async def bare_client(server: Sim, pages: int) -> float:
    """Seconds for `pages` streamed correction calls from a bare httpx client, WORKERS at a time."""
    body = {"model": "google/gemini-2.5-flash", "stream": True, "max_tokens": 4096, "response_format": {
        "type": "json_schema", "json_schema": {"name": "CorrectedPage", "schema": CorrectedPage.model_json_schema()}}}
    todo = iter(range(1, pages + 1))

    async def worker(client: httpx.AsyncClient) -> None:
        for page in todo:
            messages = [{"role": "system", "content": CorrectStage.system}, {"role": "user", "content": ocr_message(page_text(page))}]
            async with client.stream("POST", f"{server.url}/chat/completions", json={**body, "messages": messages},
                                     headers={"Authorization": f"Bearer {server.key}"}) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:") and line != "data: [DONE]":
                        json.loads(line[5:])

    async with httpx.AsyncClient(timeout=60, transport=SlotTransport(WORKERS)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(WORKERS)))
        return time.perf_counter() - start


def throughput(tmp: Path, pages: int, repeat: int, stream: tuple[str, ...]) -> tuple[float, float]:
    """(ar's pages/s against C/L, against the bare client), medians of `repeat` alternating runs."""
    server = Sim("--latency-ms", str(LATENCY_S * 1000), *stream)
    try:
        limit = WORKERS / LATENCY_S
        ar_rates, bare_rates = [], []
        for i in range(repeat):
            ocr_done_book(tmp / "books", f"tp{i}", pages)
            wall, cpu = run_process(f"tp{i}", tmp / "books", server, tmp / "cache")
            ar_rates.append(pages / wall)
            bare_rates.append(pages / asyncio.run(bare_client(server, pages)))
            print(f"  run {i + 1}: ar {pages} pages in {wall:.2f} s = {ar_rates[-1]:.1f} pages/s "
                  f"({ar_rates[-1] / limit:.3f} of {limit:.0f}; ar CPU {cpu:.2f} s); "
                  f"bare httpx client {bare_rates[-1]:.1f} pages/s ({bare_rates[-1] / limit:.3f})")
        return statistics.median(ar_rates) / limit, statistics.median(ar_rates) / statistics.median(bare_rates)
    finally:
        server.stop()


def overhead(tmp: Path, small: int, large: int, repeat: int, stream: tuple[str, ...]) -> float:
    server = Sim(*stream)
    try:
        per_page = []
        for i in range(repeat):
            cpu = {}
            for n in (small, large):
                ocr_done_book(tmp / "books", f"oh{i}-{n}", n)
                _, cpu[n] = run_process(f"oh{i}-{n}", tmp / "books", server, tmp / "cache")
            per_page.append((cpu[large] - cpu[small]) / (large - small) * 1e3)
            print(f"  run {i + 1}: ar CPU {cpu[small]:.2f} s for {small} pages, {cpu[large]:.2f} s for "
                  f"{large}: {per_page[-1]:.2f} ms a page (whole run: {cpu[large] / large * 1e3:.2f} ms a page)")
        # the least: another process on the machine only ever adds CPU time, never takes it away
        return min(per_page)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-tokens", type=int, default=3,
                        help="tokens per streamed chunk (the local server's --chunk-tokens); 0: 4 chunks an answer")
    parser.add_argument("--stream-ms", type=float, default=0, help="the local server's time between two chunks")
    parser.add_argument("--skip-throughput", action="store_true", help="part (b) only")
    args = parser.parse_args()
    stream = ("--chunk-tokens", str(args.chunk_tokens), "--stream-ms", str(args.stream_ms))
    ratio = to_bare = float("nan")
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as d:
        tmp = Path(d)
        print(f"server: {' '.join(stream)}")
        if not args.skip_throughput:
            print(f"(a) throughput, L = {LATENCY_S * 1000:.0f} ms, --workers {WORKERS}")
            ratio, to_bare = throughput(tmp, args.pages, args.repeat, stream)
        print("(b) ar's CPU per page at L = 0")
        cpu_ms = overhead(tmp, 100, args.pages, args.repeat, stream)
    print(f"throughput: {ratio:.3f} of C/L = {WORKERS / LATENCY_S:.0f} pages/s (goal >= 0.9), "
          f"{to_bare:.3f} of a bare httpx client; "
          f"ar CPU per page at L = 0: {cpu_ms:.2f} ms (goal <= 2)")


if __name__ == "__main__":
    main()
