"""A run that stops, of any kind (a budget, Ctrl-C), still leaves the book over the pages that
are done: each page not yet corrected is an HTML comment in its place, never words in the
text, and metadata.json says the book is partial. The next run that finishes makes it whole."""
import json
import re
import signal
import time

from tests.conftest import llm_env, run_ar, start_ar

MISSING = re.compile(r"<!-- page (\d+): not yet corrected -->")


def partial_book(book) -> tuple[str, dict]:
    md = (book / "book.md").read_text()
    metadata = json.loads((book / "structured" / "metadata.json").read_text())
    fixed = {int(p.stem[5:]) for p in (book / "fixed").glob("page_*.json")}
    missing = [int(n) for n in MISSING.findall(md)]
    assert metadata["partial"] is True and metadata["pages_missing"] == missing
    assert 0 < len(fixed) < 120 and sorted(set(missing) | fixed) == list(range(1, 121))
    assert not set(missing) & fixed
    assert "not yet corrected" not in re.sub(r"<!--.*?-->", "", md)  # the words are only in comments
    for page in sorted(fixed)[:5]:  # the text of the done pages is there
        words = json.loads((book / "fixed" / f"page_{page:04d}.json").read_text())["text"].split()
        assert " ".join(words[:4]) in " ".join(md.split())
    assert (book / "book.epub").exists() and (book / "book.txt").exists()
    return md, metadata


def test_a_budget_stop_leaves_a_partial_book_and_the_next_run_makes_it_whole(sim, books_dir, tmp_path, ocr_book):
    server = sim("--latency-ms", "30")
    book = ocr_book(books_dir)
    env = llm_env(server, tmp_path)
    r = run_ar("process", "book", "--budget", "0.008", "--force", books_dir=books_dir, env=env)
    assert r.returncode == 3, r.stderr
    partial_book(book)
    r = run_ar("process", "book", "--budget", "1", books_dir=books_dir, env=env)
    assert r.returncode == 0, r.stderr
    metadata = json.loads((book / "structured" / "metadata.json").read_text())
    assert metadata["partial"] is False and metadata["pages_missing"] == []
    assert not MISSING.search((book / "book.md").read_text())


def test_ctrl_c_leaves_a_partial_book(sim, books_dir, tmp_path, ocr_book):
    server = sim("--latency-ms", "400")
    book = ocr_book(books_dir)
    proc = start_ar("process", "book", "--workers", "4", books_dir=books_dir, env=llm_env(server, tmp_path))
    deadline = time.monotonic() + 120
    while len(list((book / "fixed").glob("page_*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    partial_book(book)
