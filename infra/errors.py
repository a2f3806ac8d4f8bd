"""Every error ar expects, in one tree, and the exit code of every way a run can end.

    ArError                    said to the user in one line, no traceback (exit 1 unless below)
    ├── UsageError             a bad command line or configuration (exit 2)
    │   └── MissingExtra       a setting whose library (the `fleet` extra) is not installed
    ├── LedgerError            checkpoint.db cannot be opened, read or written (infra/checkpoint.py)
    ├── BookLocked             another process is writing the book (infra/lock.py)
    ├── SourceError            a PDF or image that cannot be added (infra/sources.py)
    ├── PricingError           no price list, or no price for a model (infra/pricing.py)
    │   ├── PricingUnavailable
    │   ├── UnknownModel
    │   └── VariablePrice      a budget, and a model whose price is known only from the bill
    ├── PageFailed             this page is not done in this run; the other pages go on
    │   ├── OcrError           tesseract failed on the page (pipeline/ocr.py)
    │   └── LLMError           a call failed for good (infra/llm_client.py)
    │       ├── RetryableError (429, 5xx, a cut stream: tried again before it is final)
    │       └── InvalidAnswer  the answer never matched the stage's schema
    │           └── TruncatedAnswer  cut at max_tokens (finish_reason length), even with more room
    └── StopRun                nothing more can be done in this run; it ends with `status`
        ├── FatalLLMError      the key is refused, or the credits are gone
        ├── BudgetReached      the book's budget would be passed (status budget, exit 3)
        │   └── LibraryBudgetReached   the library's
        └── LeaseLost          a fleet writer's lease lapsed: it stops (infra/pg_ledger.py)

A run ends with one of RUN_EXIT's statuses; `exit_code` maps each to the process's exit code.
"""
from __future__ import annotations

# How a run ended -> the exit code of `ar.py process` (README: exit codes)
RUN_EXIT = {"done": 0, "failed": 1, "budget": 3, "interrupted": 130}
EXIT_USAGE = 2


def exit_code(status: str) -> int:
    return RUN_EXIT[status]


class ArError(Exception):
    """An expected failure: its message is shown as is, no traceback."""

    exit_code = RUN_EXIT["failed"]


class UsageError(ArError):
    exit_code = EXIT_USAGE


class MissingExtra(UsageError):
    """AR_LEDGER without psycopg, AR_EXECUTOR=ray without Ray: the `fleet` extra is not installed."""

    def __init__(self, setting: str, module: str):
        super().__init__(f"{setting} needs the fleet extra, and {module} is not installed: "
                         "pip install 'ar[fleet]' (in a checkout: pip install -e '.[fleet]')")


class LedgerError(ArError):
    pass


class BookLocked(ArError):
    def __init__(self, message: str, holder: str = "another process"):
        super().__init__(message)
        self.holder = holder  # "pid 123 on host (since ...)": what a run of several books says when it skips it


class SourceError(ArError):
    pass


class PricingError(ArError):
    pass


class PricingUnavailable(PricingError):
    pass


class UnknownModel(PricingError):
    pass


class VariablePrice(PricingError):
    pass


class PageFailed(ArError):
    """This page could not be done in this run; the others go on."""


class OcrError(PageFailed):
    pass


class LLMError(PageFailed):
    """A call failed for good (after any retries); the page cannot be done now."""


class RetryableError(LLMError):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class InvalidAnswer(LLMError):
    """The model's answer did not validate against the schema, after the allowed retries."""


class TruncatedAnswer(InvalidAnswer):
    """The answer was cut at max_tokens (finish_reason "length"), and cut again when asked
    once more with more room: the stage flags the page as it does an invalid answer."""


class StopRun(ArError):
    """Nothing more can be done in this run (out of credits, bad key, budget reached, a
    full disk); the run ends with `status`. `ends_run`: no other book could go on either (a
    run of several books opens no new one)."""

    status = "failed"
    ends_run = False

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.exit_code = exit_code(self.status)


class FatalLLMError(StopRun):
    """Nothing else will work either in this run: bad key (401/403) or out of credits (402)."""

    ends_run = True


class BudgetReached(StopRun):
    status = "budget"


class LibraryBudgetReached(BudgetReached):
    """The library's cap (every book's calls fall under it)."""

    ends_run = True


class LeaseLost(StopRun):
    """A writer of the fleet could not renew its lease (PostgreSQL ledger): another may have its
    pages now, so it stops itself: no new call, no output, no done-mark."""
