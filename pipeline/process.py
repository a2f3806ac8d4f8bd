"""`ar.py process BOOK`: one run of a book's pipeline, under the book's writer lock.

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
from contextlib import nullcontext

from infra.books import PREVIOUS, READING_FILES, Book
from infra.checkpoint import Ledger
from infra.ledgers import open_ledger, writer_lock
from infra.errors import ArError, LedgerError, exit_code
from infra.logs import close_run_log, log_event, open_run_log
from infra.storage import atomic_write_json
from pipeline.llm_stage import close_llm
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


def process_book(
    book: Book,
    stages: list[StageSpec],
    workers: int,
    registry: Registry = STAGES,
    options: dict | None = None,
    models: dict[str, str] | None = None,
    fresh: bool = False,
    progress=None,
    before_run=None,
) -> Outcome:
    """Run the selected `stages` of `registry` on `book`; returns the outcome. `models`:
    the model of each LLM stage.

    `progress` (a context manager with `update(stage)`) is shown once the lock is ours, so a
    refused second writer prints nothing but its error.
    `before_run(ctx)` runs first, inside the run (e.g. to resolve calls a crash left pending).
    """
    with writer_lock(book), (progress or nullcontext()):
        on_progress = progress.update if progress is not None else None
        ledger = open_ledger(book)
        run_id = handler = None
        outcome = Outcome(status="failed")
        held = _hold_stop_signals()  # until the run is on record and its closing assured
        try:
            try:
                run_id = ledger.start_run(os.getpid(), shlex.join(["ar.py", *sys.argv[1:]]))
            except ledger.write_errors as e:  # a full disk: not even the run's first record fits
                raise LedgerError(f"cannot write {book.ledger_path}: {e}") from None
            handler = open_run_log(book.logs_dir, run_id)
            log_event(log, "run started", run_id=run_id, book=book.id, stages=[s.name for s in stages])
            _release(held)  # a stop from here on is the interrupt of a run on record
            ctx = RunContext(book=book, ledger=ledger, run_id=run_id, registry=registry, workers=workers,
                             options=options or {}, models=models or {})
            outcome = run_loop(_run(ctx, stages, on_progress, before_run, fresh))
        except ArError as e:
            outcome = Outcome(status=getattr(e, "status", "failed"), message=str(e))
            raise
        except ledger.write_errors as e:  # a record the ledger refused (a full disk): say which file
            outcome = Outcome(status="failed", message=f"cannot write {book.ledger_path}: {e}")
            raise LedgerError(outcome.message) from None
        except KeyboardInterrupt:  # before the run's signal handlers were set, or after
            outcome = Outcome(status="interrupted", message=RESUME)
            raise
        except BaseException as e:
            outcome = Outcome(status="failed", message=f"{type(e).__name__}: {e}")
            raise
        finally:
            _hold_stop_signals()  # a stop now waits until the run is closed, then takes effect
            # the event loop, closing, left SIGTERM's default (death): it is Ctrl-C again
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                _close_run(book, ledger, run_id, outcome, handler)
            finally:
                _release(held)
    outcome.run_id = run_id
    return outcome


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
        close_run_log(handler)
    ledger.close()


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _hold_stop_signals() -> set:
    """Hold Ctrl-C and SIGTERM back (they wait, pending) where one would leave a run open in
    the ledger; returns the mask to restore."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _release(mask: set) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


async def _run(ctx: RunContext, stages: list[StageSpec], on_progress, before_run, fresh: bool) -> Outcome:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if ctx.stopping.is_set():  # the second one: leave now, the ledger is consistent
            ctx.ledger.end_run(ctx.run_id, "interrupted", "stopped at once by a second signal")
            os._exit(exit_code("interrupted"))
        ctx.stopping.set()
        print(f"\nar: {signal.Signals(signum).name}: finishing the pages in flight "
              "(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        if before_run is not None:
            await before_run(ctx)
        if fresh:  # only once the run can go on (key, prices, pending calls settled): nothing lost for naught
            for spec in stages:
                clean_stage(ctx.book, ctx.ledger, spec.name, ctx.registry)
        pages = list(range(1, ctx.book.page_count() + 1))
        pipeline = Pipeline(ctx, [spec.load()(ctx, spec) for spec in stages], pages, on_progress)
        return await pipeline.run()
    finally:
        if ctx.llm is not None:
            await close_llm(ctx)
        _hold_stop_signals()  # from here until the run is closed (process_book releases them)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
