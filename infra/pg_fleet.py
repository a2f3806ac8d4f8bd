"""What the monitor shows of a fleet (AR_LEDGER=postgresql://...): every writer on every machine,
read from the PostgreSQL ledger in one read-only transaction per refresh.

It never scans every call or every page: it reads the books being run (the runs still
`running`: index runs_running), their pages (by book: the primary key), the calls in flight
(`pending`: index calls_pending), the budget rows (each book's spent and held, kept beside its
calls: infra/pg_ledger.py), the fleet's rate and its next free slot, and the last errors (indexes calls_errors,
pages_failed). `tests/test_fleet_monitor.py` checks each query's plan.
"""
from __future__ import annotations

from infra.pg_ledger import LIBRARY, connect, describe

# name -> SQL; each takes at most the one parameter `limit`
QUERIES = {
    "now": "SELECT extract(epoch from clock_timestamp())::float8, (SELECT COUNT(*) FROM books)",
    "runs": (
        "SELECT r.book, r.run_id, r.started_at, r.holder_id FROM runs r WHERE r.status = 'running'"
        " ORDER BY r.book, r.run_id"),
    "stages": (
        "SELECT p.book, p.stage, COUNT(*) FILTER (WHERE p.status = 'done'),"
        " COUNT(*) FILTER (WHERE p.status = 'failed'),"
        " COUNT(*) FILTER (WHERE p.status = 'done' AND p.run_id = ANY(r.runs))"
        " FROM (SELECT book, array_agg(run_id) AS runs FROM runs WHERE status = 'running' GROUP BY book) r"
        " JOIN pages p ON p.book = r.book GROUP BY p.book, p.stage ORDER BY p.book, p.stage"),
    "in_flight": (
        "SELECT holder_id, book, COUNT(*), SUM(reserved_usd)::float8 FROM calls WHERE status = 'pending'"
        " GROUP BY holder_id, book"),
    "holders": (
        "SELECT h.holder_id, h.book, h.pid, h.host, h.lease_until > clock_timestamp(),"
        " extract(epoch from clock_timestamp() - h.lease_until)::float8 FROM holders h WHERE h.holder_id IN ("
        "  SELECT holder_id FROM calls WHERE status = 'pending'"
        "  UNION SELECT holder_id FROM runs WHERE status = 'running') ORDER BY h.holder_id"),
    "budgets": (
        "SELECT scope, limit_usd::float8, spent_usd::float8, reserved_usd::float8 FROM budgets"
        f" WHERE scope = '{LIBRARY}' OR scope IN (SELECT 'book:' || book FROM runs WHERE status = 'running')"
        " ORDER BY scope"),
    "rate": (
        "SELECT per_second * 60, GREATEST(0, extract(epoch from next_at - clock_timestamp()))::float8,"
        " GREATEST(0, extract(epoch from paused_until - clock_timestamp()))::float8 FROM rate WHERE name = 'provider'"),
    "errors": (
        "SELECT * FROM ("
        " (SELECT COALESCE(ended_at, started_at) AS at, book, holder_id, stage, page, error FROM calls"
        "  WHERE error IS NOT NULL ORDER BY COALESCE(ended_at, started_at) DESC LIMIT %(limit)s)"
        " UNION ALL"
        " (SELECT updated_at, book, holder_id, stage, page, error FROM pages WHERE status = 'failed'"
        "  ORDER BY updated_at DESC LIMIT %(limit)s)) e ORDER BY at DESC LIMIT %(limit)s"),
}


def fleet_figures(url: str, errors: int = 5, conn=None) -> dict:
    """The fleet as the ledger has it now, from one read-only snapshot (see the module's
    docstring); `conn`: a read-only connection to reuse (the live view keeps one)."""
    own = conn is None
    conn = conn or connect(url, read_only=True)
    try:
        with conn.transaction():
            rows = {name: conn.execute(sql, {"limit": errors}).fetchall() for name, sql in QUERIES.items()}
    finally:
        if own:
            conn.close()
    (now, books), = rows["now"]
    running: dict[str, dict] = {}
    for book, run_id, started_at, holder in rows["runs"]:
        b = running.setdefault(book, {"book": book, "runs": [], "started_at": started_at, "stages": {},
                                      "calls_in_flight": 0, "holders": []})
        b["runs"].append(run_id)
        b["holders"].append(holder)
        b["started_at"] = min(b["started_at"], started_at)
    for book, stage, done, failed, in_run in rows["stages"]:
        running[book]["stages"][stage] = {"done": done, "failed": failed, "done_this_run": in_run}
    in_flight: dict[int, list] = {}
    for holder, book, n, reserved in rows["in_flight"]:
        in_flight.setdefault(holder, []).append((book, n, reserved or 0.0))
        if book in running:
            running[book]["calls_in_flight"] += n
    workers, lapsed = [], []
    for holder, book, pid, host, live, past in rows["holders"]:
        calls = in_flight.get(holder, [])
        w = {"holder": holder, "book": book, "pid": pid, "host": host,
             "calls_in_flight": sum(n for _, n, _ in calls), "reserved_usd": sum(r for _, _, r in calls),
             "running": any(holder in b["holders"] for b in running.values())}
        if live:
            workers.append(w)
        else:
            lapsed.append({**w, "lapsed_for_s": past})
    budgets = {scope: {"budget_usd": limit, "spent_usd": spent, "reserved_usd": reserved,
                       "left_usd": None if limit is None else limit - spent - reserved}
               for scope, limit, spent, reserved in rows["budgets"]}
    rate = None
    if rows["rate"]:
        (per_minute, queued, paused), = rows["rate"]
        rate = {"per_minute": per_minute, "queued_s": queued, "paused_for_s": paused}
    return {
        "ledger": describe(url), "at": now, "books": books, "running": list(running.values()),
        "budgets": budgets, "rate": rate, "workers": workers, "lapsed_workers": lapsed,
        "recent_errors": [dict(zip(("at", "book", "holder", "stage", "page", "error"), r)) for r in rows["errors"]],
    }
