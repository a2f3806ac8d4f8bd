"""Fixtures of the torture tests: the book, made once, and the reference it must end as."""
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import llm_env, run_ar, text_pages
from tests.simserver import Sim
from tests.torture.harness import KEY, PAGES, SUMMARIES

@dataclass
class TortureBook:
    added: Path  # the book as `ar.py add` made it: nothing done
    ocr_done: Path  # the same book with its OCR done
    reference_md: bytes  # its book.md after one uninterrupted run against a fault-free server

    def copy(self, books_dir: Path, ocr_done: bool = False, book_id: str = "book") -> Path:
        return Path(shutil.copytree(self.ocr_done if ocr_done else self.added, books_dir / book_id))

@pytest.fixture(scope="package")
def torture_book(tmp_path_factory) -> TortureBook:
    root = tmp_path_factory.mktemp("torture")
    r = run_ar("add", str(text_pages(root / "scans", PAGES)), "--id", "book", books_dir=root / "added")
    assert r.returncode == 0, r.stderr
    reference = Path(shutil.copytree(root / "added" / "book", root / "reference" / "book"))
    assert run_ar("process", "book", "--stages", "ocr", books_dir=reference.parent).returncode == 0
    shutil.copytree(reference, root / "ocr-done" / "book")
    server = Sim("--api-key", KEY)
    try:
        r = run_ar("process", "book", books_dir=reference.parent, env=llm_env(server, root))
        assert r.returncode == 0, r.stderr
    finally:
        server.stop()
    return TortureBook(root / "added" / "book", root / "ocr-done" / "book", (reference / "book.md").read_bytes())

def pytest_terminal_summary(terminalreporter):
    for text in SUMMARIES:
        terminalreporter.write_sep("-", "torture summary")
        terminalreporter.write_line(text)
