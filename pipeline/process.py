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
from contextlib import ExitStack

from infra.books import PREVIOUS, READING_FILES, Book
from infra.checkpoint import Ledger
from infra.ledgers import ledger_errors, open_ledger, writer_lock
from infra.errors import ArError, BookLocked, LedgerError, exit_code
from infra.logs import close_run_log, log_as_book, log_event, open_run_log
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


# The most books a run keeps open at once, whatever the library's size: each holds its lock,
# its ledger (3 files with SQLite, 2 connections with PostgreSQL) and its log.
BOOKS_OPEN_AT_ONCE = 16
SKIPPED, NOT_STARTED = "skipped", "not_started"  # a book's outcome when it was not run


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
    after_run=None,
    after_all=None,
    together: bool = False,
) -> dict[str, Outcome]:
    """Run the selected `stages` of `registry` on each of `books`, in one run on one event
    loop: their pages interleave, sharing the LLM client and the OCR processes (`before_run`
    sets them up). Each book keeps its own writer lock, ledger, run and outcome. `models`: the
    model of each LLM stage.

    Books open in a window (`_Window`): a book is opened (its lock taken, its run on record)
    when those open have too little work left to keep the workers busy, or with `together`
    (a library budget, which each book should get a share of) as long as there is room; and
    closed as soon as it is finished; so a run of thousands holds open at most BOOKS_OPEN_AT_ONCE.

    `progress` (a context manager with `update(stage)`) is shown once a lock is ours, so a
    refused second writer prints nothing but its error.
    `before_run(ctx)` runs first, inside each book's run (e.g. to resolve calls a crash left
    pending); `after_run(ctx)` last, before it closes (e.g. to settle its calls cut mid-answer);
    `after_all()` once every book has stopped (e.g. to close the shared client).
    With one book, an error that stops it is raised (the CLI prints it), BookLocked too; with
    several, it is that book's outcome, and the others go on; a book another process holds is
    skipped (its outcome SKIPPED, naming the holder), and the books a stop of the whole run
    (Ctrl-C, the key refused, the library's cap) left unopened are NOT_STARTED.
    """
    window = _Window(books, stages, workers, registry, options or {}, models or {}, fresh, progress,
                     (before_run, after_run, after_all), together)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])  # as it is: restored at the end
    with ExitStack() as stack:
        window.shown = stack
        stack.callback(stop_own_ray)  # a Ray that ar started for the run ends with it
        try:
            run_loop(window.run())
        except ArError as e:
            window.ended(Outcome(status=getattr(e, "status", "failed"), message=str(e)))
            raise
        except ledger_errors() as e:  # a record the ledger refused (a full disk): say which file
            message = "cannot write " + ", ".join(str(r.book.ledger_path) for r in window.open) + f": {e}"
            window.ended(Outcome(status="failed", message=message))
            raise LedgerError(message) from None
        except KeyboardInterrupt:  # before the run's signal handlers were set, or after
            window.ended(Outcome(status="interrupted", message=RESUME))
            raise
        except BaseException as e:
            window.ended(Outcome(status="failed", message=f"{type(e).__name__}: {e}"))
            raise
        finally:
            _hold_stop_signals()  # a stop now waits until the runs are closed, then takes effect
            try:
                for run in list(window.open):  # those an error left open
                    run.close()
            finally:
                _release(mask)
    return window.outcomes


class _BookRun:
    """One book's part of a run: its lock, its ledger, its run on record, its log, its outcome."""

    def __init__(self, book: Book):
        self.book = book
        self.lock = writer_lock(book)
        self.ledger: Ledger | None = None
        self.run_id: int | None = None
        self.handler = None
        self.ctx: RunContext | None = None
        self.pipeline: Pipeline | None = None
        self.outcome: Outcome | None = None

    def open(self, stages: list[str]) -> None:
        """Take the book's lock (BookLocked when another process has it), then open its run."""
        self.lock.__enter__()
        try:
            self.ledger = open_ledger(self.book)
            try:
                self.run_id = self.ledger.start_run(os.getpid(), shlex.join(["ar.py", *sys.argv[1:]]))
            except self.ledger.write_errors as e:  # a full disk: not even the run's first record fits
                raise LedgerError(f"cannot write {self.book.ledger_path}: {e}") from None
            self.handler = open_run_log(self.book.logs_dir, self.run_id, self.book.id)
        except BaseException:
            self.close()
            raise
        log_event(log, "run started", run_id=self.run_id, book=self.book.id, stages=stages)

    def close(self) -> None:
        try:
            if self.ledger is not None:
                _close_run(self.book, self.ledger, self.run_id, self.outcome or Outcome(status="failed"),
                           self.handler)
                self.ledger = None
        finally:
            self.lock.__exit__(None, None, None)
        if self.outcome is not None:
            self.outcome.run_id = self.run_id


class _Window:
    """The books of one run, opened when they come into work and closed when finished."""

    def __init__(self, books, stages, workers, registry, options, models, fresh, progress, hooks, together):
        self.books, self.stages, self.workers, self.together = books, stages, workers, together
        self.registry, self.options, self.models, self.fresh = registry, options, models, fresh
        self.progress = progress
        self.before_run, self.after_run, self.after_all = hooks
        self.ocr_slots: OcrSlots | None = None  # the run's one bound on OCR pages in flight
        self.open: list[_BookRun] = []
        self.outcomes: dict[str, Outcome] = {}
        self.shown: ExitStack | None = None  # where the progress display is entered,
        self.unshown = progress  # once a lock is ours
        self.stopping = False  # no new book opens: a signal, a stop of the whole run, an error
        self.signalled = False
        self.changed: asyncio.Event | None = None

    def ended(self, outcome: Outcome) -> None:
        """How the books open, and with no outcome yet, ended (an error escaped the run)."""
        for run in self.open:
            run.outcome = run.outcome or outcome
            self.outcomes[run.book.id] = run.outcome

    def _in_work(self) -> float:
        """Pages queued or in flight in the open books (a book not planned yet: enough)."""
        return sum(self.workers if r.pipeline is None else r.pipeline.in_work for r in self.open)

    def _on_progress(self, stage) -> None:
        if self.progress is not None:
            self.progress.update(stage)
        self.changed.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self.ocr_slots = OcrSlots(self.workers)  # this machine's cores, or the Ray cluster's
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        tasks = []
        try:
            for book in self.books:
                while self.open and not self.stopping and (len(self.open) >= BOOKS_OPEN_AT_ONCE or (
                        not self.together and self._in_work() >= self.workers)):
                    self.changed.clear()
                    await self.changed.wait()
                if self.stopping:
                    self.outcomes[book.id] = Outcome(status=NOT_STARTED, message="the run stopped before it")
                    continue
                run = self._open(book)
                if run is not None:
                    tasks.append(loop.create_task(self._book(run)))
            errors = [e for e in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(e, BaseException)]
            if errors:  # raised once every book has stopped
                raise errors[0]
        finally:
            if self.after_all is not None:
                await self.after_all()
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            _hold_stop_signals()  # from here until the runs are closed (process_books releases them)

    def _open(self, book: Book) -> _BookRun | None:
        """The book's run, opened; None when it is skipped (several books: another process holds it)."""
        run = _BookRun(book)
        try:
            run.open([s.name for s in self.stages])
        except BookLocked as e:
            if len(self.books) == 1:
                raise
            self.outcomes[book.id] = Outcome(status=SKIPPED, message=f"being processed by {e.holder}")
            print(f"ar: skipped {book.id}: being processed by {e.holder}", file=sys.stderr, flush=True)
            return None
        except (ArError, OSError, *ledger_errors()) as e:  # its run cannot be put on record (a full disk): the others go on
            if len(self.books) == 1:
                raise
            self.outcomes[book.id] = Outcome(status="failed", message=str(e))
            return None
        if self.unshown is not None:  # once a lock is ours: a refused writer prints only its error
            self.shown.enter_context(self.unshown)
            self.unshown = None
        self.open.append(run)
        run.ctx = RunContext(book=book, ledger=run.ledger, run_id=run.run_id, registry=self.registry,
                             workers=self.workers, options=self.options, models=self.models,
                             books_in_run=len(self.books), ocr_slots=self.ocr_slots)
        return run

    async def _book(self, run: _BookRun) -> None:
        """One book from its open run to its close; what stops it is its outcome (with several)."""
        log_as_book(run.book.id)  # what this task and those it starts log goes to this book's log alone
        ctx = run.ctx
        try:
            if len(self.books) == 1:
                run.outcome = await self._run(run)
            else:
                run.outcome = await _one_of_many(ctx, self._run(run))
        except ArError as e:
            run.outcome = Outcome(status=getattr(e, "status", "failed"), message=str(e))
            raise
        except ctx.ledger.write_errors as e:
            run.outcome = Outcome(status="failed", message=f"cannot write {ctx.book.ledger_path}: {e}")
            raise LedgerError(run.outcome.message) from None
        except BaseException as e:  # a bug: the other books take no new page
            run.outcome = Outcome(status="failed", message=f"{type(e).__name__}: {e}")
            self._stop_all()
            raise
        finally:
            try:
                if self.after_run is not None:
                    await self.after_run(ctx)
            finally:
                run.close()
                self.outcomes[run.book.id] = run.outcome
                self.open.remove(run)
                if run.outcome.ends_run:
                    self.stopping = True
                self.changed.set()

    async def _run(self, run: _BookRun) -> Outcome:
        ctx = run.ctx
        if self.before_run is not None:
            await self.before_run(ctx)
        if self.fresh:  # only once the run can go on (key, prices, pending calls settled): nothing lost for naught
            for spec in self.stages:
                clean_stage(ctx.book, ctx.ledger, spec.name, ctx.registry)
        pages = list(range(1, ctx.book.page_count() + 1))
        run.pipeline = Pipeline(ctx, [spec.load()(ctx, spec) for spec in self.stages], pages, self._on_progress)
        return await run.pipeline.run()

    def _stop_all(self) -> None:
        self.stopping = True
        for run in self.open:
            run.ctx.stopping.set()
        self.changed.set()

    def _on_signal(self, signum: int) -> None:
        if self.signalled:  # the second one: leave now, the ledgers are consistent
            for run in self.open:
                run.ledger.end_run(run.run_id, "interrupted", "stopped at once by a second signal")
            os._exit(exit_code("interrupted"))
        self.signalled = True
        self._stop_all()
        print(f"\nar: {signal.Signals(signum).name}: finishing the pages in flight "
              "(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)


async def _one_of_many(ctx: RunContext, work) -> Outcome:
    """A book's run among others: what stops it is its outcome, not the others'."""
    try:
        return await work
    except ArError as e:
        return Outcome(status=getattr(e, "status", "failed"), message=str(e), ends_run=getattr(e, "ends_run", False))
    except ctx.ledger.write_errors as e:
        return Outcome(status="failed", message=f"cannot write {ctx.book.ledger_path}: {e}")


def _close_run(book: Book, ledger: Ledger, run_id: int | None, outcome: Outcome, handler) -> None:
    if run_id is not None:
        try:
            ledger.end_run(run_id, "idle" if outcome.idle else outcome.status, outcome.message or None)
        except ledger.write_errors as e:  # the full disk that stopped the run: its reason is the error to show
            log.warning("cannot close run %d in %s (%s): the next run marks it crashed", run_id, book.ledger_path, e)
        log_event(log, "run ended", run_id=run_id, book=book.id, status=outcome.status,
                  message=outcome.message, total_cost_usd=ledger.total_cost())
        write_cost_report(book)
    if handler is not None:
        try:
            close_run_log(handler)
        except OSError as e:  # its last lines did not fit on a full disk: the run's records say how it ended
            log.warning("cannot close the run log in %s: %s", book.logs_dir, e.strerror or e)
    ledger.close()


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


_held: list[int] = []  # the stop signals that came while held


def _hold_stop_signals() -> set:
    """Hold Ctrl-C and SIGTERM back where one would leave a run open in the ledger; returns
    the mask to restore. Blocked in this thread, and noted, not acted on, where they reach
    another (a thread of the run, unblocked, may take a signal sent to the process: with the
    default action SIGTERM would end it there, run open)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: _held.append(signum))
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _release(mask: set) -> None:
    """Both stops are Ctrl-C again, and one held meanwhile takes effect now."""
    held = bool(_held)
    _held.clear()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one pending in this thread is raised here
    if held:
        raise KeyboardInterrupt
