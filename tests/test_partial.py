"""A run that stops, of any kind (a budget, Ctrl-C, failed pages), still leaves the book over
the pages that are done: each page has the best text it has so far (fix's, else correct's,
its comment then saying it is not yet fixed), each page not yet corrected is an HTML comment
in its place, never words in the text, and metadata.json says the book is partial. The next
run that finishes makes it whole."""
import json
import re
import signal
import time

from infra.config import Settings
from tests.conftest import llm_env, run_ar, start_ar, text_pages

MISSING = re.compile(r"<!-- page (\d+): not yet corrected -->")
NOT_FIXED = re.compile(r"<!-- page (\d+): corrected, not yet fixed -->")


def partial_book(book) -> tuple[str, dict]:
    md = (book / "book.md").read_text()
    metadata = json.loads((book / "structured" / "metadata.json").read_text())
    fixed = {int(p.stem[5:]) for p in (book / "fixed").glob("page_*.json")}
    corrected = {int(p.stem[5:]) for p in (book / "corrected").glob("page_*.json")}
    missing = [int(n) for n in MISSING.findall(md)]
    assert metadata["partial"] is True and metadata["pages_missing"] == missing
    assert 0 < len(fixed) < 120 and sorted(set(missing) | corrected) == list(range(1, 121))
    assert not set(missing) & corrected and fixed <= corrected
    assert [int(n) for n in NOT_FIXED.findall(md)] == sorted(corrected - fixed)
    assert "not yet" not in re.sub(r"<!--.*?-->", "", md)  # the words are only in comments
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


def test_a_run_stopped_after_correct_and_before_fix_leaves_each_corrected_page_in_the_book(sim, books_dir, tmp_path):
    """Every page corrected, the pages that need fix (misread, unsure) not fixed: fix's model
    only answers an error, so the run stops with those pages failed in fix. Each page has its
    best text in the partial book: fix's where fix is done, else correct's, its comment saying
    fix has not run; before, a page not fixed was only a `not yet corrected` comment. The next
    run makes the book whole."""
    for args in (("add", str(text_pages(tmp_path / "scans", 5, misread=True)), "--id", "book"),
                 ("process", "book", "--stages", "ocr")):
        assert run_ar(*args, books_dir=books_dir).returncode == 0
    book = books_dir / "book"
    failing = sim("--fail-400", "1", "--faults-model", Settings.model_fields["fix_model"].default)
    r = run_ar("process", "book", books_dir=books_dir, env=llm_env(failing, tmp_path))
    assert r.returncode != 0 and "failed in fix" in r.stdout, r.stdout + r.stderr
    fixed = {int(p.stem[5:]) for p in (book / "fixed").glob("page_*.json")}
    not_fixed = sorted(set(range(1, 6)) - fixed)
    assert len(not_fixed) >= 3  # most pages wait for fix: the case of the report
    md = (book / "book.md").read_text()
    metadata = json.loads((book / "structured" / "metadata.json").read_text())
    assert metadata["partial"] is True and metadata["pages_missing"] == [] and not MISSING.search(md)
    assert [int(n) for n in NOT_FIXED.findall(md)] == not_fixed
    text = " ".join(re.sub(r"<!--.*?-->", "", md.replace("\\\n", "\n")).split())  # words, not breaks
    for page in range(1, 6):
        best = "fixed" if page in fixed else "corrected"
        words = json.loads((book / best / f"page_{page:04d}.json").read_text())["text"].split()
        assert " ".join(words) in text
    r = run_ar("process", "book", books_dir=books_dir, env=llm_env(sim(), tmp_path))
    assert r.returncode == 0, r.stderr
    metadata = json.loads((book / "structured" / "metadata.json").read_text())
    md = (book / "book.md").read_text()
    assert metadata["partial"] is False and not NOT_FIXED.search(md) and not MISSING.search(md)
