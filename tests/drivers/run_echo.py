"""Runs the echo stage on a book in a real process: `python -m tests.drivers.run_echo BOOK_DIR DELAY`."""
import sys
from pathlib import Path

from infra.books import Book
from infra.errors import ArError
from pipeline.process import process_book
from tests.fakestages import ECHO_STAGES

if __name__ == "__main__":
    book = Book(Path(sys.argv[1]))
    delay = float(sys.argv[2])
    try:
        outcome = process_book(book, list(ECHO_STAGES), workers=4, registry=ECHO_STAGES, options={"delay": delay})
    except ArError as e:
        print(f"ar: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(outcome.status, outcome.pages_processed, flush=True)
    sys.exit(outcome.exit_code)
