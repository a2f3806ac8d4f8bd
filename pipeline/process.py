"""`ar.py process BOOK [BOOK ...]`: one run of the books' pipelines, each under its writer lock.

The run is opened in the ledger first and closed however it ends (done, failed,
interrupted, budget); a SIGKILL leaves it 'running', and the next run marks it crashed.
First Ctrl-C or SIGTERM: stop dispatching, let in-flight pages finish, exit 130.
Second: close the run and exit at once (the ledger is consistent after every commit).
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import sys
from contextlib import ExitStack, nullcontext

from infra.books import PREVIOUS, READING_FILES, Book
from infra.checkpoint import Ledger
from infra.ledgers import ledger_errors, open_ledger, writer_lock
from infra.errors import ArError, LedgerError, exit_code
from infra.logs import close_run_log, log_event, open_run_log
from infra.storage import atomic_write_json
from pipeline.executor import OcrSlots, stop_own_ray
from pipeline.registry import STAGES, Registry, StageSpec
from pipeline.reports import cost_report
from pipeline.runner import RESUME, Outcome, Pipeline
from pipeline.stage import RunContext

try:  # libuv's event loop: a tenth to a third less CPU per LLM call than asyncio's own (bench/throughput.py)
    from uvloop import run as run_loop
except ImportError:  # no uvloop on Windows
    from asyncio import run as run_loop

log = logging.getLogger("ar.process")


def clean_stage(book: Book, ledger: Ledger, stage: str, registry: Registry = STAGES) -> int:
    """Remove the outputs and page status of `stage` and of every stage made from it;
    every recorded cost stays. The book's reading files (book.md, .txt, .epub) are put aside
    in previous/, not deleted: the old book stays readable until the next merge. Returns the
    files removed from their place."""
    removed = 0
    for spec in registry.downstream(stage):
        for f in spec.outputs(book):
            if f.parent == book.root and f.name in READING_FILES:
                (book.root / PREVIOUS).mkdir(exist_ok=True)
                f.replace(book.root / PREVIOUS / f.name)
            else:
                f.unlink()
            removed += 1
        ledger.clear_stage(spec.name)
    return removed


def write_cost_report(book: Book) -> None:
    """cost_report.json after every run, however it ended: what the book cost so far."""
    try:
        atomic_write_json(book.root / "cost_report.json", cost_report(book))
    except OSError as e:
        log.warning("cannot write %s: %s", book.root / "cost_report.json", e.strerror or e)


def process_book(book: Book, stages: list[StageSpec], workers: int, **kwargs) -> Outcome:
    """One book: `process_books` of it alone; an error stopping it is raised."""
    return process_books([book], stages, workers, **kwargs)[book.id]


def process_books(
    books: list[Book],
    stages: list[StageSpec],
    workers: int,
    registry: Registry = STAGES,
    options: dict | None = None,
    models: dict[str, str] | None = None,
    fresh: bool = False,
    progress=None,
    before_run=None,
    after_runs=None,
) -> dict[str, Outcome]:
    """Run the selected `stages` of `registry` on each of `books`, in one run on one event
    loop: their pages interleave, sharing the LLM client and the OCR processes (`before_run`
    sets them up). Each book keeps its own writer lock, ledger, run and outcome. `models`: the
    model of each LLM stage.

    `progress` (a context manager with `update(stage)`) is shown once the locks are ours, so a
    refused second writer prints nothing but its error.
    `before_run(ctx)` runs first, inside each book's run (e.g. to resolve calls a crash left
    pending); `after_runs(ctxs)`, once every book has stopped (e.g. to close the shared client).
    With one book, an error that stops it is raised (the CLI prints it); with several, it is
    that book's outcome, and the others go on.
    """
    with ExitStack() as stack:
        for book in books:
            stack.enter_context(writer_lock(book))
        stack.enter_context(progress or nullcontext())
        stack.callback(stop_own_ray)  # a Ray that ar started for the run ends with it
        on_progress = progress.update if progress is not None else None
        runs = [_BookRun(book) for book in books]
        held = _hold_stop_signals()  # until the runs are on record and their closing assured
        try:
            for run in runs:
                run.open([s.name for s in stages])
            _release(held)  # a stop from here on is the interrupt of runs on record
            ocr_slots = OcrSlots(workers)  # one OCR pool: this machine's cores, or the Ray cluster's
            contexts = [RunContext(book=r.book, ledger=r.ledger, run_id=r.run_id, registry=registry, workers=workers,
                                   options=options or {}, models=models or {}, books_in_run=len(runs),
                                   ocr_slots=ocr_slots) for r in runs]
            outcomes = run_loop(_run_all(contexts, stages, on_progress, before_run, after_runs, fresh))
            for run, outcome in zip(runs, outcomes):
                run.outcome = outcome
        except ArError as e:
            _ended(runs, Outcome(status=getattr(e, "status", "failed"), message=str(e)))
            raise
        except ledger_errors() as e:  # a record the ledger refused (a full disk): say which file
            message = "cannot write " + ", ".join(str(r.book.ledger_path) for r in runs) + f": {e}"
            _ended(runs, Outcome(status="failed", message=message))
            raise LedgerError(message) from None
        except KeyboardInterrupt:  # before the run's signal handlers were set, or after
            _ended(runs, Outcome(status="interrupted", message=RESUME))
            raise
        except BaseException as e:
            _ended(runs, Outcome(status="failed", message=f"{type(e).__name__}: {e}"))
            raise
        finally:
            _hold_stop_signals()  # a stop now waits until the runs are closed, then takes effect
            # the event loop, closing, left SIGTERM's default (death): it is Ctrl-C again
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                for run in runs:
                    run.close()
            finally:
                _release(held)
    for run in runs:
        run.outcome.run_id = run.run_id
    return {run.book.id: run.outcome for run in runs}


class _BookRun:
    """One book's part of a run: its ledger, its run on record, its log, its outcome."""

    def __init__(self, book: Book):
        self.book = book
        self.ledger: Ledger | None = None
        self.run_id: int | None = None
        self.handler = None
        self.outcome: Outcome | None = None

    def open(self, stages: list[str]) -> None:
        self.ledger = open_ledger(self.book)
        try:
            self.run_id = self.ledger.start_run(os.getpid(), shlex.join(["ar.py", *sys.argv[1:]]))
        except self.ledger.write_errors as e:  # a full disk: not even the run's first record fits
            raise LedgerError(f"cannot write {self.book.ledger_path}: {e}") from None
        self.handler = open_run_log(self.book.logs_dir, self.run_id, self.book.id)
        log_event(log, "run started", run_id=self.run_id, book=self.book.id, stages=stages)

    def close(self) -> None:
        if self.ledger is not None:
            _close_run(self.book, self.ledger, self.run_id, self.outcome or Outcome(status="failed"), self.handler)


def _ended(runs: list[_BookRun], outcome: Outcome) -> None:
    """How the runs that have none yet ended."""
    for run in runs:
        run.outcome = run.outcome or outcome


def _close_run(book: Book, ledger: Ledger, run_id: int | None, outcome: Outcome, handler) -> None:
    if run_id is not None:
        try:
            ledger.end_run(run_id, "idle" if outcome.idle else outcome.status, outcome.message or None)
        except ledger.write_errors as e:  # the full disk that stopped the run: its reason is the error to show
            log.warning("cannot close run %d in %s (%s): the next run marks it crashed", run_id, book.ledger_path, e)
        log_event(log, "run ended", run_id=run_id, status=outcome.status,
                  message=outcome.message, total_cost_usd=ledger.total_cost())
        write_cost_report(book)
    if handler is not None:
        try:
            close_run_log(handler)
        except OSError as e:  # its last lines did not fit on a full disk: the run's records say how it ended
            log.warning("cannot close the run log in %s: %s", book.logs_dir, e.strerror or e)
    ledger.close()


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _hold_stop_signals() -> set:
    """Hold Ctrl-C and SIGTERM back (they wait, pending) where one would leave a run open in
    the ledger; returns the mask to restore."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _release(mask: set) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


async def _run_all(contexts: list[RunContext], stages: list[StageSpec], on_progress, before_run, after_runs,
                   fresh: bool) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    signalled: list[int] = []

    def on_signal(signum: int) -> None:
        if signalled:  # the second one: leave now, the ledgers are consistent
            for ctx in contexts:
                ctx.ledger.end_run(ctx.run_id, "interrupted", "stopped at once by a second signal")
            os._exit(exit_code("interrupted"))
        signalled.append(signum)
        for ctx in contexts:
            ctx.stopping.set()
        print(f"\nar: {signal.Signals(signum).name}: finishing the pages in flight "
              "(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        if len(contexts) == 1:
            return [await _run(contexts[0], stages, on_progress, before_run, fresh)]
        return list(await asyncio.gather(*(_run_one_of_many(ctx, stages, on_progress, before_run, fresh)
                                           for ctx in contexts)))
    finally:
        if after_runs is not None:
            await after_runs(contexts)
        _hold_stop_signals()  # from here until the runs are closed (process_books releases them)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run_one_of_many(ctx: RunContext, stages: list[StageSpec], on_progress, before_run, fresh: bool) -> Outcome:
    """A book's run among others: what stops it is its outcome, not the others'."""
    try:
        return await _run(ctx, stages, on_progress, before_run, fresh)
    except ArError as e:
        return Outcome(status=getattr(e, "status", "failed"), message=str(e))
    except ctx.ledger.write_errors as e:
        return Outcome(status="failed", message=f"cannot write {ctx.book.ledger_path}: {e}")


async def _run(ctx: RunContext, stages: list[StageSpec], on_progress, before_run, fresh: bool) -> Outcome:
    if before_run is not None:
        await before_run(ctx)
    if fresh:  # only once the run can go on (key, prices, pending calls settled): nothing lost for naught
        for spec in stages:
            clean_stage(ctx.book, ctx.ledger, spec.name, ctx.registry)
    pages = list(range(1, ctx.book.page_count() + 1))
    pipeline = Pipeline(ctx, [spec.load()(ctx, spec) for spec in stages], pages, on_progress)
    return await pipeline.run()
