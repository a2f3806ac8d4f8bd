"""Calls admitted per second by the fleet's PostgreSQL ledger, at 1, 8 and 32 clients.

A real PostgreSQL server (tests/pgserver.py: initdb in a temp folder, fsync off as in the
tests), a fresh database. Each client is a process with its own writer (PgLedger.open_writer,
its lease renewed by its thread) on a book of its own; it loops for DURATION_S over one call's
two transactions: admission (begin_call with a reservation: the book's and the library's budget
rows locked in order, both capped high, a slot of the fleet's rate taken, the call inserted
pending) and settlement (finish_call: the reservation replaced by the cost in both rows). Every
call falls under the one library row, so the clients queue on it: this is the fleet's
serialisation point. Figure: admitted calls (settled too) per second, all clients together.
The machine's cores are shared with the server and with every client: the figure measures
that, not a server of its own. Afterwards the check of invariant 4 must hold (budgets()).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time

DURATION_S = 5.0
CLIENTS = (1, 8, 32)


def client(url: str, index: int, start_at: float, results) -> None:
    from infra.pg_ledger import PgLedger, PgLibrary

    ledger = PgLedger.open_writer(url, f"book{index}")
    ledger.run_budget(1e9)
    run = ledger.start_run(os.getpid(), "bench")
    while time.time() < start_at:
        time.sleep(0.001)
    end, calls = start_at + DURATION_S, 0
    while time.time() < end:
        call = ledger.begin_call(run, "correct", calls, "m/bench", 1, reserve_usd=0.01)
        ledger.finish_call(call, "ok", computed_cost=0.001)
        calls += 1
    ledger.end_run(run, "done")
    ledger.close()
    results.put(calls)


def measure(url: str, clients: int) -> float:
    results = multiprocessing.Queue()
    start_at = time.time() + 1.0 + clients * 0.05  # every client connected first
    procs = [multiprocessing.Process(target=client, args=(url, i, start_at, results)) for i in range(clients)]
    for p in procs:
        p.start()
    total = sum(results.get() for _ in procs)
    for p in procs:
        p.join()
    return total / DURATION_S


def main() -> None:
    from infra.pg_ledger import PgLedger, PgLibrary
    from tests.pgserver import PgServer

    server = PgServer().start()
    try:
        print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores", file=sys.stderr)
        for clients in CLIENTS:
            url = server.new_database()
            ledger = PgLedger.open_writer(url, "setup")
            ledger.set_rate(1e9)  # a rate to take a slot of, never waited for
            ledger.close()
            library = PgLibrary.open(url)
            library.set_limit(1e9)
            library.close()
            rate = measure(url, clients)
            checks = PgLedger.read(url, "book0", lambda led: led.budgets(), {})
            assert all(row["agrees"] for row in checks.values()), checks
            print(f"{clients:>3} clients: {rate:8.1f} calls admitted and settled per second", flush=True)
    finally:
        server.close()


if __name__ == "__main__":
    main()
