"""Where the OCR of a page runs: in this process's event loop (tesseract processes on this
machine's cores, the default), or with AR_EXECUTOR=ray as Ray tasks, one core each, on every
node of a Ray cluster (RAY_ADDRESS; without it a Ray that ar starts for the run and stops at its end).

Book files sit on storage that every node sees at the same path: a task gets the page image's
path and returns the page's OCR as a dict; the driver writes it and marks it done in the
ledger, as for a local page. A task may run twice (Ray retries, a node's zombie worker): the
ledger's claims and epochs (infra/pg_ledger.py) decide which result counts, never Ray.
Ray is imported only with AR_EXECUTOR=ray: it is the `fleet` extra.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import secrets
import socket
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path

from infra.errors import FatalLLMError, MissingExtra, StopRun, UsageError
from infra.logs import log_event
from pipeline.ray_reaper import Reaper

ROOT = Path(__file__).resolve().parents[1]
PageWork = Callable[..., Awaitable[dict]]


def executor_name() -> str:
    name = os.environ.get("AR_EXECUTOR") or "local"
    if name not in ("local", "ray"):
        raise UsageError(f"AR_EXECUTOR={name!r}: use 'local' (the default) or 'ray'")
    return name


RAY_REACH_S = 5.0  # a cluster's head that takes no connection in this long is out of reach


def check_executor() -> None:
    """The executor's refusals that need no work, made before any book's run opens (no run on
    record): an unknown AR_EXECUTOR, and with Ray a RAY_ADDRESS that ar cannot use. Ray waits
    minutes for a head that does not answer; here a host:port (the head's GCS) or
    ray://host:port (Ray Client's server) that takes no TCP connection within RAY_REACH_S is
    said at once. "auto" and "local" are Ray's to resolve."""
    if executor_name() != "ray":
        return
    _ray_installed()
    address = os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return
    scheme, _, where = address.rpartition("://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        if scheme:
            return  # another kind of address: Ray says what it makes of it
        reason = "not an address Ray takes (host:port, ray://host:port, auto or local)"
    else:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_REACH_S).close()
            return
        except OSError as e:
            reason = f"no connection to {host}:{port} ({e.strerror or e})"
    raise StopRun(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {reason}")


def _ray_installed() -> None:
    """Ray is the `fleet` extra: without it AR_EXECUTOR=ray is a one-line usage error. Not
    imported here: connect_ray sets what Ray reads when it is imported."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except ImportError:
        found = False
    if not found:
        raise MissingExtra("AR_EXECUTOR=ray", "ray")


def page_runner(local: PageWork) -> PageWork:
    """How a page's CPU-bound work `local` is run: as it is, here; or as a Ray task of one
    core. `local` must be a module's function (a task names it, and a node imports it). How
    many pages at a time: OcrSlots."""
    if executor_name() == "local":
        return local
    task = connect_ray().remote(num_cpus=1, max_retries=3)(_run_task)

    async def run(*args):
        return await task.remote(local, *args)

    return run


def _run_task(work: PageWork, *args):
    """A Ray task: one page's work, on the node that runs it."""
    return asyncio.run(work(*args))


class OcrSlots:
    """The run's one bound on OCR pages in flight, whichever book they are of: here one per
    core of this machine; with Ray one per CPU of the cluster (what Ray schedules, not this
    machine's cores), never all of a book at once. `--workers` bounds the pages running at
    once in both. Counted when the first OCR stage asks: a run without OCR never connects to
    Ray for it; a node that joins later is not counted.

    Not more with Ray: a task beyond the free CPUs waits for a lease, and when the driver's
    node has no CPU (a head started with --num-cpus=0) Ray bounces that request between the
    head's raylet, the driver and a busy node, which rejects it, many times a second: two
    tasks per CPU cost 0.05 core-second more a page on the bench's cluster (a raylet answered
    1,519 lease requests for 22 pages instead of 10), on the cores the pages share."""

    def __init__(self, workers: int):
        self.workers = workers
        self._slots: asyncio.Semaphore | None = None

    @property
    def size(self) -> int:
        self._semaphore()
        return self._size

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:
            if executor_name() == "local":
                cpus = os.cpu_count() or 1
            else:
                cpus = int(connect_ray().cluster_resources().get("CPU", 0))
            self._size = max(1, min(self.workers, cpus))
            self._slots = asyncio.Semaphore(self._size)
        return self._slots

    async def __aenter__(self) -> None:
        await self._semaphore().acquire()

    async def __aexit__(self, *exc) -> None:
        self._slots.release()


_own_ray = None  # the Reaper of a local Ray that connect_ray started, for this process's run

# Ray's settings for a Ray that ar starts, and for a cluster's head (`ray start --head
# --system-config`, README): its own observability, which nothing of ar reads, off. Each
# event of a raylet's loop timed (event_stats) and metrics gathered for a dashboard cost 0.005
# core-second a page on the bench's cluster, on the cores the pages share (BENCHMARKS.md).
# Nothing here touches how Ray finds a dead node or a dead worker.
RAY_SYSTEM_CONFIG = {"event_stats": False, "enable_metrics_collection": False}


def connect_ray():
    """Ray, connected once per process: to RAY_ADDRESS's cluster (its auth settings are the
    environment's: RAY_AUTH_MODE, RAY_AUTH_TOKEN ...), else a Ray of this run's own, started
    here: listening on 127.0.0.1 only (Ray rewrites 127.0.0.1 to the host's address unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), token auth with a token made for this run and kept
    in its processes' environment (nothing written under $HOME, no other user of this machine
    can reach it), no dashboard, RAY_SYSTEM_CONFIG; stop_own_ray ends it, and a reaper (pipeline/ray_reaper.py)
    if this process dies first. The workers import this checkout of ar (PYTHONPATH); nothing
    secret goes in the runtime_env, which Ray stores and shows."""
    global _own_ray
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return sys.modules["ray"]
    check_executor()  # a head that does not answer: said at once, not after Ray's minutes
    address = os.environ.get("RAY_ADDRESS") or None
    code = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if address is None:  # before Ray is imported: it reads them then, and its processes inherit them
        token = secrets.token_hex(32)
        _own_ray = Reaper(f"RAY_AUTH_TOKEN={token}")  # the token marks every process of this Ray
        os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                           "RAY_AUTH_TOKEN": token, **code})
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    import ray

    try:  # "local": a Ray of our own, never the last one `ray start` (or a test's cluster) left on this machine
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _temp_dir=_own_ray.folder if address is None else None,  # its reaper's to remove
                 # a local Ray's workers have it from the environment: the ones Ray starts ahead serve at once
                 runtime_env={"env_vars": code} if address else None,
                 _system_config=RAY_SYSTEM_CONFIG if address is None else None)
    except Exception as e:  # Ray's own errors have no common base; say it in one line
        stop_own_ray()  # what it started of a Ray of our own
        where = f"reach the Ray cluster at RAY_ADDRESS={address}" if address else "start Ray on this machine"
        reason = next((line for line in reversed(str(e).strip().splitlines()) if line.strip()), type(e).__name__)
        raise StopRun(f"cannot {where}: {reason.strip()}") from None
    return ray


def stop_own_ray() -> None:
    """At the end of a run: the local Ray that connect_ray started is shut down, every process
    of it (the reaper takes what ray.shutdown() leaves); a cluster's (RAY_ADDRESS) goes on."""
    global _own_ray
    if _own_ray is not None:
        import ray

        ray.shutdown()
        _own_ray.close()
        _own_ray = None


# ---- LLM pages in detached actors ------------------------------------------------------

LLM_ACTORS = 2  # async actors, each with its own LLMClient and connection pool
ACTOR_IDLE_S = float(os.environ.get("AR_ACTOR_IDLE_S", "60"))
# The books whose ledgers an actor keeps open at once: as many as a run keeps open (pipeline/process.py)
ACTOR_BOOKS = int(os.environ.get("AR_ACTOR_BOOKS", "16"))


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
    flight still finish and are recorded (on a cluster: a Ray of the run's own dies with it); it exits after ACTOR_IDLE_S without work."""

    def __init__(self, client, workers: int):
        self._client = client
        ray = connect_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = ray.remote(LLMActor)
        endpoint = hashlib.sha1(client.base_url.encode()).hexdigest()[:8]  # the actors of one endpoint
        # on the driver's node (they need no CPU): an OCR node lost takes no call with it. Not soft:
        # Ray 2.60 spilled soft ones to other nodes while the driver's was starting workers
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._actors = [actor.options(name=f"ar-llm-{endpoint}-{i}", get_if_exists=True, namespace="ar",
                                      lifetime="detached", num_cpus=0, max_concurrency=max(1, workers),
                                      scheduling_strategy=here)
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
            result, records = await actor.call.remote(recorder.ledger.book, where, model, messages, schema, max_tokens)
        except ray.exceptions.RayTaskError as e:  # the call's own error (a page failed, a stop)
            if isinstance(e, ray.exceptions.ActorDiedError) or e.cause is None:
                raise StopRun(f"an LLM actor died: {str(e.cause or e).strip().splitlines()[-1]}") from None
            _log_again(getattr(e.cause, "log_records", ()))
            raise e.cause from None
        except ray.exceptions.RayActorError as e:
            if e.actor_init_failed:  # its start raised (a node's bad setting): the error is the message's last line
                raise StopRun(f"an LLM actor could not start: {str(e).strip().splitlines()[-1]}") from None
            raise StopRun(f"an LLM actor died: {str(e).strip().splitlines()[0]}") from None
        except ray.exceptions.RayError as e:  # its node or the cluster is gone
            raise StopRun(f"an LLM actor died: {str(e).strip().splitlines()[0]}") from None
        _log_again(records)
        if recorder.on_cost is not None:
            recorder.on_cost(result.cost)
        return result


# What one call logs in an actor (its attempts), kept to be logged again by the driver, in
# its book's run log: the actor's process has no run log of its own.
_CALL_RECORDS: ContextVar[list[dict] | None] = ContextVar("ar_call_records", default=None)


class _KeptForTheDriver(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        kept = _CALL_RECORDS.get()
        if kept is not None:
            kept.append({"logger": record.name, "level": record.levelno, "msg": record.getMessage(),
                         "fields": getattr(record, "fields", {})})


def _log_again(records) -> None:
    for r in records:
        log_event(logging.getLogger(r["logger"]), r["msg"], r["level"], **r["fields"])


class LLMActor:
    """A detached async actor: an LLMClient whose key is read from its node's environment
    (OPENROUTER_API_KEY: never a task's argument, nor the runtime_env, which Ray stores and
    shows), and the fleet's ledger (AR_LEDGER, from the node's environment as well): a writer
    for each book it serves, at most ACTOR_BOOKS of them open (BookLedgers)."""

    def __init__(self, base_url: str):
        from infra.budget import LedgerBudget
        from infra.config import load_settings
        from infra.llm_client import LLMClient
        from infra.pg_ledger import PgLedger
        from infra.pricing import PricingCache

        settings = load_settings()
        self.in_flight = 0
        self.last_call = time.monotonic()
        self._idle = asyncio.get_event_loop().create_task(self._exit_when_idle())
        logging.getLogger("ar").addHandler(_KeptForTheDriver(logging.INFO))
        logging.getLogger("ar").setLevel(logging.INFO)
        # a node started without them (`ray start` before they were set): each call says so, and the run stops
        missing = [name for name, value in (("AR_LEDGER", os.environ.get("AR_LEDGER")),
                                            ("OPENROUTER_API_KEY", settings.api_key)) if not value]
        self.unusable = (f"{' and '.join(missing)} not set on the Ray node {socket.gethostname()}: every node "
                         "needs OPENROUTER_API_KEY and AR_LEDGER in its environment before `ray start`"
                         ) if missing else None
        if missing:
            return
        self.client = LLMClient(base_url, settings.api_key, PricingCache(base_url), timeout=settings.timeout_s,
                                max_retries=settings.max_retries, concurrency=64,
                                requests_per_minute=settings.requests_per_minute, max_price=settings.max_price)
        self.client.budget = LedgerBudget()  # every call admitted by the ledger, against every budget
        url = os.environ["AR_LEDGER"]
        self.ledgers = BookLedgers(lambda book: PgLedger.open_writer(url, book), ACTOR_BOOKS)

    async def call(self, book: str, where, model: str, messages: list[dict], schema, max_tokens: int):
        if self.unusable:
            raise FatalLLMError(self.unusable)
        recorder_class, run_id, stage, page = where
        recorder = self.ledgers.recorder(book, lambda ledger: recorder_class(ledger, run_id, stage, page))
        self.in_flight += 1
        records: list[dict] = []
        _CALL_RECORDS.set(records)  # this call's task's own context, and the tasks it starts
        try:
            return await self.client.call(model, messages, recorder, schema=schema, max_tokens=max_tokens), records
        except BaseException as e:
            e.log_records = records  # the driver logs them too (an exception's attributes travel with it)
            raise
        finally:
            self.ledgers.release(book)
            self.in_flight -= 1
            self.last_call = time.monotonic()

    async def _exit_when_idle(self) -> None:
        import ray

        while self.in_flight or time.monotonic() - self.last_call < ACTOR_IDLE_S:
            await asyncio.sleep(1)
        if not self.unusable:
            await self.client.drain()
            self.ledgers.close()
        ray.actor.exit_actor()


class BookLedgers:
    """An actor's writers, one per book it serves, each a holder with a lease (a thread that
    renews it, and two connections): at most `most` of them open, so that an actor serving a
    whole library holds no more than a run's window of books. Another book's ledger is opened
    after the least recently used one is closed, never one in use: a call in flight for its
    book, or an attempt of one still to settle (cut mid-answer, it is settled from the
    provider's record after its call returned). Closing ends the holder's lease, which lets a
    sweeper settle the holder's pending calls: so none may be in flight then. A closed book's
    ledger is opened again, as a new holder, when a call for it comes."""

    def __init__(self, open_writer: Callable[[str], object], most: int):
        self._open_writer, self.most = open_writer, max(1, most)
        self._open: OrderedDict[str, object] = OrderedDict()  # least recently used first
        self._uses: Counter[str] = Counter()

    def take(self, book: str):
        """The book's ledger, in use until `release(book)`. One whose lease lapsed (the ledger
        out of reach too long, the actor stopped) refuses every call: unless in use, it is
        closed and the book opened again, as a new holder (the next run's calls reach the
        same detached actors)."""
        if book in self._open and not self._uses[book] and self._open[book].lease_lapsed():
            del self._uses[book]
            self._open.pop(book).close()
        if book not in self._open:
            self._close_idle(keep=self.most - 1)
            self._open[book] = self._open_writer(book)
        self._open.move_to_end(book)
        self._uses[book] += 1
        return self._open[book]

    def release(self, book: str) -> None:
        self._uses[book] -= 1
        self._close_idle(keep=self.most)

    def recorder(self, book: str, make: Callable[[object], object]) -> _Attempts:
        """A call's recorder (`make(ledger)`), its book's ledger taken for the call (release it
        after) and for each of its attempts until that is settled."""
        return _Attempts(make(self.take(book)), self, book)

    def _close_idle(self, keep: int) -> None:
        idle = [book for book in self._open if not self._uses[book]]
        for book in idle[:max(0, len(self._open) - keep)]:
            del self._uses[book]
            self._open.pop(book).close()

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


class _Attempts:
    """A call's recorder (its inner one's, and so its ledger's) whose attempts each hold their
    book's ledger open from the moment it is recorded pending until it is settled."""

    def __init__(self, inner, ledgers: BookLedgers, book: str):
        self.inner, self._ledgers, self._book = inner, ledgers, book
        self._unsettled: set[int] = set()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def begin(self, model: str, attempt: int, reserve_usd: float = 0.0) -> int:
        handle = self.inner.begin(model, attempt, reserve_usd)
        self._ledgers.take(self._book)
        self._unsettled.add(handle)
        return handle

    def finish(self, handle: int, *result) -> float:
        try:
            return self.inner.finish(handle, *result)
        finally:
            self._settled(handle)

    def unresolved(self, handle: int) -> None:
        """It stays pending, for a sweeper to settle once this holder's lease has ended."""
        self.inner.unresolved(handle)
        self._settled(handle)

    def _settled(self, handle: int) -> None:
        if handle in self._unsettled:
            self._unsettled.discard(handle)
            self._ledgers.release(self._book)
