"""Reports read from the ledgers: status, cost, library. Each is a dict (the --json form)."""
from __future__ import annotations

from collections import Counter

from infra.books import Book, Library
from infra.checkpoint import Ledger
from infra.errors import ArError
from infra.ledgers import ledger_errors, read_ledger
from infra.lock import process_alive
from pipeline.registry import STAGES, Registry


def _state(stages: dict, runs: list[dict], registry: Registry) -> str:
    """`runs`: those that did something (not idle). Every stage through is done, whatever run
    is still open on the book (another writer of the fleet may have one)."""
    if runs and all(stages[spec.name]["done"] >= stages[spec.name]["total"] for spec in registry):
        return "done"
    last = runs[-1] if runs else None
    if last and last["status"] == "running":
        return "running" if process_alive(last["pid"]) else "crashed"
    if not runs:
        return "new"
    return last["status"] if last["status"] != "done" else "partial"


def status_figures(ledger: Ledger, registry: Registry = STAGES) -> dict:
    """The ledger's part of a status report; read it inside a snapshot (Ledger.read)."""
    return {"counts": ledger.page_counts(), "costs": ledger.costs_by("stage"),
            "runs": ledger.runs(), "total": ledger.total_cost(), "flags": flagged_pages(ledger, registry)}


def flagged_pages(ledger: Ledger, registry: Registry = STAGES) -> dict[int, dict[str, str]]:
    """Each page a person should look at, with its flags, as its latest page stage left them."""
    return ledger.page_flags([spec.name for spec in registry if spec.per_page])


def status_from(book: Book, figures: dict, registry: Registry = STAGES) -> dict:
    """The status report of `book` from its status_figures ({} for a book never processed).
    Its stages: the registry's, then any other the ledger knows (one since removed)."""
    pages = book.page_count()
    counts, costs = figures.get("counts", {}), figures.get("costs", {})
    total = figures.get("total", 0.0)
    runs = [run for run in figures.get("runs", []) if run["status"] != "idle"]
    idle = len(figures.get("runs", [])) - len(runs)
    names = registry.names + sorted((set(counts) | set(costs)) - set(registry.names))
    stages = {}
    for name in names:
        stages[name] = {
            "done": counts.get(name, {}).get("done", 0),
            "total": registry[name].total(pages) if name in registry else pages,
            "failed": counts.get(name, {}).get("failed", 0),
            "cost_usd": costs.get(name, {}).get("cost_usd", 0.0),
            "calls": costs.get(name, {}).get("calls", 0),
            "pending_calls": costs.get(name, {}).get("pending_calls", 0),
        }
    flagged = figures.get("flags", {})
    return {
        "book": book.id,
        "pages": pages,
        "state": _state(stages, runs, registry),
        "total_cost_usd": total,
        "runs": len(runs),
        "idle_runs": idle,  # runs that had nothing to do: counted apart
        "stages": stages,
        "pages_to_review": len(flagged),
        "flags": dict(sorted(Counter(f for flags in flagged.values() for f in flags).items())),
    }


def review_report(book: Book, registry: Registry = STAGES) -> dict:
    """`ar.py review BOOK`: each flagged page with its flags, and where its scan and text are."""
    flagged = read_ledger(book, lambda ledger: flagged_pages(ledger, registry), {})
    page_stages = [spec for spec in registry if spec.per_page]
    pages = []
    for page, flags in flagged.items():
        texts = [path for path in (spec.page_path(book, page) for spec in page_stages) if path.exists()]
        pages.append({"page": page, "flags": flags, "image": str(book.source_image(page)),
                      "text": str(texts[-1]) if texts else None})
    return {"book": book.id, "pages_to_review": len(pages), "pages": pages}


def other_models(book: Book, models: dict[str, str]) -> dict[str, dict]:
    """Per LLM stage of `models` (stage -> the model asked for now) whose done pages were made
    with another model: {"model": asked, "made_with": {model: pages}}. Done pages are never
    redone on their own, whatever the model now: the run says so."""
    made = read_ledger(book, lambda ledger: {s: ledger.page_models(s) for s in models}, {})
    out: dict[str, dict] = {}
    for stage, pages in made.items():
        for page, model in sorted(pages.items()):
            if model != models[stage]:
                entry = out.setdefault(stage, {"model": models[stage], "made_with": {}})
                entry["made_with"].setdefault(model, []).append(page)
    return out


def run_summary(book: Book, run_id: int) -> dict:
    """What one run's calls and pages came to: its failed calls and invalid answers (each a
    count, and its pages), its failed pages by stage, and its done pages by flag."""
    found = read_ledger(book, lambda ledger: ledger.run_outcomes(run_id), None)
    if found is None:
        return {}
    calls = {kind: {"count": len(pages), "pages": sorted(set(pages))} for kind, pages in found["calls"].items()}
    return {"run_id": run_id, **calls, "failed_pages": found["failed"],
            "flagged_pages": {flag: sorted(set(pages)) for flag, pages in sorted(found["flags"].items())}}


def status_report(book: Book, registry: Registry = STAGES) -> dict:
    return status_from(book, read_ledger(book, status_figures, {}), registry)


def cost_report(book: Book) -> dict:
    report = {"book": book.id, "pages": book.page_count(), "total_cost_usd": 0.0,
              "computed_cost_usd": 0.0, "provider_cost_usd": 0.0,
              "runs": [], "stages": {}, "models": {}}
    report.update(read_ledger(book, lambda ledger: {
        "total_cost_usd": ledger.total_cost(), "runs": ledger.runs(),
        "stages": ledger.costs_by("stage"), "models": ledger.costs_by("model")}, {}))
    report["computed_cost_usd"] = sum(m["computed_cost_usd"] for m in report["models"].values())
    report["provider_cost_usd"] = sum(m["provider_cost_usd"] for m in report["models"].values())
    report["cost_per_page_usd"] = report["total_cost_usd"] / report["pages"] if report["pages"] else 0.0
    return report


def library_report(library: Library) -> dict:
    """Each book's state and cost, and the totals; a book whose ledger cannot be read is listed
    with why (`unreadable`), its cost left out of the total, and the others still shown."""
    books, unreadable = [], []
    for book in library.books():
        try:
            status = status_report(book)
        except (*ledger_errors(), ArError) as e:
            unreadable.append({"book": book.id, "why": str(e), "exit_code": getattr(e, "exit_code", ArError.exit_code)})
            books.append({"book": book.id, "pages": book.page_count(), "state": "unreadable", "total_cost_usd": None})
            continue
        books.append({k: status[k] for k in ("book", "pages", "state", "total_cost_usd")})
    return {
        "books_dir": str(library.root),
        "books": books,
        "unreadable": unreadable,
        "total_cost_usd": sum(b["total_cost_usd"] or 0.0 for b in books),
        "total_pages": sum(b["pages"] for b in books),
    }
