"""The `ar` command line: thin over the ledger, the pipeline and the reports."""
from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from pathlib import Path

from infra.books import Library, book_id_from_path, validate_book_id
from infra.checkpoint import Ledger
from infra.config import Settings, load_settings
from infra.errors import EXIT_INTERRUPTED, ArError, UsageError
from infra.lock import WriterLock
from infra.logs import redact, setup_console
from pipeline import render
from pipeline.reports import cost_report, library_report, status_report

log = logging.getLogger("ar")


def _common(json_flag: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given after the command it counts, absent it leaves the one before the command
    p.add_argument("--books-dir", type=Path, default=argparse.SUPPRESS,
                   help="where books live (default ./books, or $AR_BOOKS_DIR)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ar.py",
        description="Turn scanned books into clean text with LLMs; resumable, every cent accounted for.",
        epilog="exit codes: 0 done, 1 error, 2 usage, 3 budget reached, 130 interrupted",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    parser.add_argument("--books-dir", type=Path, help="where books live (default ./books, or $AR_BOOKS_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("add", parents=[_common()], help="add a book from a PDF or a folder of page images")
    p.add_argument("path", type=Path, help="a PDF, or a folder of page images")
    p.add_argument("--id", help="the book's id (default: the file or folder name)")

    p = sub.add_parser("process", parents=[_common()], help="run (or resume) a book's pipeline")
    p.add_argument("book")
    p.add_argument("--stages", help="comma-separated subset of ocr,correct,fix,merge (default: all)")
    p.add_argument("--workers", type=int, help="calls or pages in flight per stage (default 32, $AR_WORKERS)")
    p.add_argument("--fresh", action="store_true", help="discard the outputs of the selected stages and those after them first (costs are kept)")
    p.add_argument("--model", help="model of the correct stage (default google/gemini-2.5-flash, $AR_CORRECT_MODEL)")
    p.add_argument("--fix-model", help="model of the fix stage (default anthropic/claude-sonnet-4.5, $AR_FIX_MODEL)")
    p.add_argument("--vision", action="store_true", help="send the page image with its text to the LLM stages")

    p = sub.add_parser("status", parents=[_common()], help="pages done per stage and cost, of one book or all")
    p.add_argument("book", nargs="?")

    p = sub.add_parser("cost", parents=[_common()], help="what a book cost, per run, stage and model")
    p.add_argument("book")

    p = sub.add_parser("clean", parents=[_common()],
                       help="remove a stage's outputs and those of the stages after it (costs are kept)")
    p.add_argument("book")
    p.add_argument("stage")

    sub.add_parser("library", parents=[_common()], help="every book, its state and cost, and the total")

    p = sub.add_parser("pricing", parents=[_common()], help="the prices ar uses (provider's model list, cached 24 h)")
    p.add_argument("model", nargs="?", help="a model id, e.g. google/gemini-2.5-flash")
    p.add_argument("--list", action="store_true", help="every model with its prices")
    p.add_argument("--refresh", action="store_true", help="fetch the price list now, whatever its age")
    return parser


def _emit(args, report: dict, human) -> None:
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        human(report)


def cmd_add(args, settings: Settings, library: Library) -> int:
    from infra.sources import SourceError, import_source

    src = args.path
    if not src.exists():
        raise ArError(f"{src}: no such file or folder")
    book = library.book(args.id if args.id is not None else book_id_from_path(src))
    if book.root.exists():
        raise ArError(f"book {book.id!r} already exists in {library.root}; choose another --id")
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
    _emit(args, {"book": book.id, "pages": pages, "path": str(book.root)},
          lambda r: print(f"added {r['book']}: {r['pages']} pages in {r['path']}"))
    return 0


def _remove_tree(root: Path) -> None:
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def cmd_process(args, settings: Settings, library: Library) -> int:
    from pipeline.progress import StageProgress
    from pipeline.process import process_book
    from pipeline.stages import STAGE_NAMES, build_stages, check_stage_names, llm_setup

    book = library.existing(args.book)
    selected = check_stage_names(STAGE_NAMES if not args.stages else
                                 [s.strip() for s in args.stages.split(",") if s.strip()])
    workers = args.workers if args.workers is not None else settings.workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    settings = settings.model_copy(update={k: v for k, v in
                                           {"correct_model": args.model, "fix_model": args.fix_model}.items() if v})
    stages = build_stages(selected, settings, vision=args.vision)

    before = status_report(book)["stages"]
    totals = {s: before[s]["total"] for s in selected}
    progress = StageProgress(totals, {s: before[s]["done"] for s in selected},
                             {s: before[s]["cost_usd"] for s in selected})
    outcome = process_book(book, stages, STAGE_NAMES, workers, fresh=args.fresh,
                           progress=progress, before_run=llm_setup(settings, selected))
    report = status_report(book)
    report.update(outcome={"status": outcome.status, "message": outcome.message,
                           "pages_processed": outcome.pages_processed})
    _emit(args, report, lambda r: render.process_summary(r, book))
    return outcome.exit_code


def cmd_status(args, settings: Settings, library: Library) -> int:
    if args.book:
        _emit(args, status_report(library.existing(args.book)), render.status)
    else:
        _emit(args, library_report(library), render.library)
    return 0


def cmd_cost(args, settings: Settings, library: Library) -> int:
    _emit(args, cost_report(library.existing(args.book)), render.cost)
    return 0


def cmd_clean(args, settings: Settings, library: Library) -> int:
    from pipeline.process import clean_stage
    from pipeline.stages import STAGE_NAMES, check_stage_names

    book = library.existing(args.book)
    check_stage_names([args.stage])
    with WriterLock(book.lock_path, book.id):
        ledger = Ledger.open_writer(book.ledger_path)
        try:
            removed = clean_stage(book, ledger, args.stage, STAGE_NAMES)
            kept = ledger.total_cost()
        finally:
            ledger.close()
    _emit(args, {"book": book.id, "stage": args.stage, "files_removed": removed, "total_cost_usd": kept},
          lambda r: print(f"cleaned {r['stage']} of {r['book']}: {r['files_removed']} files removed; "
                          f"recorded cost kept: ${r['total_cost_usd']:.4f}"))
    return 0


def cmd_library(args, settings: Settings, library: Library) -> int:
    _emit(args, library_report(library), render.library)
    return 0


def cmd_pricing(args, settings: Settings, library: Library) -> int:
    from infra.pricing import PricingCache, PricingError

    if not (args.model or args.list or args.refresh):
        raise UsageError("pricing: give a MODEL, --list or --refresh")
    cache = PricingCache(settings.base_url)
    try:
        if args.refresh:
            cache.refresh()
        models = cache.models()
        chosen = {args.model: cache.get(args.model)} if args.model else (models if args.list else {})
    except PricingError as e:
        raise ArError(str(e)) from None
    report = {"base_url": settings.base_url, "age_seconds": cache.age_seconds(), "models_known": len(models),
              "models": {m: price.model_dump() for m, price in chosen.items()}}
    _emit(args, report, render.pricing)
    return 0


COMMANDS = {"add": cmd_add, "process": cmd_process, "status": cmd_status, "cost": cmd_cost,
            "clean": cmd_clean, "library": cmd_library, "pricing": cmd_pricing}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_console(args.verbose)
    try:
        settings = load_settings(books_dir=args.books_dir)
        library = Library(settings.books_dir)
        if getattr(args, "book", None) is not None:
            validate_book_id(args.book)
        return COMMANDS[args.command](args, settings, library)
    except ArError as e:
        print(f"ar: error: {redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ar: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except sqlite3.Error as e:
        print(f"ar: error: checkpoint: {redact(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"ar: error:{where}: {e.strerror or e}", file=sys.stderr)
        return 1
