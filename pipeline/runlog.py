"""`ar.py log BOOK [--run N]`: what a run's log (books/<id>/logs/run-NNNN-*.jsonl) says
happened, read afterwards: its attempts and their outcomes, the failed attempts (retried,
or given up) by cause, the time
spent waiting before retries, the failures by page, and the slowest pages.

The log's events (written by infra/llm_client.py and pipeline/stage.py) carry an `event`
field: `attempt` (one per call attempt), `invalid_answer` (an answer the schema refused) and
`page` (a page's outcome in a stage). Each line made in a book's part of a run names the book
(infra/logs.py): a run of several books writes each book's events to that book's log alone.
A line cut short by a killed run is skipped, and counted.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from infra.books import Book
from infra.errors import ArError

SLOWEST = 5
_RUN_FILE = re.compile(r"run-(\d+)-.*\.jsonl$")


def run_logs(book: Book) -> dict[int, Path]:
    """Each run's log file, by run number."""
    found = (_RUN_FILE.match(f.name) for f in book.logs_dir.glob("run-*.jsonl")) if book.logs_dir.is_dir() else ()
    return {int(m.group(1)): book.logs_dir / m.group(0) for m in found if m}


def log_report(book: Book, run: int | None = None) -> dict:
    """The summary of run `run`'s log (default: the latest run that has one)."""
    logs = run_logs(book)
    if not logs:
        raise ArError(f"book {book.id!r} has no run log yet in {book.logs_dir}")
    if run is None:
        run = max(logs)
    if run not in logs:
        raise ArError(f"book {book.id!r} has no log of run {run}: its logs are of runs "
                      f"{', '.join(map(str, sorted(logs)))}")
    entries, unreadable = _entries(logs[run])
    return {"book": book.id, "run": run, "log": str(logs[run]), "unreadable_lines": unreadable,
            **summarise(entries)}


def _entries(path: Path) -> tuple[list[dict], int]:
    entries, unreadable = [], 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                unreadable += 1
                continue
            if isinstance(entry, dict):
                entries.append(entry)
    return entries, unreadable


def summarise(entries: list[dict]) -> dict:
    started = next((e for e in entries if e.get("msg") == "run started"), None)
    ended = next((e for e in entries if e.get("msg") == "run ended"), None)
    attempts = [e for e in entries if e.get("event") == "attempt"]
    invalid = [e for e in entries if e.get("event") == "invalid_answer"]
    pages = [e for e in entries if e.get("event") == "page"]

    outcomes = Counter(e.get("outcome") for e in attempts)
    if invalid:  # an attempt answered (ok), then the schema refused the answer: it failed
        outcomes.update({"ok": -len(invalid), "invalid answer": len(invalid)})
    causes = Counter(e["cause"] for e in attempts if e.get("outcome") != "ok" and e.get("cause"))
    causes.update({"invalid answer": len(invalid)} if invalid else {})
    failures: dict[int, list[str]] = {}
    for e in attempts:
        if e.get("outcome") not in ("ok", None) and e.get("page") is not None:
            failures.setdefault(e["page"], []).append(f"{e.get('stage')}: {e.get('cause')}")
    for e in invalid:
        failures.setdefault(e["page"], []).append(f"{e.get('stage')}: invalid answer")
    failed_pages = [{k: e.get(k) for k in ("stage", "page", "error")} for e in pages if e.get("outcome") == "failed"]
    slowest = sorted((e for e in pages if e.get("seconds") is not None), key=lambda e: -e["seconds"])[:SLOWEST]
    waits = [e["wait_s"] for e in attempts if e.get("wait_s")]
    return {
        "started_at": started and started.get("ts"),
        "ended_at": ended and ended.get("ts"),
        "status": ended.get("status") if ended else "not ended (killed, or still running)",
        "attempts": len(attempts),
        "attempts_by_outcome": {outcome: n for outcome, n in outcomes.items() if n},
        "failed_attempts_by_cause": dict(causes.most_common()),
        "waits": {"count": len(waits), "total_s": round(sum(waits), 3), "longest_s": max(waits, default=0.0),
                  "retry_after_given": sum(1 for e in attempts if e.get("retry_after") is not None)},
        "cost_usd": sum(e.get("cost_usd") or 0.0 for e in attempts),
        "failures_by_page": {page: dict(Counter(kinds)) for page, kinds in sorted(failures.items())},
        "failed_pages": failed_pages,
        "pages": dict(Counter(f"{e.get('stage')} {e.get('outcome')}" for e in pages)),
        "slowest_pages": [{k: e.get(k) for k in ("stage", "page", "seconds", "outcome")} for e in slowest],
    }
