"""What the ledger costs as a book grows: mark_done, resume planning, a run's peak memory.

(a) mark_done: real ledgers (SQLite files in a temp dir, WAL as Ledger.open_writer sets it)
    of a 100-page and a 10,000-page book, holding two stages' pages (ocr: all done; correct:
    all but the last) and a run's calls (one per corrected page, a failed attempt every 20th
    page, a fix call every 10th). Timed one call at a time, median of 3000: mark_done of the
    last page as a run does it (an insert; the row is deleted again, untimed) and as a
    re-mark (an upsert), in rounds of 100 alternating between the two books. Means include
    WAL checkpoints. Goal: 10,000 / 100 <= 1.2.
(b) resume: a 10,000-page book, 9,000 pages done through echo -> shout (tests/fakestages.py).
    Timed from Ledger.open_writer to Pipeline.plan(pages), doing what pipeline/process.py
    does on the way (start_run, RunContext, stages, page_count); median of 5. Goal < 200 ms.
(c) peak memory: ru_maxrss of a child process running process_book on a fresh 10,000-page
    book through EchoStage (a ledger call and an output file per page). Goal < 200 MB.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra.books import Book
from infra.checkpoint import Ledger
from pipeline.runner import Pipeline
from pipeline.stage import RunContext
from tests.conftest import make_book
from tests.fakestages import ECHO_STAGES

MARKS = 3000


def filled(path: Path, pages: int) -> tuple[Ledger, int]:
    """A ledger whose book's last page is the only one not corrected; and its run."""
    ledger = Ledger.open_writer(path)
    run_id = ledger.start_run(1, "bench")
    with ledger.snapshot():  # one transaction: building is not what is measured
        ledger.mark_done("ocr", pages, run_id)
        for p in range(1, pages):
            ledger.mark_done("ocr", p, run_id)
            if p % 20 == 0:
                c = ledger.begin_call(run_id, "correct", p, "model/a", 1)
                ledger.finish_call(c, "failed", computed_cost=0.0001, error="timeout")
            c = ledger.begin_call(run_id, "correct", p, "model/a", 1 + (p % 20 == 0))
            ledger.finish_call(c, "ok", computed_cost=0.002, provider_cost=0.0021,
                               generation_id=f"gen-{p}")
            if p % 10 == 0:
                c = ledger.begin_call(run_id, "fix", p, "model/b", 1)
                ledger.finish_call(c, "ok", computed_cost=0.01, generation_id=f"gen-fix-{p}")
            ledger.mark_done("correct", p, run_id)
    return ledger, run_id


def time_marks(ledger: Ledger, run_id: int, page: int, out: dict[str, list[int]]) -> None:
    """Time 100 first marks of `page` (inserts: the row is deleted again, untimed), then 100
    re-marks (upserts of the row), in ns."""
    delete = "DELETE FROM pages WHERE stage = 'correct' AND page = ?"
    for kind in ("insert", "remark"):
        if kind == "remark":
            ledger.mark_done("correct", page, run_id)
        for _ in range(100):
            t = time.perf_counter_ns()
            ledger.mark_done("correct", page, run_id)
            out[kind].append(time.perf_counter_ns() - t)
            if kind == "insert":
                ledger._db.execute(delete, (page,))
    ledger._db.execute(delete, (page,))


def mark_done_cost(tmp: Path, sizes: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """Microseconds per mark_done of the last page, per book size; sizes alternate by round."""
    books = {n: filled(tmp / f"book{n}.db", n) for n in sizes}
    times: dict[int, dict[str, list[int]]] = {n: {"insert": [], "remark": []} for n in sizes}
    for _ in range(MARKS // 100):
        for n, (ledger, run_id) in books.items():
            time_marks(ledger, run_id, n, times[n])
    result = {}
    for n, (ledger, _) in books.items():
        rows = ledger._db.execute("SELECT (SELECT COUNT(*) FROM pages), (SELECT COUNT(*) FROM calls)").fetchone()
        ledger.close()
        r = result[n] = {"insert": statistics.median(times[n]["insert"]) / 1e3,
                         "insert_mean": statistics.fmean(times[n]["insert"]) / 1e3,
                         "remark": statistics.median(times[n]["remark"]) / 1e3}
        print(f"  {n:>6}-page book ({rows[0]} page rows, {rows[1]} calls): insert median {r['insert']:5.1f}"
              f" us, mean {r['insert_mean']:5.1f} us; re-mark median {r['remark']:5.1f} us")
    return result


def plan_resume(tmp: Path, pages: int = 10_000, done: int = 9_000) -> float:
    """Median milliseconds from opening the ledger to the plan; prints one breakdown."""
    book = Book(make_book(tmp / "books", "resume", pages))
    ledger = Ledger.open_writer(book.ledger_path)
    run_id = ledger.start_run(1, "bench")
    with ledger.snapshot():
        for p in range(1, done + 1):
            c = ledger.begin_call(run_id, "echo", p, "test/echo", 1)
            ledger.finish_call(c, "ok", computed_cost=0.001)
            ledger.mark_done("echo", p, run_id)
            ledger.mark_done("shout", p, run_id)
    ledger.end_run(run_id, "interrupted")
    ledger.close()
    totals, steps = [], {}
    for _ in range(5):
        t = [time.perf_counter()]
        ledger = Ledger.open_writer(book.ledger_path)
        ctx = RunContext(book=book, ledger=ledger, run_id=ledger.start_run(1, "bench"), registry=ECHO_STAGES,
                         workers=8)
        t.append(time.perf_counter())
        stages = [spec.load()(ctx, spec) for spec in ECHO_STAGES]
        t.append(time.perf_counter())
        page_list = list(range(1, book.page_count() + 1))
        t.append(time.perf_counter())
        pipeline = Pipeline(ctx, stages, page_list)
        t.append(time.perf_counter())
        plan = pipeline.plan()
        t.append(time.perf_counter())
        ledger.end_run(ctx.run_id, "interrupted")
        ledger.close()
        totals.append((t[-1] - t[0]) * 1e3)
        steps = dict(zip(("open+start_run", "stages", "page_count", "Pipeline()", "plan"),
                         (b - a for a, b in zip(t, t[1:]))))
    if plan != {"echo": list(range(done + 1, pages + 1)), "shout": []}:
        raise RuntimeError(f"unexpected plan: {plan}")
    print(f"  plan: echo {len(plan['echo'])} pages, shout {len(plan['shout'])}; last run: "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in steps.items()))
    print(f"  open to plan: median {statistics.median(totals):.1f} ms, runs: "
          + " ".join(f"{t:.0f}" for t in totals))
    return statistics.median(totals)


CHILD = """
import resource, sys, time
from pathlib import Path
from infra.books import Book
from pipeline.process import process_book
from tests.fakestages import ECHO_STAGES
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = process_book(Book(Path(sys.argv[1])), ECHO_STAGES.select(["echo"]), workers=8, registry=ECHO_STAGES)
print(out.status, out.pages_processed, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      time.perf_counter() - t)
"""


def peak_memory(tmp: Path, pages: int = 10_000) -> float:
    """Peak RSS (MB) of a child process that runs process_book on a fresh book."""
    root = make_book(tmp / "books", "memory", pages)
    done = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], check=True)
    status, processed, before, peak, seconds = done.stdout.split()[-5:]
    print(f"  process_book: {status}, {processed} pages in {float(seconds):.1f} s; "
          f"RSS after imports {int(before) / 1024:.1f} MB, peak {int(peak) / 1024:.1f} MB")
    return int(peak) / 1024


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as d:
        tmp = Path(d)
        print(f"(a) mark_done of the last page, one call at a time ({MARKS} calls each)")
        costs = mark_done_cost(tmp, (100, 10_000))
        small, large = costs[100], costs[10_000]
        ratio = large["insert"] / small["insert"]
        print(f"  ratio 10,000 / 100: insert {ratio:.2f} (mean {large['insert_mean'] / small['insert_mean']:.2f}),"
              f" re-mark {large['remark'] / small['remark']:.2f}")
        print("(b) resume of a 10,000-page book with 9,000 pages done (echo -> shout)")
        plan_ms = plan_resume(tmp)
        print("(c) peak memory of process_book on a 10,000-page book (EchoStage), in a child")
        peak = peak_memory(tmp)
    print(f"mark_done page 10000 / page 100: {ratio:.2f} (goal <= 1.2); resume plan: "
          f"{plan_ms:.0f} ms (goal < 200); process_book 10,000 pages peak RSS: {peak:.0f} MB (goal < 200)")


if __name__ == "__main__":
    main()
