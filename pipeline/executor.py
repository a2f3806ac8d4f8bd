"""Where the OCR of a page runs: in this process's event loop (tesseract processes on this
machine's cores, the default), or with AR_EXECUTOR=ray as Ray tasks, one core each, on every
node of a Ray cluster (RAY_ADDRESS; without it a local Ray that ar starts itself).

Book files sit on storage that every node sees at the same path: a task gets the page image's
path and returns the page's OCR as a dict; the driver writes it and marks it done in the
ledger, as for a local page. A task may run twice (Ray retries, a node's zombie worker): the
ledger's claims and epochs (infra/pg_ledger.py) decide which result counts, never Ray.
Ray is imported only with AR_EXECUTOR=ray: it is the `fleet` extra.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from infra.errors import StopRun, UsageError

ROOT = Path(__file__).resolve().parents[1]
PageWork = Callable[..., Awaitable[dict]]


def executor_name() -> str:
    name = os.environ.get("AR_EXECUTOR") or "local"
    if name not in ("local", "ray"):
        raise UsageError(f"AR_EXECUTOR={name!r}: use 'local' (the default) or 'ray'")
    return name


def page_runner(local: PageWork, workers: int) -> tuple[PageWork, int]:
    """(how a page's CPU-bound work `local` is run, how many pages at a time): as it is, one
    page per core of this machine; or as a Ray task of one core, one page per core of the
    cluster. `local` must be a module's function (a task names it, and a node imports it)."""
    if executor_name() == "local":
        return local, max(1, min(workers, os.cpu_count() or 1))
    ray = connect_ray()
    cores = int(ray.cluster_resources().get("CPU", 1))
    task = ray.remote(num_cpus=1, max_retries=3)(_run_task)

    async def run(*args):
        return await task.remote(local, *args)

    return run, max(1, min(workers, cores))


def _run_task(work: PageWork, *args):
    """A Ray task: one page's work, on the node that runs it."""
    return asyncio.run(work(*args))


def connect_ray():
    """Ray, connected once per process: to RAY_ADDRESS's cluster, else a local Ray started
    here on loopback (127.0.0.1 kept as it is, no token: it listens on this machine only).
    The workers import this checkout of ar (PYTHONPATH); nothing secret goes in the
    runtime_env, which Ray stores and shows."""
    if "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    return ray


# ---- LLM pages in detached actors ------------------------------------------------------

LLM_ACTORS = 2  # async actors, each with its own LLMClient and connection pool
ACTOR_IDLE_S = float(os.environ.get("AR_ACTOR_IDLE_S", "60"))


def llm_runner(client, workers: int):
    """What the LLM stages call: the run's client, or with AR_EXECUTOR=ray a front for
    detached Ray actors that make the calls (RayLLM)."""
    if executor_name() == "local":
        return client
    if not os.environ.get("AR_LEDGER"):
        raise UsageError("AR_EXECUTOR=ray records its calls in the fleet's ledger: set AR_LEDGER too")
    return RayLLM(client, workers)


class RayLLM:
    """The run's LLMClient (prices, pending calls, the key's usage), except that each call is
    made by one of LLM_ACTORS detached actors. An actor records its calls in the ledger itself,
    as a writer of its own (its lease, its holder): when the driver dies, the calls it has in
    flight still finish and are recorded; it exits after ACTOR_IDLE_S without work."""

    def __init__(self, client, workers: int):
        self._client = client
        ray = connect_ray()
        actor = ray.remote(LLMActor)
        endpoint = hashlib.sha1(client.base_url.encode()).hexdigest()[:8]  # the actors of one endpoint
        self._actors = [actor.options(name=f"ar-llm-{endpoint}-{i}", get_if_exists=True, namespace="ar",
                                      lifetime="detached", num_cpus=0, max_concurrency=max(1, workers))
                        .remote(client.base_url) for i in range(LLM_ACTORS)]
        self._next = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    async def call(self, model: str, messages: list[dict], recorder, schema=None, max_tokens: int = 4096):
        import ray

        actor = self._actors[self._next % len(self._actors)]
        self._next += 1
        where = (type(recorder), recorder.run_id, recorder.stage, recorder.page)
        try:
            result = await actor.call.remote(recorder.ledger.book, where, model, messages, schema, max_tokens)
        except ray.exceptions.RayTaskError as e:  # the call's own error (a page failed, a stop)
            if isinstance(e, ray.exceptions.ActorDiedError) or e.cause is None:
                raise StopRun(f"an LLM actor died: {str(e.cause or e).strip().splitlines()[-1]}") from None
            raise e.cause from None
        except ray.exceptions.RayError as e:  # the actor, its node or the cluster is gone
            raise StopRun(f"an LLM actor died: {str(e).strip().splitlines()[0]}") from None
        if recorder.on_cost is not None:
            recorder.on_cost(result.cost)
        return result


class LLMActor:
    """A detached async actor: an LLMClient whose key is read from its node's environment
    (OPENROUTER_API_KEY: never a task's argument, nor the runtime_env, which Ray stores and
    shows), and the fleet's ledger (AR_LEDGER, from the node's environment as well)."""

    def __init__(self, base_url: str):
        from infra.budget import LedgerBudget
        from infra.config import load_settings
        from infra.llm_client import LLMClient
        from infra.pricing import PricingCache

        settings = load_settings()
        self.client = LLMClient(base_url, settings.api_key, PricingCache(base_url), timeout=settings.timeout_s,
                                max_retries=settings.max_retries, concurrency=64,
                                requests_per_minute=settings.requests_per_minute, max_price=settings.max_price)
        self.client.budget = LedgerBudget()  # every call admitted by the ledger, against every budget
        self.ledgers: dict[str, object] = {}
        self.in_flight = 0
        self.last_call = time.monotonic()
        self._idle = asyncio.get_event_loop().create_task(self._exit_when_idle())

    def _ledger(self, book: str):
        from infra.pg_ledger import PgLedger

        if book not in self.ledgers:
            self.ledgers[book] = PgLedger.open_writer(os.environ["AR_LEDGER"], book)
        return self.ledgers[book]

    async def call(self, book: str, where, model: str, messages: list[dict], schema, max_tokens: int):
        recorder_class, run_id, stage, page = where
        ledger = self._ledger(book)
        self.in_flight += 1
        try:
            return await self.client.call(model, messages, recorder_class(ledger, run_id, stage, page),
                                          schema=schema, max_tokens=max_tokens)
        finally:
            self.in_flight -= 1
            self.last_call = time.monotonic()

    async def _exit_when_idle(self) -> None:
        import ray

        while self.in_flight or time.monotonic() - self.last_call < ACTOR_IDLE_S:
            await asyncio.sleep(1)
        await self.client.drain()
        for ledger in self.ledgers.values():
            ledger.close()
        ray.actor.exit_actor()

