"""Reports read from the ledgers: status, cost, library. Each is a dict (the --json form)."""
from __future__ import annotations

import os
from collections.abc import Callable

from infra.books import BOOK_STAGES, Book, Library
from infra.checkpoint import Ledger
from pipeline.stages import STAGE_NAMES as STAGE_ORDER


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _state(book_pages: int, stages: dict, runs: list[dict]) -> str:
    last = runs[-1] if runs else None
    if last and last["status"] == "running":
        return "running" if _alive(last["pid"]) else "crashed"
    if not runs:
        return "new"
    if stages.get("merge", {}).get("done"):
        return "done"
    return last["status"] if last["status"] != "done" else "partial"


def read_ledger(book: Book, queries: Callable[[Ledger], dict]) -> dict:
    """What `queries(ledger)` returns, read from one consistent state of the book's ledger,
    opened read-only and closed again: no read transaction outlives the call (a reader
    holding one would keep the writer's WAL from being checkpointed). {} when the book
    has no ledger yet."""
    ledger = Ledger.open_reader(book.ledger_path)
    if ledger is None:
        return {}
    try:
        with ledger.snapshot():
            return queries(ledger)
    finally:
        ledger.close()


def status_figures(ledger: Ledger) -> dict:
    """The ledger's part of a status report; read it inside a snapshot (see read_ledger)."""
    return {"counts": ledger.page_counts(), "costs": ledger.costs_by("stage"),
            "runs": ledger.runs(), "total": ledger.total_cost()}


def status_from(book: Book, figures: dict) -> dict:
    """The status report of `book` from its status_figures ({} for a book never processed)."""
    pages = book.page_count()
    counts, costs = figures.get("counts", {}), figures.get("costs", {})
    runs, total = figures.get("runs", []), figures.get("total", 0.0)
    names = list(STAGE_ORDER) + sorted((set(counts) | set(costs)) - set(STAGE_ORDER))
    stages = {}
    for name in names:
        stages[name] = {
            "done": counts.get(name, {}).get("done", 0),
            "total": 1 if name in BOOK_STAGES else pages,
            "failed": counts.get(name, {}).get("failed", 0),
            "cost_usd": costs.get(name, {}).get("cost_usd", 0.0),
            "calls": costs.get(name, {}).get("calls", 0),
            "pending_calls": costs.get(name, {}).get("pending_calls", 0),
        }
    return {
        "book": book.id,
        "pages": pages,
        "state": _state(pages, stages, runs),
        "total_cost_usd": total,
        "runs": len(runs),
        "stages": stages,
    }


def status_report(book: Book) -> dict:
    return status_from(book, read_ledger(book, status_figures))


def cost_report(book: Book) -> dict:
    ledger = Ledger.open_reader(book.ledger_path)
    report = {"book": book.id, "pages": book.page_count(), "total_cost_usd": 0.0,
              "computed_cost_usd": 0.0, "provider_cost_usd": 0.0,
              "runs": [], "stages": {}, "models": {}}
    if ledger is None:
        return report
    try:
        with ledger.snapshot():
            report["total_cost_usd"] = ledger.total_cost()
            report["runs"] = ledger.runs()
            report["stages"] = ledger.costs_by("stage")
            report["models"] = ledger.costs_by("model")
    finally:
        ledger.close()
    report["computed_cost_usd"] = sum(m["computed_cost_usd"] for m in report["models"].values())
    report["provider_cost_usd"] = sum(m["provider_cost_usd"] for m in report["models"].values())
    report["cost_per_page_usd"] = report["total_cost_usd"] / report["pages"] if report["pages"] else 0.0
    return report


def library_report(library: Library) -> dict:
    books = []
    for book in library.books():
        status = status_report(book)
        books.append({k: status[k] for k in ("book", "pages", "state", "total_cost_usd")})
    return {
        "books_dir": str(library.root),
        "books": books,
        "total_cost_usd": sum(b["total_cost_usd"] for b in books),
        "total_pages": sum(b["pages"] for b in books),
    }
