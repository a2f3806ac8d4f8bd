"""The live view of `ar.py monitor [BOOK ...]` (and tools/monitor.py, a script over it).

A second terminal shows, refreshed twice a second, what the books being processed are
doing and what it costs: per stage a bar with pages done/total and failed, pages per
minute and ETA; this run's cost and all runs', cost per page, the projected total, budget
left; calls in flight, retries and the last errors. The figures are pipeline/monitor.py's;
this module only draws them (80 columns stay readable) and keeps refreshing.

It only reads the ledgers, each refresh in one short read-only snapshot, so it never
blocks or slows a writer. A ledger it cannot read this time (locked, being replaced)
keeps its last good snapshot on screen, marked stale. Ctrl-C leaves with exit 0.
"""
from __future__ import annotations

import time

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from infra.books import Library
from infra.ledgers import ledger_errors, ledger_stamp
from infra.errors import ArError, UsageError
from pipeline.monitor import book_snapshot, fleet_report, library_snapshot
from pipeline.render import ReportConsole, pages, to_review, usd

REFRESH_S = 0.5
SHOWN_ERRORS = 3
STATE_STYLE = {"running": "bold green", "crashed": "bold red", "done": "bold blue", "new": "dim"}


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds <= 0:
        return ""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, "bold yellow"))


def _stages(s: dict) -> Table:
    t = Table(box=None, padding=(0, 1), pad_edge=False, expand=True, header_style="dim")
    t.add_column("stage", no_wrap=True)
    t.add_column("", ratio=1, min_width=6)
    t.add_column("done", justify="right", no_wrap=True)
    t.add_column("failed", justify="right", no_wrap=True)
    t.add_column("/min", justify="right", no_wrap=True)
    t.add_column("ETA", justify="right", no_wrap=True)
    t.add_column("cost", justify="right", no_wrap=True)
    for name, st in s["stages"].items():
        rate = st["pages_per_minute"]
        t.add_row(name, ProgressBar(total=max(st["total"], 1), completed=st["done"]),
                  f"{st['done']}/{st['total']}", Text(str(st["failed"] or ""), style="red"),
                  "-" if rate is None else f"{rate:.1f}", _duration(st["eta_seconds"]), usd(st["cost_usd"]))
    return t


def _line(*parts: str) -> Text:
    return Text("  ".join(p for p in parts if p), no_wrap=True, overflow="ellipsis")


def book_view(s: dict, stale: str | None = None) -> Panel:
    """One book: stages, costs, the run's activity and its last errors."""
    run = s["run"]
    budget = ("no budget" if s["budget_usd"] is None else
              f"budget {usd(s['budget_usd'])}, left {usd(s['budget_left_usd'])}")
    rate = s["pages_per_minute"]
    lines: list[RenderableType] = [
        _stages(s),
        _line(f"cost: this run {usd(s['run_cost_usd'])}", f"all runs {usd(s['total_cost_usd'])}",
              f"{usd(s['cost_per_page_usd'])}/page"),
        _line(f"projected {usd(s['projected_total_usd'])}", budget),
    ]
    if s["pages_to_review"]:
        lines.append(Text(to_review(s), style="yellow", no_wrap=True, overflow="ellipsis"))
    if run is not None:
        when = (f"since {_clock(run['started_at'])}" if s["state"] == "running" else
                f"{_clock(run['started_at'])} to {_clock(run['ended_at'])}")
        lines.append(_line(
            f"run {run['run_id']} {run['status']} {when}", "" if rate is None else f"{rate:.1f} pages/min",
            f"ETA {_duration(s['eta_seconds'])}" if s["state"] == "running" else ""))
        lines.append(_line(f"calls in flight {s['calls_in_flight']}", f"retries {s['retries']}"))
    for e in s["recent_errors"][:SHOWN_ERRORS]:
        page = f" p{e['page']}" if e["page"] else ""
        lines.append(Text(f"{_clock(e['at'])} {e['stage']}{page}: {e['error']}", style="red",
                          no_wrap=True, overflow="ellipsis"))
    if stale:
        lines.append(Text(f"stale, from {_clock(s['at'])}: {stale}", style="yellow",
                          no_wrap=True, overflow="ellipsis"))
    title = Text.assemble((s["book"], "bold"), "  ", _state(s["state"]), f"  {pages(s['pages'])}")
    return Panel(Group(*lines), title=title, title_align="left")


def _others(books: list[dict]) -> Table:
    """Books not running, one line each: their final state."""
    t = Table("book", "state", "pages", "cost", box=None, padding=(0, 1), pad_edge=False,
              header_style="dim")
    for s in books:
        t.add_row(s["book"], _state(s["state"]), str(s["pages"]), usd(s["total_cost_usd"]))
    return t


def view(report: dict, stale: dict[str, str] | None = None, detail_all: bool = False) -> RenderableType:
    """A monitor report (pipeline.monitor.monitor_report) drawn: one book, or several with
    the library's totals. Only running books get a full panel, unless `detail_all` (books
    named on the command line)."""
    stale = stale or {}
    if "books" not in report:
        return book_view(report, stale.get(report["book"]))
    n = len(report["books"])
    # the figures first: a long books_dir is what an 80-column line cuts
    header = _line(f"{n} book{'s' if n != 1 else ''}", f"this run {usd(report['run_cost_usd'])}",
                   f"all runs {usd(report['total_cost_usd'])}", f"in {report['books_dir']}")
    detailed = [b for b in report["books"] if detail_all or b["state"] == "running"]
    rest = [b for b in report["books"] if b not in detailed]
    parts: list[RenderableType] = [header]
    cap = report["library_budget"]
    if cap is not None and cap["budget_usd"] is not None:
        parts.append(_line(f"{len(report['books_running'])} running", f"library budget {usd(cap['budget_usd'])}",
                           f"spent {usd(cap['spent_usd'])}",
                           f"held {usd(cap['reserved_usd'])}",
                           f"left {usd(cap['left_usd'])}"))
    parts += [book_view(b, stale.get(b["book"])) for b in detailed]
    if rest:
        parts.append(_others(rest))
    return Group(*parts)


def fleet_view(r: dict) -> RenderableType:
    """The fleet (AR_LEDGER): its books being run, budgets, rate, workers and their calls in
    flight, workers whose lease lapsed, the last errors."""
    states = [b["state"] for b in r["running"]]
    parts: list[RenderableType] = [_line(  # the figures first: a long URL is what an 80-column line cuts
        f"{r['books']} books", f"{states.count('running')} running",
        f"{states.count('lapsed')} lapsed" if "lapsed" in states else "",
        f"{r['pages_per_minute']:.1f} pages/min", f"{r['calls_in_flight']} in flight", f"fleet {r['ledger']}")]
    lib = r["budgets"].get("library")
    if lib is not None:
        parts.append(_line("library: no budget" if lib["budget_usd"] is None else
                           f"library budget {usd(lib['budget_usd'])}", f"spent {usd(lib['spent_usd'])}",
                           f"held {usd(lib['reserved_usd'])}",
                           "" if lib["left_usd"] is None else f"left {usd(lib['left_usd'])}"))
    rate = r["rate"]
    if rate is not None:
        parts.append(_line(f"rate limit {rate['per_minute']:.0f} calls/min",
                           f"next free slot in {rate['queued_s']:.1f} s" if rate["queued_s"] else "",
                           f"paused {rate['paused_for_s']:.0f} s (429)" if rate["paused_for_s"] else ""))
    t = Table("book", "state", "stages", "/min", "cost", "left", "in flight", box=None, padding=(0, 1),
              pad_edge=False, header_style="dim")
    for b in r["running"]:
        stages = " ".join(f"{n} {s['done']}/{'?' if s['total'] is None else s['total']}" for n, s in b["stages"].items())
        t.add_row(b["book"], _state(b["state"]), stages, f"{b['pages_per_minute']:.1f}", usd(b["cost_usd"]),
                  "-" if b["budget_left_usd"] is None else usd(b["budget_left_usd"]), str(b["calls_in_flight"]))
    parts.append(t)
    w = Table("worker", "host", "pid", "book", "in flight", "held", "lease", box=None, padding=(0, 1),
              pad_edge=False, header_style="dim")
    for x in r["workers"]:
        w.add_row(str(x["holder"]), x["host"] or "-", str(x["pid"] or "-"), x["book"] or "-",
                  str(x["calls_in_flight"]), usd(x["reserved_usd"]), "held")
    for x in r["lapsed_workers"]:
        w.add_row(str(x["holder"]), x["host"] or "-", str(x["pid"] or "-"), x["book"] or "-",
                  str(x["calls_in_flight"]), usd(x["reserved_usd"]),
                  Text(f"lapsed {_duration(x['lapsed_for_s']) or '0:00:00'} ago", style="bold red"))
    parts.append(w)
    for e in r["recent_errors"][:SHOWN_ERRORS]:
        page = f" p{e['page']}" if e["page"] else ""
        parts.append(Text(f"{_clock(e['at'])} {e['book']} {e['stage']}{page}: {e['error']}", style="red",
                          no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


def print_once(report: dict, detail_all: bool = False) -> None:
    ReportConsole(highlight=False).print(fleet_view(report) if "workers" in report else view(report, detail_all=detail_all))


class Watcher:
    """The books' latest snapshots, refreshed on demand. A book whose ledger cannot be read
    this time keeps its last good snapshot, with the error (shown as stale). A book not running
    whose files have not moved since (ledger_stamp) keeps its snapshot unread: a library's
    view refreshed twice a second reads only the books that change."""

    def __init__(self, library: Library, book_ids: list[str], default_budget_usd: float | None):
        self.library = library
        # named books are checked once, up front (an unknown one is an error); the
        # library's are listed again at each refresh, so books added meanwhile appear
        self.named = [library.existing(b) for b in book_ids]
        self.default_budget_usd = default_budget_usd
        self.last: dict[str, dict] = {}
        self.stale: dict[str, str] = {}
        self.stamps: dict[str, tuple | None] = {}  # each book's ledger_stamp when last read

    def refresh(self) -> dict:
        books = self.named or self.library.books()
        for book in books:
            stamp = ledger_stamp(book)
            last = self.last.get(book.id)
            if stamp is not None and stamp == self.stamps.get(book.id) and last["state"] != "running":
                continue
            try:
                self.last[book.id] = book_snapshot(book, self.default_budget_usd)
                self.stamps[book.id] = stamp if ledger_stamp(book) == stamp else None  # moved meanwhile: read again
                self.stale.pop(book.id, None)
            except UsageError:
                raise  # a setting that can never work (AR_LEDGER): said once, not shown as stale
            except (*ledger_errors(), ArError) as e:
                self.stale[book.id] = str(e)
        shown = [self.last[b.id] for b in books if b.id in self.last]
        if len(self.named) == 1 and shown:
            return shown[0]
        return library_snapshot(self.library, shown)

    def view(self) -> RenderableType:
        report = self.refresh()
        unread = [f"{b}: {e}" for b, e in self.stale.items() if b not in self.last]
        footer = _line(f"updated {_clock(time.time())}", "Ctrl-C to quit")
        return Group(view(report, self.stale, detail_all=bool(self.named)),
                     *(Text(u, style="red", no_wrap=True, overflow="ellipsis") for u in unread), footer)


class FleetWatcher:
    """The fleet's view, refreshed on demand over one read-only connection (one transaction a
    refresh); when the ledger cannot be read, the last view stays, marked stale."""

    def __init__(self, library: Library, url: str):
        self.library, self.url = library, url
        self.conn = None
        self.last: dict | None = None

    def view(self) -> RenderableType:
        from infra.pg_ledger import connect

        stale = None
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.url, read_only=True)
            self.last = fleet_report(self.library, self.url, self.conn)
        except UsageError:
            raise  # as for a book's
        except (*ledger_errors(), ArError) as e:
            if self.conn is not None:
                self.conn.close()
            stale = str(e).strip().splitlines()[0]
        parts: list[RenderableType] = [] if self.last is None else [fleet_view(self.last)]
        if stale:
            parts.append(Text(f"stale: {stale}", style="yellow", no_wrap=True, overflow="ellipsis"))
        return Group(*parts, _line(f"updated {_clock(time.time())}", "Ctrl-C to quit"))


def watch(library: Library, book_ids: list[str], default_budget_usd: float | None,
          interval: float = REFRESH_S, console: Console | None = None, fleet: str | None = None) -> int:
    """The live view, until Ctrl-C (exit 0); `fleet`: the PostgreSQL ledger's URL, for its view."""
    watcher = FleetWatcher(library, fleet) if fleet else Watcher(library, book_ids, default_budget_usd)
    try:
        with Live(console=console or Console(highlight=False), auto_refresh=False) as live:
            while True:
                live.update(watcher.view(), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0
