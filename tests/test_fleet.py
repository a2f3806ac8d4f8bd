"""The fleet's ledger under fire: real `ar.py` processes on a PostgreSQL ledger (a real server,
tests/pgserver.py) against the local OpenRouter-compatible server. Each scenario ends with the
same checks (check_fleet): the ledger equals the server's bill, per generation and in total; no
call is left pending; every budget row equals the calls it covers and no cap was passed; every
page done once, by one writer."""
import signal
import subprocess
import threading
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from infra.checkpoint import CALL_COST
from infra.pg_ledger import PgLedger
from tests.conftest import llm_env, run_ar, start_ar, text_pages

pytestmark = pytest.mark.fleet
KEY = "sk-or-v1-fleet-0123456789abcdef"


def fleet_book(books_dir, tmp_path, url: str, book: str, pages: int) -> None:
    """A book of real prose, its OCR done, its ledger in the database at `url`."""
    scans = text_pages(tmp_path / f"scans-{book}", pages)
    for args in (("add", str(scans), "--id", book), ("process", book, "--stages", "ocr")):
        r = run_ar(*args, books_dir=books_dir, env={"AR_LEDGER": url})
        assert r.returncode == 0, r.stderr


def query(url: str, sql: str, params=()):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.05)


def pending(url: str) -> int:
    return query(url, "SELECT COUNT(*) FROM calls WHERE status = 'pending'")[0][0]


def check_fleet(url: str, server, books: dict[str, int], stage: str = "correct") -> dict:
    """The checks every scenario ends with; returns the budget rows."""
    assert pending(url) == 0
    recorded = dict(query(url, f"SELECT generation_id, SUM({CALL_COST})::float8 FROM calls"
                               f" WHERE generation_id IS NOT NULL GROUP BY generation_id"))
    billed = {g["id"]: g["cost"] for g in server.generations()["data"] if g["cost"]}
    assert billed, "nothing was billed: the scenario did not run"
    for generation, cost in billed.items():
        assert recorded.get(generation) == pytest.approx(cost, abs=1e-12), generation
    total = query(url, f"SELECT COALESCE(SUM({CALL_COST}), 0)::float8 FROM calls WHERE book = ANY(%s)",
                  (list(books),))[0][0]  # the books this server served (a shared database holds others)
    assert total == pytest.approx(server.credits(), abs=1e-9)
    budgets = PgLedger.read(url, next(iter(books)), lambda ledger: ledger.budgets(), {})
    for scope, row in budgets.items():
        assert row["agrees"] and row["reserved_usd"] == 0, (scope, row)
        assert row["limit_usd"] is None or row["spent_usd"] <= row["limit_usd"], (scope, row)
    for book in books:  # a done page was marked once, by the writer that held it
        rows = query(url, "SELECT page, attempts FROM pages WHERE book = %s AND stage = %s AND status = 'done'",
                     (book, stage))
        assert all(attempts == 1 for _, attempts in rows), rows
    return budgets


def done_pages(url: str, book: str, stage: str = "correct") -> dict[int, int]:
    """page -> the run that marked it done."""
    return dict(query(url, "SELECT page, run_id FROM pages WHERE book = %s AND stage = %s AND status = 'done'",
                      (book, stage)))


def test_a_writer_stopped_past_its_lease_marks_nothing_when_it_goes_on(sim, books_dir, tmp_path, pg_url):
    fleet_book(books_dir, tmp_path, pg_url, "b", 4)
    server = sim("--api-key", KEY, "--latency-ms", "1500")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url, "AR_LEASE_S": "6"}
    zombie = start_ar("process", "b", "--stages", "correct", books_dir=books_dir, env=env,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: pending(pg_url) >= 1)  # its calls are in flight
        zombie.send_signal(signal.SIGSTOP)
        wait_for(lambda: query(pg_url, "SELECT bool_and(lease_until < clock_timestamp()) FROM holders"
                                       " WHERE pid = %s", (zombie.pid,))[0][0])
        taker = run_ar("process", "b", "--stages", "correct", books_dir=books_dir, env=env)
        assert taker.returncode == 0, taker.stderr
    finally:
        zombie.send_signal(signal.SIGCONT)
    _, err = zombie.communicate(timeout=120)
    assert zombie.returncode == 1 and "lease" in err, err
    runs = {pid: run for run, pid in query(pg_url, "SELECT run_id, pid FROM runs WHERE command LIKE %s", ("%correct%",))}
    assert set(done_pages(pg_url, "b").items()) == {(p, runs[next(p for p in runs if p != zombie.pid)])
                                                     for p in range(1, 5)}
    check_fleet(pg_url, server, {"b": 4})


def test_every_connection_killed_again_and_again_the_run_pauses_and_goes_on(sim, books_dir, tmp_path, pg_url,
                                                                           pg_server):
    fleet_book(books_dir, tmp_path, pg_url, "b", 6)
    server = sim("--api-key", KEY, "--latency-ms", "300", "--jitter-ms", "300")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url, "AR_LEASE_S": "20"}
    proc = start_ar("process", "b", "--stages", "correct", "--workers", "3", books_dir=books_dir, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dbname = urlsplit(pg_url).path.lstrip("/")
    killed = []

    def killer():
        end = time.monotonic() + 4
        while time.monotonic() < end and proc.poll() is None:
            killed.append(pg_server.terminate_all(dbname))
            time.sleep(0.5)

    wait_for(lambda: pending(pg_url) >= 1)
    thread = threading.Thread(target=killer)
    thread.start()
    _, err = proc.communicate(timeout=240)
    thread.join()
    assert proc.returncode == 0, err
    assert sum(killed) >= 2  # the run's connections were cut, more than once
    assert sorted(done_pages(pg_url, "b")) == list(range(1, 7))
    check_fleet(pg_url, server, {"b": 6})


def test_postgresql_restarted_immediately_mid_run(sim, books_dir, tmp_path, pg_url, pg_server):
    fleet_book(books_dir, tmp_path, pg_url, "b", 6)
    server = sim("--api-key", KEY, "--latency-ms", "400", "--jitter-ms", "300")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url, "AR_LEASE_S": "30"}
    proc = start_ar("process", "b", "--stages", "correct", "--workers", "3", books_dir=books_dir, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: pending(pg_url) >= 1)
    pg_server.restart_immediate()
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert "out of reach" in err  # it saw the outage, and waited
    assert sorted(done_pages(pg_url, "b")) == list(range(1, 7))
    check_fleet(pg_url, server, {"b": 6})


def test_two_processes_on_two_books_under_one_library_budget(sim, books_dir, tmp_path, pg_url):
    for book in ("b1", "b2"):
        fleet_book(books_dir, tmp_path, pg_url, book, 5)
    server = sim("--api-key", KEY, "--latency-ms", "200", "--jitter-ms", "400")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url}
    limit = 0.0035
    ledger = PgLedger.open_writer(pg_url, "b1")
    ledger.set_budget_limit("library", limit)
    ledger.close()
    procs = [start_ar("process", book, "--stages", "correct", "--workers", "2", books_dir=books_dir, env=env,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for book in ("b1", "b2")]
    codes = [p.wait(timeout=240) for p in procs]
    assert 3 in codes and set(codes) <= {0, 3}, [p.stderr.read() for p in procs]
    budgets = check_fleet(pg_url, server, {"b1": 5, "b2": 5})
    library = budgets["library"]
    assert library["spent_usd"] <= limit
    assert budgets["book:b1"]["spent_usd"] + budgets["book:b2"]["spent_usd"] == pytest.approx(library["spent_usd"])
    assert budgets["book:b1"]["spent_usd"] > 0 and budgets["book:b2"]["spent_usd"] > 0  # both had a share
    assert len(done_pages(pg_url, "b1")) + len(done_pages(pg_url, "b2")) < 10  # the cap stopped them
