"""Human-readable forms of the reports (their --json forms are the dicts themselves)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from infra.books import Book

console = Console(highlight=False, soft_wrap=True)  # a message or path stays on one line
if not console.is_terminal:  # piped or logged: tables as wide as they need, not cut at 80 columns
    console.width = 240


def pages(n: int) -> str:
    return f"{n} page" if n == 1 else f"{n} pages"


def usd(x: float | None) -> str:
    """Dollars at a glance; '-' for a figure not known (a variable price, no pages yet)."""
    if x is None:
        return "-"
    return f"${x:,.4f}" if x < 100 else f"${x:,.2f}"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def to_review(r: dict) -> str:
    """'3 pages to review (2 low_confidence, 1 rotated)', or '' when none."""
    if not r["pages_to_review"]:
        return ""
    counts = ", ".join(f"{n} {flag}" for flag, n in r["flags"].items())
    return f"{pages(r['pages_to_review'])} to review ({counts})"


def status(r: dict) -> None:
    review = to_review(r)
    console.print(f"[bold]{r['book']}[/]: {pages(r['pages'])}, {r['state']}, "
                  f"total cost {usd(r['total_cost_usd'])} over {r['runs']} run(s)" + (f"; {review}" if review else ""))
    t = Table("stage", "done", "total", "failed", "calls", "cost")
    for name, s in r["stages"].items():
        t.add_row(name, str(s["done"]), str(s["total"]), str(s["failed"] or ""),
                  str(s["calls"]), usd(s["cost_usd"]))
    console.print(t)


def library(r: dict) -> None:
    t = Table("book", "pages", "state", "cost", title=f"library {r['books_dir']}")
    for b in r["books"]:
        t.add_row(b["book"], str(b["pages"]), b["state"], usd(b["total_cost_usd"]))
    t.add_section()
    t.add_row("total", str(r["total_pages"]), f"{len(r['books'])} books", usd(r["total_cost_usd"]))
    console.print(t)
    if r.get("library_budget"):
        library_budget(r["library_budget"])


def _breakdown(title: str, rows: dict) -> Table:
    t = Table(title, "calls", "failed", "failed $", "prompt", "cached", "completion",
              "reasoning", "cost", title_justify="left")
    for key, m in rows.items():
        t.add_row(key, str(m["calls"]), str(m["failed_calls"]), usd(m["failed_cost_usd"]),
                  f"{m['prompt_tokens']:,}", f"{m['cached_tokens']:,}", f"{m['completion_tokens']:,}",
                  f"{m['reasoning_tokens']:,}", usd(m["cost_usd"]))
    return t


def cost(r: dict) -> None:
    console.print(f"[bold]{r['book']}[/]: total {usd(r['total_cost_usd'])} "
                  f"({pages(r['pages'])}, {usd(r.get('cost_per_page_usd', 0.0))} per page); "
                  f"provider-reported {usd(r['provider_cost_usd'])}, computed {usd(r['computed_cost_usd'])}")
    console.print(_breakdown("stage", r["stages"]))
    console.print(_breakdown("model", r["models"]))
    t = Table("run", "started", "ended", "status", "calls", "cost", title_justify="left")
    for run in r["runs"]:
        t.add_row(str(run["run_id"]), _when(run["started_at"]), _when(run["ended_at"]),
                  run["status"], str(run["calls"]), usd(run["cost_usd"]))
    console.print(t)


def process_summary(r: dict, book: Book) -> None:
    outcome = r["outcome"]
    if outcome["status"] == "done":
        finished = r["state"] == "done"
        if outcome["pages_processed"] == 0 and finished:
            console.print(f"book {r['book']!r} is done: nothing to do.")
        elif finished:
            console.print(f"book {r['book']!r} done.")
        else:
            console.print(f"book {r['book']!r}: the stages asked for are done; "
                          f"`ar.py process {r['book']}` runs the rest.")
        if book.text_path.exists():
            console.print(f"  text:        {book.text_path}")
            console.print(f"  cost report: {book.root / 'cost_report.json'}")
    else:
        console.print(f"{outcome['status']}: {outcome['message']}")
    if outcome["status"] == "budget":
        undone = ", ".join(f"{name} {s['total'] - s['done']}" for name, s in r["stages"].items()
                           if s["total"] > s["done"])
        console.print(f"  left undone: {undone} (pages)")
        if r["budget_to_finish_usd"] is not None:
            console.print(f"  to finish:   ar.py process {r['book']} --budget {r['budget_to_finish_usd']:.4f} "
                          "(spent so far, plus the high estimate of the rest)")
    console.print(f"  total cost:  {usd(r['total_cost_usd'])} over {r['runs']} run(s)")
    if outcome["status"] == "done" and r["pages_to_review"]:  # the last line: what is left to a person
        console.print(f"done, {to_review(r)}: see `ar.py review {r['book']}`")


def added_books(r: dict) -> None:
    for b in r["books"]:
        if b["status"] == "added":
            console.print(f"added {b['book']}: {pages(b['pages'])} from {b['source']}")
        elif b["status"] == "skipped":
            console.print(f"skipped {b['book']}: already added ({b['source']})")
        else:
            console.print(f"refused {b['source']}")
    line = f"{r['added']} added, {r['skipped']} skipped, {r['refused']} refused"
    refused = [b["source"] for b in r["books"] if b["status"] == "refused"]
    console.print(line + (f": {', '.join(refused)} (reasons above)" if refused else ""))


def process_run_summary(r: dict, library) -> None:
    """A run of several books: each one's summary, then the library's cap."""
    for report in r["books"]:
        console.print(f"[bold]{report['book']}[/]")
        process_summary(report, library.book(report["book"]))
    if r["library_budget"] is not None:
        library_budget(r["library_budget"])


def library_budget(b: dict) -> None:
    console.print(f"library budget: {usd(b['spent_usd'])} spent of {usd(b['budget_usd'])}, "
                  f"{usd(b['reserved_usd'])} held, {usd(b['left_usd'])} left")


def library_check(r: dict) -> None:
    t = Table("book", "its ledger", "library.db", "calls differing", title=f"library ledger {r['path']}")
    for b in r["books"]:
        t.add_row(b["book"], usd(b["ledger_usd"]), usd(b["library_usd"]),
                  ", ".join(map(str, b["calls_differing"])) or "-")
    for book, spent in r["books_removed"].items():
        t.add_row(f"{book} (removed)", "-", usd(spent), "-")
    console.print(t)
    library_budget(r)
    console.print("library.db equals the books' ledgers" if r["ok"] else
                  f"library.db differs from the ledgers of {', '.join(r['differences']) or 'no book'} "
                  f"(running total {usd(r['running_total_usd'])}, its rows {usd(r['rows_total_usd'])})")


def review(r: dict) -> None:
    if not r["pages"]:
        console.print(f"{r['book']}: no page to review")
        return
    t = Table("page", "flags", "image", "text", title=f"{r['book']}: {pages(r['pages_to_review'])} to review",
              title_justify="left")
    for p in r["pages"]:
        t.add_row(str(p["page"]), "; ".join(f"{flag}: {why}" for flag, why in p["flags"].items()),
                  p["image"], p["text"] or "-")
    console.print(t)


def pricing(r: dict) -> None:
    per_m = 1_000_000
    t = Table("model", "prompt $/M", "completion $/M", "cache read $/M", "cache write $/M",
              "reasoning $/M", "image $", "request $", "discount",
              title=f"{r['models_known']} models at {r['base_url']}, prices {r['age_seconds'] / 3600:.1f} h old")
    for model, p in r["models"].items():
        def m(key):
            return "-" if p.get(key) is None else f"{p[key] * per_m:.4g}"
        t.add_row(model, m("prompt"), m("completion"), m("input_cache_read"), m("input_cache_write"),
                  m("internal_reasoning"), str(p.get("image") or 0), str(p.get("request") or 0),
                  str(p.get("discount") or 0))
    console.print(t)


def estimate(r: dict) -> None:
    t = Table("stage", "model", "pages", "low", "high", "from", title_justify="left",
              title=f"{r['book']}: what the rest will cost")
    for name, e in r["stages"].items():
        t.add_row(name, e["model"], str(e["pages"]), usd(e["low_usd"]), usd(e["high_usd"]), e["method"])
    t.add_section()
    t.add_row("total", "", "", usd(r["low_usd"]), usd(r["high_usd"]), "")
    console.print(t)
    budget = "no budget" if r["budget_usd"] is None else f"budget {usd(r['budget_usd'])}"
    console.print(f"spent so far {usd(r['spent_usd'])}; {budget}")


def reconciliation(r: dict) -> None:
    console.print(f"[bold]{r['book']}[/]: {r['generations']} generations; ledger {usd(r['ledger_usd'])}, "
                  f"provider {usd(r['provider_usd'])}")
    unattributed = r["unattributed_usd"]
    console.print("unattributed: unknown (the endpoint keeps no key usage counter)" if unattributed is None else
                  f"unattributed: ${unattributed:+.9f} (the key's usage over {r['runs_measured']} run(s), "
                  "less what their calls cost)")
    if not r["differences"] and not r["unknown"]:
        console.print("every recorded cost equals the provider's")
        return
    t = Table("call", "generation", "model", "ledger", "provider", "difference", title_justify="left")
    for d in r["differences"]:
        t.add_row(str(d["call_id"]), d["generation_id"], d["model"], f"${d['cost_usd']:.9f}",
                  f"${d['provider_cost_usd']:.9f}", f"${d['difference_usd']:+.9f}")
    for u in r["unknown"]:
        t.add_row(str(u["call_id"]), u["generation_id"], u["model"], f"${u['cost_usd']:.9f}", "unknown", "")
    console.print(t)
