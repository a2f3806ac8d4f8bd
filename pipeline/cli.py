"""The `ar` command line: thin over the ledger, the pipeline and the reports."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path

from infra.books import BOOK_TEXT, PREVIOUS, Library, book_id_from_path, validate_book_id
from infra.budget import apart
from infra.ledgers import check_ledger_place, ledger_errors, ledger_url, open_ledger, open_library, read_ledger
from infra.config import Settings, load_settings
from infra.errors import ArError, BudgetReached, UsageError, exit_code
from infra.lock import WriterLock
from infra.logs import redact, setup_console
from pipeline import render
from pipeline.registry import STAGES
from pipeline.reports import cost_report, library_report, other_models, review_report, run_summary, status_report

log = logging.getLogger("ar")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error."""

    def error(self, message: str):
        self.exit(2, f"ar: error: {message} (see {self.prog} --help)\n")


def _number(text: str) -> float:
    """A float, or NaN (which fails every range check) for what is not a number."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def usd_amount(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive amount of USD, not {text!r}")
    return value


def _refresh_interval(text: str) -> float:
    value = _number(text)
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be seconds between 0.05 and 3600, not {text!r}")
    return value


def _common(json_flag: bool = True) -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    # SUPPRESS: given after the command it counts, absent it leaves the one before the command
    p.add_argument("--books-dir", type=Path, default=argparse.SUPPRESS,
                   help="where books live (default ./books, or $AR_BOOKS_DIR)")
    p.add_argument("--ledger", metavar="URL", default=argparse.SUPPRESS,
                   help="keep every book's ledger in this PostgreSQL database ($AR_LEDGER)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ar.py",
        description="Turn scanned books into clean text with LLMs; resumable, every cent accounted for.",
        epilog="exit codes: 0 done, 1 error, 2 usage, 3 budget reached, 130 interrupted",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    parser.add_argument("--books-dir", type=Path, help="where books live (default ./books, or $AR_BOOKS_DIR)")
    parser.add_argument("--ledger", metavar="URL", help="keep every book's ledger in this PostgreSQL "
                        "database, postgresql://... ($AR_LEDGER; default: each book's checkpoint.db)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("add", parents=[_common()],
                       help="add a book from a PDF or a folder of page images; or many, from a folder of those")
    p.add_argument("path", type=Path, help="a PDF, or a folder of page images (one book); or a folder of PDFs "
                   "and of folders of page images (one book each)")
    p.add_argument("--id", help="the book's id (default: the file or folder name; for many books, each one's)")
    p.add_argument("--lang", help="the OCR's languages, Tesseract codes: fra, eng+fra (default eng); kept with the book")

    p = sub.add_parser("process", parents=[_common()],
                       help="run (or resume) the pipeline of a book, or of several in one run")
    p.add_argument("books", nargs="*", metavar="BOOK", help="the books (several share one LLM client and OCR pool)")
    p.add_argument("--all", action="store_true", help="every book of the library")
    p.add_argument("--library-budget", type=usd_amount, metavar="USD",
                   help="the most the whole library may cost, all books and runs together; kept for later runs "
                   "(in library.db; with AR_LEDGER, in the PostgreSQL ledger)")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES.names)} (default: all)")
    p.add_argument("--workers", type=int, help="pages in flight per stage, and LLM calls in flight "
                   "for all stages together; OCR takes at most one page per core (default 32, $AR_WORKERS)")
    p.add_argument("--fresh", action="store_true", help="discard the outputs of the selected stages and those after them first (costs are kept)")
    p.add_argument("--model", help="model of the correct stage (default google/gemini-2.5-flash, $AR_CORRECT_MODEL)")
    p.add_argument("--fix-model", help="model of the fix stage (default anthropic/claude-sonnet-4.5, $AR_FIX_MODEL)")
    p.add_argument("--lang", help="the OCR's languages from now on (Tesseract codes: fra, eng+fra); kept with the book")
    p.add_argument("--text-layer", choices=("use", "ignore", "auto"), default="auto",
                   help="a PDF page's text layer (source/page_NNNN.txt) instead of OCR: always, never, "
                   "or when it looks like text (default auto)")
    p.add_argument("--vision", action="store_true", help="send the page image with its text to correct too (fix always sends it)")
    p.add_argument("--budget", type=usd_amount, metavar="USD",
                   help="the most the book may cost, all runs together; kept for later runs ($AR_BUDGET_USD)")
    p.add_argument("--dry-run", action="store_true", help="print what the rest will cost, spend nothing")
    p.add_argument("--force", action="store_true", help="start even when the low estimate exceeds the budget left "
                   "(the book's or the library's)")

    p = sub.add_parser("estimate", parents=[_common()], help="what the rest of a book will cost: low, likely and high")
    p.add_argument("book")
    p.add_argument("--model", help="model of the correct stage")
    p.add_argument("--fix-model", help="model of the fix stage")
    p.add_argument("--vision", action="store_true", help="with the page images sent to the LLM stages")

    p = sub.add_parser("status", parents=[_common()], help="pages done per stage and cost, of one book or all")
    p.add_argument("book", nargs="?")

    p = sub.add_parser("cost", parents=[_common()], help="what a book cost, per run, stage and model")
    p.add_argument("book")
    p.add_argument("--reconcile", action="store_true",
                   help="ask the provider what each recorded generation cost and list every difference")

    p = sub.add_parser("clean", parents=[_common()],
                       help="remove a stage's outputs and those of the stages after it (costs are kept)")
    p.add_argument("book")
    p.add_argument("stage")

    p = sub.add_parser("library", parents=[_common()], help="every book, its state and cost, and the total")
    p.add_argument("--check", action="store_true",
                   help="prove the library ledger (library.db) equals the books' own ledgers, call for call")

    p = sub.add_parser("review", parents=[_common()],
                       help="the pages a person should look at, with why, and where their scan and text are")
    p.add_argument("book")

    p = sub.add_parser("log", parents=[_common()],
                       help="what a run's log says happened: retries by cause, waits, failures by page, slowest pages")
    p.add_argument("book")
    p.add_argument("--run", type=int, metavar="N", help="the run to read (default: the latest)")

    p = sub.add_parser("monitor", parents=[_common()],
                       help="a live view of books being processed: progress, rate, ETA, cost (also tools/monitor.py)")
    p.add_argument("books", nargs="*", metavar="BOOK", help="the books to watch (default: the whole library)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit (--json implies it)")
    p.add_argument("--interval", type=_refresh_interval, default=0.5, metavar="SECONDS",
                   help="seconds between refreshes of the live view (default 0.5)")

    p = sub.add_parser("ledger", parents=[_common()], help="move a book's ledger (checkpoint.db) into "
                       "the PostgreSQL ledger given by --ledger or $AR_LEDGER")
    p.add_argument("action", choices=("import",))
    p.add_argument("books", nargs="*", metavar="BOOK", help="the books to move in")
    p.add_argument("--all", action="store_true", help="every book of the library (library.db's cap comes too)")

    p = sub.add_parser("pricing", parents=[_common()], help="the prices ar uses (provider's model list, cached 24 h)")
    p.add_argument("model", nargs="?", help="a model id, e.g. google/gemini-2.5-flash")
    p.add_argument("--list", action="store_true", help="every model with its prices")
    p.add_argument("--refresh", action="store_true", help="fetch the price list now, whatever its age")
    return parser


def _emit(args, report: dict, human) -> None:
    try:
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            human(report)
        sys.stdout.flush()
    except BrokenPipeError:
        render.reader_gone()


def cmd_add(args, settings: Settings, library: Library) -> int:
    from infra.sources import books_in_folder
    from pipeline.ocr import check_languages

    if args.lang is not None:  # installed, before any work
        check_languages(args.lang)
    src = args.path
    if not src.exists():
        raise ArError(f"{src}: no such file or folder")
    sources = books_in_folder(src) if src.is_dir() else None
    if sources is not None:
        return _add_books(args, library, sources)
    book = library.book(args.id if args.id is not None else book_id_from_path(src))
    if book.root.exists():
        raise ArError(f"book {book.id!r} already exists in {library.root}; choose another --id")
    pages = _add_book(src, book, library, args.lang)
    _emit(args, {"book": book.id, "pages": pages, "path": str(book.root)},
          lambda r: print(f"added {r['book']}: {render.pages(r['pages'])} in {r['path']}"))
    return 0


def _add_book(src: Path, book, library: Library, lang: str | None) -> int:
    """`src` (a PDF, an image, a folder of page images) as the new `book`; all or nothing."""
    from infra.errors import SourceError
    from infra.sources import import_source

    library.root.mkdir(parents=True, exist_ok=True)
    book.root.mkdir()
    try:
        pages = import_source(src, book.source_dir)
    except (SourceError, OSError) as e:
        _remove_tree(book.root)
        raise ArError(str(e)) from None
    except BaseException:
        _remove_tree(book.root)
        raise
    if lang is not None:  # in the ledger's meta, beside the budget: the book's settings, in one place
        with WriterLock(book.lock_path, book.id):
            ledger = open_ledger(book)
            try:
                ledger.set_meta("lang", lang)
            finally:
                ledger.close()
    return pages


def _add_books(args, library: Library, sources: list[Path]) -> int:
    """A folder of books: one per PDF or sub-folder, ids from their names; what is already
    added is skipped, what cannot be read is refused with its reason, and the rest goes on."""
    from infra.books import unique_book_ids
    from infra.errors import SourceError
    from infra.sources import check_book_source
    from pipeline.progress import ItemProgress

    if args.id is not None:
        raise UsageError(f"--id names one book; {args.path} holds several, named after their files")
    results = []
    with ItemProgress("add", len(sources)) as progress:
        for src, book_id in zip(sources, unique_book_ids(sources)):
            progress.advance(src.name)
            book = library.book(book_id)
            entry = {"book": book.id, "source": str(src), "path": str(book.root)}
            try:
                if book.root.exists():
                    entry.update(status="skipped", reason="already added")
                else:
                    check_book_source(src)
                    entry.update(status="added", pages=_add_book(src, book, library, args.lang))
            except (ArError, SourceError) as e:
                entry.update(status="refused", reason=str(e))
                print(f"ar: error: {redact(_one_line(e))}", file=sys.stderr)
            results.append(entry)
    refused = [r for r in results if r["status"] == "refused"]
    report = {"books": results, **{s: sum(r["status"] == s for r in results) for s in ("added", "skipped", "refused")}}
    _emit(args, report, render.added_books)
    return ArError.exit_code if refused else 0


def _remove_tree(root: Path) -> None:
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def _with_models(settings: Settings, args) -> Settings:
    chosen = {"correct_model": args.model, "fix_model": args.fix_model}
    return settings.model_copy(update={k: v for k, v in chosen.items() if v})


def _models(settings: Settings) -> dict[str, str]:
    """Each LLM stage's model, from the setting its declaration names."""
    return {spec.name: getattr(settings, spec.model) for spec in STAGES if spec.uses_llm}


@functools.cache
def _pricing(base_url: str):
    """One price list per command, however many books it estimates."""
    from infra.pricing import PricingCache

    return PricingCache(base_url)


def _estimate(book, settings: Settings, vision: bool = False, fresh: list[str] = (), only=None) -> dict:
    from pipeline.estimate import estimate

    return estimate(book, _pricing(settings.base_url), _models(settings), settings.budget_usd,
                    vision=vision, fresh=fresh, only=only)


def cmd_estimate(args, settings: Settings, library: Library) -> int:
    _emit(args, _estimate(library.existing(args.book), _with_models(settings, args), args.vision), render.estimate)
    return 0


def cmd_process(args, settings: Settings, library: Library) -> int:
    from pipeline.executor import check_executor
    from pipeline.llm_stage import LLMSetup
    from pipeline.process import process_books
    from pipeline.progress import StageProgress

    names = [s.strip() for s in (args.stages or "").split(",")]
    if args.stages is not None and not any(names):
        raise UsageError(f"--stages is empty: name some of {','.join(STAGES.names)}, or leave it out for every stage")
    selected = STAGES.select(names)
    books = _books_given(args, library, "process")
    workers = args.workers if args.workers is not None else settings.workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    settings = _with_models(settings, args)
    options = {"warn_run_usd": settings.warn_run_usd, "vision": args.vision, "lang": args.lang,
               "text_layer": args.text_layer}
    several = len(books) > 1
    before, refused = {}, {}  # refused: a book of several that its own check keeps out of the run

    def check(book, one_check) -> None:
        try:
            one_check()
        except ArError as e:
            if not several:
                raise
            refused[book.id] = e

    for book in books:
        check(book, lambda: check_ledger_place(book))  # one book not moved to AR_LEDGER keeps only itself out
        if book.id in refused:
            continue
        for spec in selected:  # what each stage needs is there (the OCR's languages), before any work
            spec.load().check_ready(spec, book, options)
        before[book.id] = status_report(book)["stages"]
        check(book, lambda: _check_inputs(book, selected, before[book.id], args.fresh))
    lib = _library_ledger(args, library)
    # the estimate reads every OCR'd page: only when it is shown or a budget must be checked
    uses_llm = any(spec.uses_llm for spec in selected)
    names = [spec.name for spec in selected]
    estimates = {}

    def estimate(book) -> None:
        estimates[book.id] = _check_estimate(args, book, settings, names)

    capped = lib is not None or args.library_budget is not None
    for book in books:
        if book.id not in refused and (args.dry_run or (uses_llm and not args.force and (
                capped or _has_budget(args, book, settings)))):
            check(book, lambda: estimate(book))
    books = [book for book in books if book.id not in refused]
    before = {book.id: before[book.id] for book in books}
    library_refuses = None
    if capped and uses_llm and not args.force:  # the books' own budgets let them start: the library's?
        library_refuses = _library_refusal(lib, library, [e["low_usd"] for e in estimates.values()
                                                          if not e["budget_refuses"]], args.library_budget)
        if library_refuses and not args.dry_run:
            raise BudgetReached(library_refuses)
    if args.dry_run:
        _emit_estimates(args, [estimates[book.id] for book in books if book.id in estimates], refused,
                        library_refuses)
        return 0
    llm = LLMSetup(settings, selected, args.budget, lib)
    check_executor()  # refusals that need no work come before any book's run opens: no run on record
    llm.check_ready(_models(settings))
    if args.library_budget is not None:  # kept once the run may start, as a book's budget is
        lib.set_limit(args.library_budget)

    progress = StageProgress({(b, s): before[b][s]["total"] for b in before for s in names},
                             {(b, s): before[b][s]["done"] for b in before for s in names},
                             {(b, s): before[b][s]["cost_usd"] for b in before for s in names})
    outcomes = process_books(books, selected, workers, models=_models(settings), fresh=args.fresh,
                             options=options,
                             progress=progress, before_run=llm.before_run, after_run=llm.after_run,
                             after_all=llm.close, together=lib is not None) if books else {}
    reports, not_run = [], {}
    for book in books:
        outcome = outcomes[book.id]
        if not outcome.ran:  # skipped (another process holds it), or not started (the run stopped first)
            not_run.setdefault(outcome.status, []).append({"book": book.id, "why": outcome.message})
            continue
        report = status_report(book)
        report.update(outcome={"status": outcome.status, "message": outcome.message,
                               "pages_processed": outcome.pages_processed},
                      other_models=other_models(book, {n: m for n, m in _models(settings).items() if n in names}),
                      this_run=run_summary(book, outcome.run_id))
        if outcome.status == "budget":  # what would finish the book: its budget raised, or the library's
            from pipeline.estimate import budget_to_finish

            report["outcome"]["library_budget"] = outcome.ends_run
            report["budget_to_finish_usd"] = None if outcome.ends_run else budget_to_finish(
                _estimate(book, settings, args.vision))
        reports.append(report)
    # skipped books are another process's work: they count only when no book was run here
    codes = [outcomes[r["book"]].exit_code for r in reports] + [e.exit_code for e in refused.values()]
    code = worst_exit_code(codes) if codes else ArError.exit_code
    if not several:
        _emit(args, reports[0], lambda r: render.process_summary(r, books[0]))
    else:
        run = {"books": reports, "refused": [{"book": b, "why": str(e)} for b, e in refused.items()],
               "skipped": not_run.get("skipped", []), "not_started": not_run.get("not_started", []),
               "exit_code": code, "library_budget": lib.figures() if lib is not None else None}
        _emit(args, run, lambda r: render.process_run_summary(r, library))
    if lib is not None:
        lib.close()
    return code


# The exit code of a run of several books: the worst of theirs, in this order.
EXIT_SEVERITY = tuple(exit_code(status) for status in ("failed", "interrupted", "budget", "done"))


def worst_exit_code(codes: list[int]) -> int:
    return min(codes, key=lambda c: EXIT_SEVERITY.index(c) if c in EXIT_SEVERITY else 0)


def _books_given(args, library: Library, command: str) -> list:
    """The books of `args.books`, or with `args.all` every book of the library."""
    if args.all == bool(args.books):
        raise UsageError(f"{command}: give one BOOK or more, or --all")
    if args.all:
        books = library.books()
        if not books:
            raise ArError(f"no book in {library.root} (add one first: ar.py add PATH)")
        return books
    return [library.existing(b) for b in dict.fromkeys(args.books)]


def _library_ledger(args, library: Library):
    """The library's cap when it has one (given now, or kept: library.db, or with AR_LEDGER the
    PostgreSQL ledger's `library` row), brought up to date with every book's ledger first
    (what earlier runs spent, what crashes left); None: no cap."""
    lib = open_library(library, create=args.library_budget is not None and not args.dry_run)
    if lib is None:
        return None
    if args.library_budget is None and lib.limit is None:
        lib.close()
        return None
    lib.sync([b.id for b in library.books()])
    return lib


def _library_refusal(lib, library: Library, lows: list[float | None], given_usd: float | None) -> str | None:
    """Why the library's cap would refuse a run whose books' low estimates are `lows`, or None.
    With no library ledger yet (a dry run makes none), what every book has spent is its spend."""
    figures = lib.figures() if lib is not None else {
        "budget_usd": None, "spent_usd": library_report(library)["total_cost_usd"], "reserved_usd": 0.0}
    limit = given_usd if given_usd is not None else figures["budget_usd"]
    if limit is None:
        return None
    left = limit - figures["spent_usd"] - figures["reserved_usd"]
    low = sum(x for x in lows if x is not None)
    if not low or low <= left:  # nothing left to pay for (free stages only) never needs the cap's room
        return None
    low_s, left_s, limit_s = apart(low, max(0.0, left), limit)
    return (f"even the low estimate of the rest of these books, {low_s}, exceeds what is left of the "
            f"library budget ({left_s} of {limit_s}): raise --library-budget, or add --force")


def _check_inputs(book, selected, stages: dict, fresh: bool) -> None:
    """A stage asked for whose inputs are not all there cannot do its pages: say which stage
    to run first, rather than report nothing done as done."""
    left = {name: s["total"] - s["done"] for name, s in stages.items()}
    if fresh:  # its outputs and those made from them go first
        for spec in selected:
            left.update({d.name: stages[d.name]["total"] for d in STAGES.downstream(spec.name)})
    missing = STAGES.missing_inputs(selected, left)
    if not missing:
        return

    def undone(name: str) -> str:
        return f"{name} ({left[name]} of {stages[name]['total']} not done)"

    needs = "; ".join(f"{stage} needs {' and '.join(map(undone, reads))}" for stage, reads in missing.items())
    run = ",".join(STAGES.with_inputs((spec.name for spec in selected), left))
    raise ArError(f"{needs}: run `ar.py process {book.id} --stages {run}` (or without --stages, every stage)")


def _has_budget(args, book, settings: Settings) -> bool:
    from infra.budget import kept_budget

    if args.budget is not None:
        return True
    kept = read_ledger(book, lambda ledger: kept_budget(ledger, settings.budget_usd),
                       settings.budget_usd)
    return kept is not None


def _check_estimate(args, book, settings: Settings, selected: list[str]) -> dict:
    """What this run would cost, exactly as it would run (its stages, --fresh, --vision), and
    `budget_refuses`: why the book's budget would refuse it (None: it would not). Unless
    --dry-run, such a refusal stops here (BudgetReached)."""
    from pipeline.estimate import budget_to_finish

    report = _estimate(book, settings, args.vision, selected if args.fresh else (), only=selected)
    if args.budget is not None:
        report["budget_usd"] = args.budget
    budget, low = report["budget_usd"], report["low_usd"]
    refusal = None
    if budget is not None and not args.force and low and low > budget - report["spent_usd"]:
        finish = budget_to_finish(report)
        low_s, left_s, budget_s = apart(low, max(0.0, budget - report["spent_usd"]), budget)
        refusal = (f"even the low estimate of the rest, {low_s}, exceeds what is left of the budget "
                   f"({left_s} of {budget_s}): raise --budget"
                   + ("" if finish is None else f" to at least ${finish:.4f}") + ", or add --force")
    if refusal is not None and not args.dry_run:
        raise BudgetReached(refusal)
    report["budget_refuses"] = refusal
    return report


def _emit_estimates(args, reports: list[dict], refused: dict, library_refuses: str | None) -> None:
    """A dry run's report: one book's estimate, or with several, one document of them all
    (and the books their own checks left out), each with what its budget says, and what the
    library's cap says of them together."""
    if len(reports) == 1 and not refused:
        _emit(args, {**reports[0], "library_budget_refuses": library_refuses}, render.estimate)
        return
    run = {"books": reports, "refused": [{"book": b, "why": str(e)} for b, e in refused.items()],
           "low_usd": sum(r["low_usd"] or 0.0 for r in reports), "library_budget_refuses": library_refuses}
    _emit(args, run, render.estimates)


def cmd_status(args, settings: Settings, library: Library) -> int:
    if args.book:
        _emit(args, status_report(library.existing(args.book)), render.status)
    else:
        return _emit_library(args, library_report(library))
    return 0


def _emit_library(args, report: dict) -> int:
    """The library's table (or JSON); then each book whose ledger could not be read, in a line
    of its own on stderr (exit 1): one such book hides none of the others."""
    _emit(args, report, render.library)
    for book in report["unreadable"]:
        print(f"ar: error: {book['why']}", file=sys.stderr)
    return max((book["exit_code"] for book in report["unreadable"]), default=0)


def cmd_cost(args, settings: Settings, library: Library) -> int:
    book = library.existing(args.book)
    if not args.reconcile:
        _emit(args, cost_report(book), render.cost)
        return 0
    from pipeline.reconcile import reconcile, reconciled

    report = reconcile(book, settings)
    _emit(args, report, render.reconciliation)
    return 0 if reconciled(report) else ArError.exit_code


def cmd_clean(args, settings: Settings, library: Library) -> int:
    from pipeline.process import clean_stage

    book = library.existing(args.book)
    (stage,) = STAGES.select([args.stage])
    with WriterLock(book.lock_path, book.id):
        ledger = open_ledger(book)
        had_text = book.text_path.exists()
        try:
            removed = clean_stage(book, ledger, stage.name)
            kept = ledger.total_cost()
        finally:
            ledger.close()
    previous = f"{PREVIOUS}/{BOOK_TEXT}" if had_text and not book.text_path.exists() else None
    _emit(args, {"book": book.id, "stage": args.stage, "files_removed": removed, "previous": previous,
                 "total_cost_usd": kept},
          lambda r: print(f"cleaned {r['stage']} of {r['book']}: {r['files_removed']} files removed"
                          + (f" (the last book.md is kept in {r['previous']})" if r["previous"] else "")
                          + f"; recorded cost kept: ${r['total_cost_usd']:.4f}"))
    return 0


def cmd_review(args, settings: Settings, library: Library) -> int:
    _emit(args, review_report(library.existing(args.book)), render.review)
    return 0


def cmd_log(args, settings: Settings, library: Library) -> int:
    from pipeline.runlog import log_report

    _emit(args, log_report(library.existing(args.book), args.run), render.run_log)
    return 0


def cmd_library(args, settings: Settings, library: Library) -> int:
    if args.check:  # library.db against each book's checkpoint.db, or the fleet's budget rows against its calls
        lib = open_library(library, read_only=True)
        if lib is None:
            raise ArError(f"no library ledger in {library.root} (a run with --library-budget makes one)")
        report = lib.check()
        lib.close()
        _emit(args, report, render.library_check)
        return 0 if report["ok"] else ArError.exit_code
    lib = open_library(library, read_only=True)
    report = library_report(library)
    report["library_budget"] = lib.figures() if lib is not None else None
    if lib is not None:
        lib.close()
    return _emit_library(args, report)


def cmd_monitor(args, settings: Settings, library: Library) -> int:
    from pipeline import live
    from pipeline.monitor import monitor_report

    fleet = ledger_url() if not args.books else None  # the whole fleet, as its PostgreSQL ledger has it
    if args.once or args.json:
        if fleet:
            from pipeline.monitor import fleet_report

            _emit(args, fleet_report(library, fleet), live.print_once)
            return 0
        _emit(args, monitor_report(library, args.books, settings.budget_usd),
              lambda r: live.print_once(r, detail_all=bool(args.books)))
        return 0
    return live.watch(library, args.books, settings.budget_usd, args.interval, fleet=fleet)


def cmd_pricing(args, settings: Settings, library: Library) -> int:
    from infra.pricing import PricingCache

    if not (args.model or args.list or args.refresh):
        raise UsageError("pricing: give a MODEL, --list or --refresh")
    cache = PricingCache(settings.base_url)
    if args.refresh:
        cache.refresh()
    models = cache.models()
    chosen = {args.model: cache.get(args.model)} if args.model else (models if args.list else {})
    report = {"base_url": settings.base_url, "age_seconds": cache.age_seconds(), "models_known": len(models),
              "models": {m: price.model_dump() for m, price in chosen.items()}}
    _emit(args, report, render.pricing)
    return 0


def cmd_ledger(args, settings: Settings, library: Library) -> int:
    """Move books' checkpoint.db into the PostgreSQL ledger, one by one: a refused book is said
    in one line and the rest go on; library.db's cap comes along (carry_library_cap)."""
    url = ledger_url()
    if url is None:
        raise UsageError("ledger import: give the PostgreSQL ledger with --ledger URL or $AR_LEDGER")
    books = _books_given(args, library, "ledger import")
    from infra.library_budget import SqliteLibrary
    from infra.pg_ledger import carry_library_cap, describe
    from pipeline.progress import ItemProgress

    old = SqliteLibrary.open(library, read_only=True)
    cap = carry_library_cap(url, old.limit if old is not None else None)
    if old is not None:
        old.close()
    if cap is not None and cap["status"] == "differs":
        print(f"ar: warning: {render.library_cap_moved(cap)}", file=sys.stderr)
    results = []
    with ItemProgress("import", len(books)) as progress:
        for book in books:
            progress.advance(book.id)
            results.append(_import_book(url, book))
    report = {"ledger": describe(url), "books": results, "library_budget": cap,
              **{s: sum(r["status"] == s for r in results) for s in ("imported", "skipped", "refused")}}
    _emit(args, report, render.imported_books)
    return ArError.exit_code if report["refused"] else 0


def _import_book(url: str, book) -> dict:
    """One book's import, as its entry in the report: imported, skipped (nothing to import), refused."""
    from infra.pg_ledger import import_book

    if not book.ledger_path.exists():
        return {"book": book.id, "status": "skipped", "reason": "already imported"
                if book.imported_ledger_path.exists() else "begun in PostgreSQL"
                if book.fleet_ledger_mark.exists() else "never run: no checkpoint.db"}
    try:
        with WriterLock(book.lock_path, book.id):
            return {"status": "imported", **import_book(url, book)}
    except (ArError, *ledger_errors()) as e:
        print(f"ar: error: {redact(_one_line(e))}", file=sys.stderr)
        return {"book": book.id, "status": "refused", "reason": redact(_one_line(e))}


COMMANDS = {"add": cmd_add, "process": cmd_process, "estimate": cmd_estimate, "status": cmd_status, "cost": cmd_cost,
            "clean": cmd_clean, "library": cmd_library, "review": cmd_review, "log": cmd_log, "monitor": cmd_monitor,
            "pricing": cmd_pricing, "ledger": cmd_ledger}


def main(argv: list[str] | None = None) -> int:
    # SIGTERM is Ctrl-C until a run sets its own handlers: a stop, not a death by signal
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _main(argv)
    except BaseException as e:
        if not interrupted(e):
            raise
        print("ar: interrupted", file=sys.stderr)
        return exit_code("interrupted")


def interrupted(error: BaseException | None) -> bool:
    """Ctrl-C or SIGTERM, also one that came inside an import, which Python may wrap in a
    RuntimeError (from a class being built) with the KeyboardInterrupt as its cause."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__
    return False


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_console(args.verbose)
    if getattr(args, "ledger", None):  # an environment variable, so that every process of the run sees it
        os.environ["AR_LEDGER"] = args.ledger
    try:
        settings = load_settings(books_dir=args.books_dir)
        library = Library(settings.books_dir)
        if getattr(args, "book", None) is not None:
            validate_book_id(args.book)
        return COMMANDS[args.command](args, settings, library)
    except (ArError, OSError, *ledger_errors()) as e:
        print(f"ar: error: {redact(_one_line(e))}", file=sys.stderr)
        return getattr(e, "exit_code", ArError.exit_code)


def _one_line(error: Exception) -> str:
    """What went wrong and where: an expected error's message, a disk's or a database's."""
    if isinstance(error, sqlite3.Error):
        return f"checkpoint: {error}"
    if isinstance(error, ledger_errors()):
        return f"ledger: {str(error).strip().splitlines()[0]}"
    if isinstance(error, OSError):
        return f"{error.filename}: {error.strerror or error}" if error.filename else str(error.strerror or error)
    return str(error)
