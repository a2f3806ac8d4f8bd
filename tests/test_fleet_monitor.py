"""The monitor's fleet view (AR_LEDGER): real `ar.py` writers on a real PostgreSQL server, one
alive and one SIGKILLed so that its lease lapses, against the local server; `ar.py monitor
--json` and its screen read from the ledger without a scan of every call or page."""
import json
import signal

import psycopg
import pytest

from infra.pg_fleet import QUERIES
from infra.pg_ledger import PgLibrary
from tests.conftest import llm_env, make_book, run_ar, start_ar
from tests.test_fleet import query, wait_for

pytestmark = pytest.mark.fleet
KEY = "sk-or-v1-fleet-monitor-0123456789"


def pending(url: str, book: str) -> int:
    return query(url, "SELECT COUNT(*) FROM calls WHERE status = 'pending' AND book = %s", (book,))[0][0]


def test_the_fleet_view_shows_books_budgets_workers_in_flight_a_lapsed_lease_and_errors(sim, books_dir, tmp_path,
                                                                                        pg_url):
    for book in ("b1", "b2"):
        source = make_book(books_dir, book, 3) / "source"
        for p in (1, 2, 3):
            (source / f"page_{p:04d}.txt").write_text(f"Page {p} of {book}: call me Ishmael.\n")
    server = sim("--api-key", KEY, "--latency-ms", "4000", "--fail-500", "0.5", "--seed", "3")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url}
    library = PgLibrary.open(pg_url, create=True)
    library.set_limit(1.0)
    library.close()
    args = ("--stages", "ocr,correct", "--text-layer", "use", "--workers", "2")
    alive = start_ar("process", "b1", *args, books_dir=books_dir, env=env)
    doomed = start_ar("process", "b2", *args, books_dir=books_dir, env={**env, "AR_LEASE_S": "1"})
    try:
        # its OCR done (the pages go on to correct one by one: a call may be pending before the last is read)
        wait_for(lambda: pending(pg_url, "b2") >= 1 and query(
            pg_url, "SELECT COUNT(*) FROM pages WHERE book = 'b2' AND stage = 'ocr' AND status = 'done'")[0][0] == 3)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        left_behind = pending(pg_url, "b2")
        wait_for(lambda: query(pg_url, "SELECT COUNT(*) FROM holders WHERE book = 'b2'"
                                       " AND lease_until < clock_timestamp()")[0][0] == 1)
        wait_for(lambda: pending(pg_url, "b1") >= 1
                 and query(pg_url, "SELECT COUNT(*) FROM calls WHERE error IS NOT NULL")[0][0] >= 1)
        r = run_ar("monitor", "--json", books_dir=books_dir, env={"AR_LEDGER": pg_url})
        assert r.returncode == 0, r.stderr
        fleet = json.loads(r.stdout)
        screen = run_ar("monitor", "--once", books_dir=books_dir, env={"AR_LEDGER": pg_url, "COLUMNS": "120"})
    finally:
        alive.send_signal(signal.SIGKILL)
        alive.wait()

    assert fleet["books"] == 2
    books = {b["book"]: b for b in fleet["running"]}
    assert books["b1"]["state"] == "running" and books["b2"]["state"] == "lapsed"
    assert books["b2"]["stages"]["ocr"] == {"done": 3, "failed": 0, "done_this_run": 3, "total": 3,
                                            "pages_per_minute": pytest.approx(books["b2"]["stages"]["ocr"]["pages_per_minute"])}
    assert books["b2"]["stages"]["ocr"]["pages_per_minute"] > 0
    assert books["b2"]["calls_in_flight"] == left_behind
    (worker,) = fleet["workers"]  # the live writer, and its calls in flight
    assert worker["pid"] == alive.pid and worker["book"] == "b1" and 1 <= worker["calls_in_flight"] <= 2
    assert worker["reserved_usd"] > 0
    (lapsed,) = fleet["lapsed_workers"]  # the killed one: its lease lapsed, its calls left to the sweeper
    assert lapsed["pid"] == doomed.pid and lapsed["book"] == "b2" and lapsed["lapsed_for_s"] > 0
    assert lapsed["calls_in_flight"] == left_behind >= 1
    library = fleet["budgets"]["library"]
    assert library["budget_usd"] == 1.0
    assert library["left_usd"] == pytest.approx(1.0 - library["spent_usd"] - library["reserved_usd"])
    assert library["reserved_usd"] >= worker["reserved_usd"] + lapsed["reserved_usd"] - 1e-12
    assert set(fleet["budgets"]) == {"library", "book:b1", "book:b2"}
    assert fleet["recent_errors"] and all(e["book"] in ("b1", "b2") for e in fleet["recent_errors"])
    assert any("500" in e["error"] for e in fleet["recent_errors"])
    assert fleet["calls_in_flight"] == worker["calls_in_flight"]
    assert screen.returncode == 0, screen.stderr
    assert "2 books  1 running  1 lapsed" in screen.stdout and "library budget $1.0000" in screen.stdout
    assert "lapsed" in screen.stdout and str(doomed.pid) in screen.stdout and str(alive.pid) in screen.stdout

    # never a scan of every call or every page: each query has an index to go by
    with psycopg.connect(pg_url) as conn:
        conn.execute("SET enable_seqscan = off")
        for name, sql in QUERIES.items():
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, {"limit": 5}).fetchall())
            assert "Seq Scan on calls" not in plan and "Seq Scan on pages" not in plan, (name, plan)
