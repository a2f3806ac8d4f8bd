"""Structured logs: one JSON-lines file per run in books/<id>/logs/, secrets redacted."""
from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from pathlib import Path

import orjson

_SECRETS: set[str] = set()

# The book whose run is logging: set in each book's task of a run (pipeline/process.py); the
# tasks it starts inherit it (asyncio copies the context), so every record says whose it is,
# and a run of several books keeps each book's records in that book's log.
_BOOK: ContextVar[str | None] = ContextVar("ar_log_book", default=None)


def log_as_book(book_id: str) -> None:
    """What this asyncio task, and the tasks it starts, log from now on is `book_id`'s (a task
    has its own copy of the context: the other books' tasks are untouched)."""
    _BOOK.set(book_id)


def _book_of(record: logging.LogRecord) -> str | None:
    return getattr(record, "fields", {}).get("book") or _BOOK.get()


def register_secret(value: str | None) -> None:
    """Whatever else goes wrong, this value is masked in every log record."""
    if value and len(value) >= 8:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        if _BOOK.get() is not None:
            entry["book"] = _BOOK.get()
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # orjson: a page writes two lines, and json.dumps took 0.1 ms of a page's 2.7 ms of CPU
        return redact(orjson.dumps(entry, default=str).decode())


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_console(verbose: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_Redacting("ar: %(levelname)s: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root = logging.getLogger("ar")
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)


class _RunLogFile(logging.FileHandler):
    """A run's log file. A line that does not fit (a full disk) is lost, quietly: the ledger,
    not the log, is the record of how the run went, and the console says the disk is full."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def open_run_log(logs_dir: Path, run_id: int, book_id: str | None = None) -> logging.Handler:
    """Send the `ar` loggers to books/<id>/logs/run-NNNN-<time>.jsonl for this run; with
    `book_id`, not the records of another book (a run of several books); a record of no book
    (the run's shared parts) goes to every book's log."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    handler = _RunLogFile(logs_dir / f"run-{run_id:04d}-{stamp}.jsonl", encoding="utf-8")
    handler.setFormatter(_JsonLines())
    handler.setLevel(logging.INFO)
    if book_id is not None:
        handler.addFilter(lambda record: (_book_of(record) or book_id) == book_id)
    logger = logging.getLogger("ar")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return handler


def close_run_log(handler: logging.Handler) -> None:
    logging.getLogger("ar").removeHandler(handler)
    handler.close()


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, msg, extra={"fields": fields})
