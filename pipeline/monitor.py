"""The figures of the live view (tools/monitor.py, `ar.py monitor`): a book's status report
(pipeline/reports.py) plus what its current run is doing and where its cost is heading.

A book's figures all come from one read-only snapshot of its ledger. "This run" is the
book's last run: the running one, or the last one that ended.
- rate (pages per minute): the pages a stage marked done in this run / the run's time so
  far (its whole duration once it ended; unknown for a crashed run, whose end is unknown);
- ETA: a stage's pages left / its rate, while the book runs; the book's is the longest of
  the stages at work in this run (a page done in it): pages flow through them together;
- cost per page: per stage, what it cost / the pages it has done (all runs, failed attempts
  included: they are paid); the book's is the sum over its stages;
- projected total: spent + each billable stage's cost per page x its pages left; unknown
  (None) while an LLM stage with pages left has done none, as its cost per page is unknown.
"""
from __future__ import annotations

import time

from infra.books import Book, Library
from infra.budget import kept_budget
from infra.checkpoint import Ledger
from infra.ledgers import open_library, read_ledger
from pipeline.registry import STAGES
from pipeline.reports import status_figures, status_from

RECENT_ERRORS = 5
IDLE = {"pages_done": {}, "calls_in_flight": 0, "retries": 0}


def book_snapshot(book: Book, default_budget_usd: float | None = None) -> dict:
    """`ar.py status BOOK --json` plus the live figures (see the module's docstring)."""

    def queries(ledger: Ledger) -> dict:
        figures = status_figures(ledger)
        runs = figures["runs"]
        figures["activity"] = ledger.run_activity(runs[-1]["run_id"]) if runs else IDLE
        figures["errors"] = ledger.recent_errors(RECENT_ERRORS)
        figures["budget"] = kept_budget(ledger, default_budget_usd)
        return figures

    figures = read_ledger(book, queries, {})
    now = time.time()
    report = status_from(book, figures)
    run = figures["runs"][-1] if figures.get("runs") else None
    activity = figures.get("activity", IDLE)
    running = report["state"] == "running"
    elapsed = _elapsed(run, running, now)

    projected: float | None = report["total_cost_usd"]
    working = []  # the page stages at work in this run, in order
    for name, s in report["stages"].items():
        s["done_this_run"] = in_run = activity["pages_done"].get(name, 0)
        left = s["total"] - s["done"]
        s["cost_per_page_usd"] = s["cost_usd"] / s["done"] if s["done"] else None
        spec = STAGES[name] if name in STAGES else None
        per_page = spec is None or spec.per_page
        s["pages_per_minute"] = in_run * 60 / elapsed if per_page and elapsed else None
        s["eta_seconds"] = (0.0 if left <= 0 else
                            left * 60 / s["pages_per_minute"] if running and s["pages_per_minute"] else None)
        if per_page and in_run:
            working.append(s)
        if left > 0 and ((spec and spec.uses_llm) or s["calls"]) and projected is not None:
            projected = None if s["cost_per_page_usd"] is None else projected + s["cost_per_page_usd"] * left

    etas = [s["eta_seconds"] for s in working]  # known: a stage at work has a rate
    budget = figures.get("budget", default_budget_usd)
    report.update(
        at=now,
        run=None if run is None else {k: run[k] for k in ("run_id", "status", "started_at", "ended_at")},
        run_cost_usd=run["cost_usd"] if run else 0.0,
        # pages per minute leaving the last stage at work: how fast the book gets done
        pages_per_minute=working[-1]["pages_per_minute"] if working else None,
        eta_seconds=(0.0 if report["state"] == "done" else
                     max(etas) if running and etas else None),
        # unknown while a stage has cost but no page done (after `clean`): not $0
        cost_per_page_usd=None if any(s["cost_per_page_usd"] is None and s["cost_usd"] for s in report["stages"].values())
        else sum(s["cost_per_page_usd"] or 0.0 for s in report["stages"].values()),
        projected_total_usd=projected,
        budget_usd=budget,
        budget_left_usd=None if budget is None else budget - report["total_cost_usd"],
        calls_in_flight=activity["calls_in_flight"] if running else 0,
        retries=activity["retries"],
        recent_errors=figures.get("errors", []),
    )
    return report


def _elapsed(run: dict | None, running: bool, now: float) -> float | None:
    """Seconds of this run so far (its duration once ended); None when unknown."""
    if run is None:
        return None
    if running:
        return max(now - run["started_at"], 1e-3)
    if run["ended_at"] is None:  # crashed: its writer died without saying when
        return None
    return max(run["ended_at"] - run["started_at"], 1e-3)


def library_budget_figures(library: Library) -> dict | None:
    """The library's cap, spent, held and left (library.db, or the fleet's ledger; read-only);
    None: no library ledger."""
    lib = open_library(library, read_only=True)
    if lib is None:
        return None
    try:
        return lib.figures()
    finally:
        lib.close()


def library_snapshot(library: Library, books: list[dict]) -> dict:
    """Several books' snapshots together, with the totals (the shape of `ar.py library --json`),
    the books in progress and the library's budget."""
    return {
        "books_dir": str(library.root),
        "books": books,
        "books_running": [b["book"] for b in books if b["state"] == "running"],
        "library_budget": library_budget_figures(library),
        "total_cost_usd": sum(b["total_cost_usd"] for b in books),
        "run_cost_usd": sum(b["run_cost_usd"] for b in books),
        "total_pages": sum(b["pages"] for b in books),
        "calls_in_flight": sum(b["calls_in_flight"] for b in books),
    }


def monitor_report(library: Library, book_ids: list[str], default_budget_usd: float | None = None) -> dict:
    """One BOOK: its snapshot (like `ar.py status BOOK`); several, or none (the whole
    library): the library form (like `ar.py status`)."""
    books = [library.existing(b) for b in book_ids] if book_ids else library.books()
    snapshots = [book_snapshot(b, default_budget_usd) for b in books]
    if len(book_ids) == 1:
        return snapshots[0]
    return library_snapshot(library, snapshots)


def fleet_report(library: Library, url: str, conn=None) -> dict:
    """The fleet's figures (infra/pg_fleet.py) with what the shared books folder adds: each
    running book's pages (None when this machine does not see it) and, per stage and book,
    pages per minute in its running runs; each book's cost and budget are its budget row's."""
    from infra.pg_fleet import fleet_figures

    report = fleet_figures(url, RECENT_ERRORS, conn)
    live = {w["holder"] for w in report["workers"]}
    for b in report["running"]:
        book = library.book(b["book"])
        b["pages"] = book.page_count() if book.source_dir.is_dir() else None
        elapsed = max(report["at"] - b["started_at"], 1e-3)
        order = {name: i for i, name in enumerate(STAGES.names)}
        b["stages"] = dict(sorted(b["stages"].items(), key=lambda item: order.get(item[0], len(order))))
        for name, s in b["stages"].items():
            s["total"] = STAGES[name].total(b["pages"]) if name in STAGES and b["pages"] is not None else b["pages"]
            s["pages_per_minute"] = s["done_this_run"] * 60 / elapsed
        # how fast the book gets done: the pages leaving the last page stage at work
        working = [s for name, s in b["stages"].items()
                   if s["done_this_run"] and (name not in STAGES or STAGES[name].per_page)]
        b["pages_per_minute"] = working[-1]["pages_per_minute"] if working else 0.0
        row = report["budgets"].get(f"book:{b['book']}", {})
        b.update(cost_usd=row.get("spent_usd", 0.0), budget_usd=row.get("budget_usd"),
                 budget_left_usd=row.get("left_usd"),
                 state="running" if live & set(b["holders"]) else "lapsed")
    report["pages_per_minute"] = sum(b["pages_per_minute"] for b in report["running"] if b["state"] == "running")
    report["calls_in_flight"] = sum(w["calls_in_flight"] for w in report["workers"])
    return report
