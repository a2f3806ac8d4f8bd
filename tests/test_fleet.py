"""The fleet's ledger under fire: real `ar.py` processes on a PostgreSQL ledger (a real server,
tests/pgserver.py) against the local OpenRouter-compatible server. Each scenario ends with the
same checks (check_fleet): the ledger equals the server's bill, per generation and in total; no
call is left pending; every budget row equals the calls it covers and no cap was passed; every
page done once, by one writer."""
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from infra.checkpoint import CALL_COST
from infra.books import Book
from infra.pg_ledger import RATE_BURST, PgLedger, PgLibrary, import_book
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


def test_a_call_is_refused_not_kept_waiting_for_room_that_a_dead_writers_calls_hold(pg_url):
    """A writer killed with calls in flight leaves their reservations until a run of its book
    settles them: a call that fits only once they are freed would wait for ever (two runs did,
    past SIGTERM). It waits for the room live writers' calls hold, and is refused beyond."""
    from infra.errors import LibraryBudgetReached
    from infra.budget import NotYet

    library = PgLibrary.open(pg_url, create=True)
    library.set_limit(1.0)
    library.close()
    dead, live = PgLedger.open_writer(pg_url, "a"), PgLedger.open_writer(pg_url, "b")
    dead.begin_call(dead.start_run(1, "t"), "correct", 1, "m", 1, reserve_usd=0.6)
    run = live.start_run(2, "t")
    with pytest.raises(NotYet):  # a's call is in flight: its room may come back
        live.begin_call(run, "correct", 1, "m", 1, reserve_usd=0.5)
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a killed: its lease lapses
        conn.execute("UPDATE holders SET lease_until = clock_timestamp() WHERE holder_id = %s", (dead.holder_id,))
    with pytest.raises(LibraryBudgetReached, match=r"\$0.6000 of it held by calls of writers that stopped"):
        live.begin_call(run, "correct", 1, "m", 1, reserve_usd=0.5)
    assert live.begin_call(run, "correct", 1, "m", 1, reserve_usd=0.3)  # fits beside them
    live.close()
    dead.close()


def test_two_runs_of_one_book_at_once_share_its_pages_and_both_finish(sim, books_dir, tmp_path, pg_url):
    """A scheduler that starts a book's run again while the first still runs: each waits for the
    pages the other holds (done there, or free once its lease lapses), and both end done."""
    fleet_book(books_dir, tmp_path, pg_url, "b", 8)
    server = sim("--api-key", KEY, "--latency-ms", "800")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url}
    runs = [start_ar("process", "b", "--workers", "2", *json_or_not, books_dir=books_dir, env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for json_or_not in (["--json"], [])]
    said = []
    for run, shown in zip(runs, ("json", "text")):
        out, err = run.communicate(timeout=240)
        assert run.returncode == 0, err
        if shown == "json":
            assert json.loads(out)["outcome"]["status"] == "done"
        else:  # the book is done, whichever run ended first: not "the stages asked for are done"
            assert "book 'b' done." in out or "book 'b': every stage is through." in out, out
        said += [line for line in err.splitlines() if "held by another writer: waiting" in line]
    assert 1 <= len(said) <= 2  # the wait is said, once a run
    by_run = Counter(done_pages(pg_url, "b").values())
    assert sorted(done_pages(pg_url, "b")) == list(range(1, 9)) and len(by_run) == 2  # both did some
    assert query(pg_url, "SELECT stage, attempts FROM pages WHERE book = 'b' AND page = 0 ORDER BY stage") == [
        ("layout", 1), ("merge", 1)]  # each book stage once, by one of them
    assert (books_dir / "b" / "book.md").read_text().strip()
    check_fleet(pg_url, server, {"b": 8})


def test_a_run_settles_at_its_end_the_calls_of_a_writer_killed_during_it(sim, books_dir, tmp_path, pg_url):
    """Two runs of one book; one is killed mid-call after the other began (whose start found
    nothing to sweep). The survivor does the dead one's pages once its lease lapses, and at its
    end settles the dead one's calls: its book's cost is the bill, no reservation left held."""
    fleet_book(books_dir, tmp_path, pg_url, "b", 8)
    server = sim("--api-key", KEY, "--latency-ms", "1500")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url}
    args = ("process", "b", "--stages", "correct", "--workers", "2")
    doomed = start_ar(*args, books_dir=books_dir, env={**env, "AR_LEASE_S": "2"})
    wait_for(lambda: pending(pg_url) >= 1)
    survivor = start_ar(*args, books_dir=books_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: query(pg_url, "SELECT COUNT(*) FROM runs WHERE pid = %s", (survivor.pid,))[0][0] == 1)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    left = query(pg_url, "SELECT COUNT(*) FROM calls c JOIN holders h USING (holder_id) WHERE c.status = 'pending'"
                         " AND h.pid = %s", (doomed.pid,))[0][0]
    _, err = survivor.communicate(timeout=240)
    assert survivor.returncode == 0, err
    assert left >= 1 and sorted(done_pages(pg_url, "b")) == list(range(1, 9))
    check_fleet(pg_url, server, {"b": 8})  # nothing pending, the ledger equal to the bill


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


@pytest.fixture(scope="session")
def ocr_done(tmp_path_factory):
    """put(books_dir, url, book): a 6-page book of real prose, its OCR done once for the session
    (SQLite), copied to `books_dir` and its ledger imported into the database at `url`."""
    template = tmp_path_factory.mktemp("fleet-book")
    for args in (("add", str(text_pages(template / "scans", 6)), "--id", "book"), ("process", "book", "--stages", "ocr")):
        r = run_ar(*args, books_dir=template / "books", env={"AR_LEDGER": ""})
        assert r.returncode == 0, r.stderr

    def put(books_dir, url: str, book: str) -> None:
        import_book(url, Book(Path(shutil.copytree(template / "books" / "book", books_dir / book))))

    return put


def requests_at(log) -> list[float]:
    """When each chat request arrived at the server (its --log-requests file), in order."""
    return [json.loads(line)["received_at"] for line in log.read_text().splitlines()]


def correct_both(books_dir, env: dict, *extra: str) -> list[subprocess.Popen]:
    """Two drivers, one on each of the books b1 and b2, at once."""
    return [start_ar("process", book, "--stages", "correct", *extra, books_dir=books_dir, env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for book in ("b1", "b2")]


def finish(procs: list[subprocess.Popen]) -> tuple[list[int], list[str]]:
    outputs = [p.communicate(timeout=240) for p in procs]
    return [p.returncode for p in procs], [out + err for out, err in outputs]


def test_one_rate_limit_for_the_fleet_measured_at_the_server(sim, books_dir, tmp_path, pg_url, ocr_done):
    """AR_RPM with AR_LEDGER is the fleet's one rate: two drivers together stay within it (plus
    its burst), where each alone, at that rate, would make the pair pass it twice over, and
    they get its slots in turn."""
    for book in ("b1", "b2"):
        ocr_done(books_dir, pg_url, book)
    log = tmp_path / "requests.jsonl"
    server = sim("--api-key", KEY, "--latency-ms", "100", "--log-requests", str(log))
    per_second = 2.0
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url, "AR_RPM": str(per_second * 60)}
    codes, outputs = finish(correct_both(books_dir, env, "--workers", "2"))
    assert codes == [0, 0], outputs
    at = requests_at(log)
    assert len(at) == 12
    # in any span of requests, at most the burst plus the rate times the span, and the time a
    # call admitted by the ledger may take to reach the server (0.5 s, on a loaded machine)
    for i in range(len(at)):
        for j in range(i + 1, len(at)):
            assert j - i + 1 <= RATE_BURST + (at[j] - at[i] + 0.5) * per_second, (i, j, at)
    spans = query(pg_url, "SELECT MIN(started_at), MAX(ended_at) FROM calls GROUP BY book")
    assert min(end for _, end in spans) - max(start for start, _ in spans) > 1.0  # the drivers ran together
    # and took turns: while both were asking, neither had more calls in a row than its workers
    # (a bucket that the writers polled gave every token to one of them until it was done)
    order = [book for book, in query(pg_url, "SELECT book FROM calls ORDER BY started_at")]
    both = order[max(map(order.index, ("b1", "b2"))):
                 min(len(order) - order[::-1].index(book) for book in ("b1", "b2"))]
    assert len(both) >= 6 and max(len(list(run)) for _, run in itertools.groupby(both)) <= 2, order
    assert query(pg_url, "SELECT per_second FROM rate")[0][0] == per_second  # kept for the runs after
    check_fleet(pg_url, server, {"b1": 6, "b2": 6})


def test_rate_slots_come_in_turn_and_a_pause_moves_the_waiting_ones_back(pg_url):
    """At 2 calls a second, three calls admitted at once get slots now, 0.5 s and 1 s on; a 2 s
    pause moves the slots not yet reached back by 2 s, and the next call's slot comes after them."""
    ledger = PgLedger.open_writer(pg_url, "b")
    try:
        run = ledger.start_run(os.getpid(), "test")
        ledger.set_rate(120)
        waits = [ledger.slot_wait(ledger.begin_call(run, "correct", page, "m", 1)) for page in (1, 2, 3)]
        assert waits[0] == (0.0, 0.0)
        assert 0.4 < waits[1][0] <= 0.5 and 0.9 < waits[2][0] <= 1.0
        ledger.pause_fleet(2.0)
        moved, shift = ledger.pauses_since(waits[2][1])
        assert moved == pytest.approx(2.0, abs=0.05) and ledger.pauses_since(shift)[0] == 0
        wait, _ = ledger.slot_wait(ledger.begin_call(run, "correct", 4, "m", 1))
        assert 3.3 < wait <= 3.5  # after the third's slot, moved: 1.5 s + 2 s
    finally:
        ledger.close()


def test_a_429_with_retry_after_pauses_the_whole_fleet(sim, books_dir, tmp_path, pg_url, ocr_done):
    """The server answers its 4th request 429 with Retry-After 2 s: from then on, for 2 s, no
    driver sends anything (not only the one that got it); then both go on and finish."""
    for book in ("b1", "b2"):
        ocr_done(books_dir, pg_url, book)
    log = tmp_path / "requests.jsonl"
    pause = 2.0
    server = sim("--api-key", KEY, "--latency-ms", "300", "--fail-429-request", "4", "--retry-after", str(pause),
                 "--log-requests", str(log))
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url}
    codes, outputs = finish(correct_both(books_dir, env, "--workers", "1"))
    assert codes == [0, 0], outputs
    at = requests_at(log)
    assert len(at) == 13  # each page once, and the refused one again
    refused = at[3]
    (until,), = query(pg_url, "SELECT extract(epoch from paused_until)::float8 FROM rate") or [(None,)]
    noted = until - pause if until else refused  # when the ledger noted the pause (this machine's clock)
    # from 0.25 s after (a call admitted just before it may still be on its way) to its end
    sent = [t - noted for t in at if noted + 0.25 < t < noted + pause]
    assert sent == [], sent
    assert until and noted - refused < 1.0  # the pause was noted as soon as the 429 came
    assert query(pg_url, "SELECT COUNT(*) FROM calls WHERE error LIKE 'HTTP 429%%'")[0][0] == 1
    check_fleet(pg_url, server, {"b1": 6, "b2": 6})
    for book in ("b1", "b2"):
        assert sorted(done_pages(pg_url, book)) == list(range(1, 7))


def test_library_budget_from_the_command_line_caps_two_drivers(sim, books_dir, tmp_path, pg_url, ocr_done):
    """`--library-budget` with AR_LEDGER sets the ledger's library row: two drivers on two books
    stop on it (exit 3) without passing it; it is kept, so a later run without it stops on it too."""
    for book in ("b1", "b2"):
        ocr_done(books_dir, pg_url, book)
    server = sim("--api-key", KEY, "--latency-ms", "200", "--jitter-ms", "300")
    env = {**llm_env(server, tmp_path), "AR_LEDGER": pg_url}
    limit = 0.004
    codes, outputs = finish(correct_both(books_dir, env, "--workers", "2", "--library-budget", str(limit), "--force"))
    assert 3 in codes and set(codes) <= {0, 3}, outputs
    assert any("library budget reached" in out for out in outputs), outputs
    budgets = check_fleet(pg_url, server, {"b1": 6, "b2": 6})
    assert budgets["library"]["limit_usd"] == limit
    assert 0 < budgets["library"]["spent_usd"] <= limit
    assert budgets["book:b1"]["spent_usd"] > 0 and budgets["book:b2"]["spent_usd"] > 0  # both had a share
    assert len(done_pages(pg_url, "b1")) + len(done_pages(pg_url, "b2")) < 12  # the cap stopped them
    stopped = ("b1", "b2")[codes.index(3)]
    again = run_ar("process", stopped, "--stages", "correct", books_dir=books_dir, env=env)  # the cap is kept
    assert again.returncode == 3 and "library budget" in again.stdout + again.stderr, again.stdout + again.stderr
    assert query(pg_url, f"SELECT COALESCE(SUM({CALL_COST}), 0)::float8 FROM calls")[0][0] <= limit
    shown = json.loads(run_ar("library", "--json", books_dir=books_dir, env=env).stdout)["library_budget"]
    assert shown["budget_usd"] == limit and shown["calls_held"] == 0
    assert shown["spent_usd"] == pytest.approx(server.credits(), abs=1e-9)
    # every budget row equals the calls it counts
    check = run_ar("library", "--check", "--json", books_dir=books_dir, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["ok"] and report["rows_total_usd"] == pytest.approx(server.credits(), abs=1e-9)
    assert {b["book"] for b in report["books"]} >= {"b1", "b2"}
