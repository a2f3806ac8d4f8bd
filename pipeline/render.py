"""Human-readable forms of the reports (their --json forms are the dicts themselves)."""
from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.table import Table

from infra.books import Book

def reader_gone() -> None:
    """The reader of the output left (`ar.py ... | head`): it had what it wanted, which is no
    error of ar's. What is still written goes nowhere, so the exit's flush fails no more."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class ReportConsole(Console):
    def on_broken_pipe(self) -> None:  # rich's own ends the process with exit 1
        self.quiet = True
        reader_gone()


console = ReportConsole(highlight=False, soft_wrap=True)  # a message or path stays on one line
if not console.is_terminal:  # piped or logged: tables as wide as they need, not cut at 80 columns
    console.width = 240


def pages(n: int) -> str:
    return f"{n} page" if n == 1 else f"{n} pages"


def usd(x: float | None) -> str:
    """Dollars at a glance; '-' for a figure not known (a variable price, no pages yet)."""
    if x is None:
        return "-"
    return f"${x:,.4f}" if x < 100 else f"${x:,.2f}"


def page_list(numbers: list[int]) -> str:
    """'1-3, 7': pages as runs of consecutive numbers."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def runs(r: dict) -> str:
    """'over 2 run(s)', and apart the runs that had nothing to do."""
    idle = r.get("idle_runs") or 0
    return f"over {r['runs']} run(s)" + (f" (and {idle} with nothing to do)" if idle else "")


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
                  f"total cost {usd(r['total_cost_usd'])} {runs(r)}" + (f"; {review}" if review else ""))
    t = Table("stage", "done", "total", "failed", "calls", "cost")
    for name, s in r["stages"].items():
        t.add_row(name, str(s["done"]), str(s["total"]), str(s["failed"] or ""),
                  str(s["calls"]), usd(s["cost_usd"]))
    console.print(t)


def library(r: dict) -> None:
    t = Table("book", "pages", "state", "cost", title=f"library {r['books_dir']}")
    for b in r["books"]:
        t.add_row(b["book"], str(b["pages"]), b["state"], "?" if b["total_cost_usd"] is None else usd(b["total_cost_usd"]))
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
        elif finished and r["pages_to_review"]:  # not a plain "done": the last line says what is left
            console.print(f"book {r['book']!r}: every stage is through.")
        elif finished:
            console.print(f"book {r['book']!r} done.")
        else:
            console.print(f"book {r['book']!r}: the stages asked for are done; "
                          f"`ar.py process {r['book']}` runs the rest.")
        if book.text_path.exists():
            console.print(f"  text:        {book.text_path}")
            console.print(f"  cost report: {book.root / 'cost_report.json'}")
    else:  # "budget reached: ...", never "budget: budget reached: ..."
        message = outcome["message"]
        console.print(message if message.startswith(outcome["status"]) else f"{outcome['status']}: {message}")
    if outcome["status"] == "budget":
        undone = ", ".join(f"{name} {s['total'] - s['done']}" for name, s in r["stages"].items()
                           if s["total"] > s["done"])
        console.print(f"  left undone: {undone} (pages)")
        if outcome.get("library_budget"):
            console.print("  to finish:   raise --library-budget (`ar.py library` shows what is left of it)")
        elif r["budget_to_finish_usd"] is not None:
            console.print(f"  to finish:   ar.py process {r['book']} --budget {r['budget_to_finish_usd']:.4f} "
                          "(spent so far, the high estimate of the rest, and one call's worst case)")
    console.print(f"  total cost:  {usd(r['total_cost_usd'])} {runs(r)}")
    happened = what_happened(r.get("this_run") or {})
    if happened:
        console.print(f"  this run:    {happened}")
    for stage, other in r.get("other_models", {}).items():  # done pages are kept, whatever the model now
        for model, numbers in other["made_with"].items():
            console.print(f"  {stage}: {'page' if len(numbers) == 1 else 'pages'} {page_list(numbers)} "
                          f"made with {model}, not {other['model']}: `ar.py clean {r['book']} {stage}` "
                          "redoes them with it (and the stages made from them)")
    if outcome["status"] == "done" and r["pages_to_review"]:  # the last line: what is left to a person
        through = "done" if r["state"] == "done" else "the stages asked for are done"
        console.print(f"{through}, {to_review(r)}: see `ar.py review {r['book']}`")


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


def imported_books(r: dict) -> None:
    for b in r["books"]:
        if b["status"] == "imported":
            console.print(f"imported {b['book']} into {b['ledger']}: {b['runs']} runs, {b['calls']} calls, "
                          f"{b['pages']} pages, ${b['total_cost_usd']:.4f}; its checkpoint.db is now {b['kept_as']}")
        else:
            console.print(f"{b['status']} {b['book']}: {b['reason']}")
    if r["library_budget"] is not None:
        console.print(f"library budget: {library_cap_moved(r['library_budget'])}")
    console.print(f"{r['imported']} imported, {r['skipped']} skipped, {r['refused']} refused")


def library_cap_moved(cap: dict) -> str:
    """What `ledger import` did with library.db's cap (infra/pg_ledger.py's carry_library_cap)."""
    if cap["status"] == "carried":
        return f"library.db's cap ${cap['library_db_usd']:.4f} is now the ledger's"
    if cap["status"] == "same":
        return f"the ledger already has library.db's cap ${cap['ledger_usd']:.4f}"
    return (f"the ledger keeps its own library cap ${cap['ledger_usd']:.4f}, not library.db's "
            f"${cap['library_db_usd']:.4f}: give another with `ar.py process --library-budget USD`")


def process_run_summary(r: dict, library) -> None:
    """A run of several books: each one's summary, then the library's cap."""
    for report in r["books"]:
        console.print(f"[bold]{report['book']}[/]")
        process_summary(report, library.book(report["book"]))
    for b in r["refused"]:
        console.print(f"[bold]{b['book']}[/]: not run: {b['why']}")
    for b in r["skipped"]:
        console.print(f"skipped {b['book']}: {b['why']}")
    if r["not_started"]:
        console.print(f"not started (the run stopped first): {', '.join(b['book'] for b in r['not_started'])}")
    if not r["books"] and not r["refused"]:
        console.print("no book was run: every one is being processed by another process")
    if r["library_budget"] is not None:
        library_budget(r["library_budget"])


def library_budget(b: dict) -> None:
    if b["budget_usd"] is None:  # a library ledger whose cap was never set, or was moved without it
        console.print(f"library: no budget; {usd(b['spent_usd'])} spent, {usd(b['reserved_usd'])} held")
        return
    console.print(f"library budget: {usd(b['spent_usd'])} spent of {usd(b['budget_usd'])}, "
                  f"{usd(b['reserved_usd'])} held, {usd(b['left_usd'])} left")


def library_check(r: dict) -> None:
    t = Table("book", "its calls", "the library's record", "calls differing", title=f"the library's record: {r['path']}")
    for b in r["books"]:
        t.add_row(b["book"], usd(b["ledger_usd"]), usd(b["library_usd"]),
                  ", ".join(map(str, b["calls_differing"])) or "-")
    for book, spent in r["books_removed"].items():
        t.add_row(f"{book} (removed)", "-", usd(spent), "-")
    console.print(t)
    library_budget(r)
    console.print("the library's record equals the books' ledgers" if r["ok"] else
                  f"the library's record differs from the ledgers of {', '.join(r['differences']) or 'no book'} "
                  f"(running total {usd(r['running_total_usd'])}, its rows {usd(r['rows_total_usd'])})")

def what_happened(run: dict) -> str:
    """'3 failed calls (pages 1-3), of them 3 invalid answers (pages 1-3); 1 page unsure (2)'."""
    def counted(n: int, what: str, numbers: list[int]) -> str:
        return f"{n} {what}{'' if n == 1 else 's'} ({'page' if len(numbers) == 1 else 'pages'} {page_list(numbers)})"

    parts = []
    failed, invalid = run.get("failed_calls", {}), run.get("invalid_answers", {})
    if failed.get("count"):
        calls = counted(failed["count"], "failed call", failed["pages"])
        if invalid.get("count"):
            calls += ", of them " + counted(invalid["count"], "invalid answer", invalid["pages"])
        parts.append(calls)
    for stage, numbers in run.get("failed_pages", {}).items():
        parts.append(f"{pages(len(numbers))} failed in {stage} ({page_list(numbers)})")
    for flag, numbers in run.get("flagged_pages", {}).items():
        parts.append(f"{pages(len(numbers))} {flag} ({page_list(numbers)})")
    return "; ".join(parts)


def run_log(r: dict) -> None:
    took = f", {r['ended_at'] - r['started_at']:.1f} s" if r["started_at"] and r["ended_at"] else ""
    console.print(f"[bold]{r['book']}[/] run {r['run']}: {r['status']}{took}; {r['attempts']} call attempts "
                  f"({', '.join(f'{n} {o}' for o, n in r['attempts_by_outcome'].items()) or 'none'}), "
                  f"{usd(r['cost_usd'])} known from the log")
    if r["unreadable_lines"]:
        console.print(f"  {r['unreadable_lines']} line(s) of the log could not be read (cut by a kill?)")
    if r["pages"]:
        console.print("  pages: " + ", ".join(f"{n} {what}" for what, n in r["pages"].items()))
    causes = ", ".join(f"{n} {cause}" for cause, n in r["failed_attempts_by_cause"].items())
    console.print(f"  failed attempts by cause (retried, or given up): {causes or 'none'}")
    w = r["waits"]
    if w["count"]:
        console.print(f"  waits: {w['count']}, {w['total_s']:.1f} s in all, the longest {w['longest_s']:.1f} s "
                      f"({w['retry_after_given']} with the provider's Retry-After)")
    if r["failures_by_page"]:
        t = Table("page", "what failed", title="failures by page", title_justify="left")
        for page, kinds in r["failures_by_page"].items():
            t.add_row(str(page), ", ".join(f"{n}× {kind}" for kind, n in kinds.items()))
        console.print(t)
    for p in r["failed_pages"]:
        console.print(f"  page {p['page']} failed in {p['stage']}: {p['error']}")
    if r["slowest_pages"]:
        t = Table("stage", "page", "seconds", "outcome", title="slowest pages", title_justify="left")
        for p in r["slowest_pages"]:
            t.add_row(p["stage"], str(p["page"] or "the book"), f"{p['seconds']:.2f}", p["outcome"])
        console.print(t)


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
    if not r["models"]:  # --refresh alone: what was fetched, not an empty table
        console.print(f"{r['models_known']} models at {r['base_url']}, prices {r['age_seconds'] / 3600:.1f} h old; "
                      "`ar.py pricing MODEL` shows one, `--list` every one")
        return
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
    images = ", with page images" if r.get("vision") else ""
    t = Table("stage", "model", "pages", "low", "likely", "high", "from", title_justify="left",
              title=f"{r['book']}: what the rest will cost{images}")
    for name, e in r["stages"].items():
        t.add_row(name, e["model"], str(e["pages"]), usd(e["low_usd"]), usd(e["likely_usd"]), usd(e["high_usd"]),
                  e["method"])
    t.add_section()
    t.add_row("total", "", "", usd(r["low_usd"]), usd(r["likely_usd"]), usd(r["high_usd"]), "")
    console.print(t)
    budget = "no budget" if r["budget_usd"] is None else f"budget {usd(r['budget_usd'])}"
    console.print(f"spent so far {usd(r['spent_usd'])}; {budget}")
    if "budget_refuses" in r:  # a dry run: would the real one start?
        console.print("the budget would refuse this run: " + r["budget_refuses"] if r["budget_refuses"]
                      else "the budget would let this run start" if r["budget_usd"] is not None else
                      "no budget would stop this run")
    if r.get("library_budget_refuses"):
        console.print("the library budget would refuse this run: " + r["library_budget_refuses"])


def estimates(run: dict) -> None:
    """A dry run of several books: each one's estimate, then what the library's cap says."""
    for r in run["books"]:
        estimate(r)
    for r in run["refused"]:
        console.print(f"{r['book']}: left out: {r['why']}")
    console.print(f"low estimate of the rest, these books together: {usd(run['low_usd'])}")
    if run["library_budget_refuses"]:
        console.print("the library budget would refuse this run: " + run["library_budget_refuses"])


def reconciliation(r: dict) -> None:
    console.print(f"[bold]{r['book']}[/]: {r['generations']} generations; ledger {usd(r['ledger_usd'])}, "
                  f"provider {usd(r['provider_usd'])}")
    unattributed = r["unattributed_usd"]
    console.print("unattributed: unknown (no run of this book noted the key's usage counter alone: the endpoint "
                  "keeps none, or the book ran with others on the key)" if unattributed is None else
                  f"unattributed: ${unattributed:+.9f} (the key's usage over {r['runs_measured']} run(s), "
                  "less what their calls cost)")
    if r["pending"]:
        console.print(f"{len(r['pending'])} call(s) left pending by a run that died mid-call (pages "
                      f"{page_list([c['page'] for c in r['pending'] if c['page']])}): billed or not, their cost is "
                      f"not in the ledger until the next `ar.py process {r['book']}` settles them")
    if not r["differences"] and not r["unknown"]:
        console.print("every settled cost equals the provider's" if r["pending"] else
                      "every recorded cost equals the provider's")
        return
    t = Table("call", "generation", "model", "ledger", "provider", "difference", title_justify="left")
    for d in r["differences"]:
        t.add_row(str(d["call_id"]), d["generation_id"], d["model"], f"${d['cost_usd']:.9f}",
                  f"${d['provider_cost_usd']:.9f}", f"${d['difference_usd']:+.9f}")
    for u in r["unknown"]:
        t.add_row(str(u["call_id"]), u["generation_id"], u["model"], f"${u['cost_usd']:.9f}", "unknown", "")
    console.print(t)
