"""The whole pipeline, as a user runs it: real `ar.py` processes, real Tesseract on real
scans, real HTTP to the local OpenRouter-compatible server."""
import json
import os
import signal
import time
from pathlib import Path

import pytest

from infra.checkpoint import Ledger
from tests.conftest import REAL_SCANS, llm_env, run_ar, start_ar
from tests.test_epub import epubcheck

KEY = "sk-or-v1-e2e-RECOGNISABLE-0123456789"


def add(books_dir, path, book_id):
    r = run_ar("add", str(path), "--id", book_id, books_dir=books_dir)
    assert r.returncode == 0, r.stderr


def page_texts(book_dir, folder):
    return [json.loads(p.read_text())["text"] for p in sorted((book_dir / folder).glob("page_*.json"))]


@pytest.mark.parametrize("scan, pages", [("c02-22.pdf", 1), ("multipage.pdf", 6)])
def test_a_real_scan_goes_through_all_four_stages(sim, books_dir, tmp_path, scan, pages):
    server = sim("--api-key", KEY, "--latency-ms", "20")
    add(books_dir, REAL_SCANS / scan, "book")
    r = run_ar("process", "book", "--json", books_dir=books_dir, env=llm_env(server, tmp_path))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["outcome"]["status"] == "done"
    assert {s: report["stages"][s]["done"] for s in ("ocr", "correct", "fix", "merge")} == \
        {"ocr": pages, "correct": pages, "fix": pages, "merge": 1}
    book = books_dir / "book"
    ocr = page_texts(book, "ocr")
    read = [json.loads(f.read_text()) for f in sorted((book / "ocr").glob("*.json"))]
    assert len(ocr) == pages and all(p["mean_confidence"] > 0 for p in read if p["text_source"] == "ocr")
    # multipage.pdf's page 4 carries a text layer (from an earlier OCR): taken as it is
    assert [p["text_source"] for p in read] == ["text_layer" if (scan, n) == ("multipage.pdf", 4) else "ocr"
                                                for n in range(1, pages + 1)]
    if scan == "c02-22.pdf":  # Huckleberry Finn, chapter II: Tesseract really read it
        assert "tip-toeing" in ocr[0] and "Jim" in ocr[0]
    else:  # pages 5 and 6 open with the same line, the real first line of a column: not a header
        assert "with a plain face, on the throne of England;" in ocr[4] and ocr[5]
        assert (book / "book.md").read_text().count("with a plain face, on the throne of England;") == 2
        assert not any(page["removed"] for page in json.loads((book / "structured" / "furniture.json").read_text())["pages"])
    checked = epubcheck(book / "book.epub")
    assert checked.returncode == 0, checked.stdout
    markdown = (book / "book.md").read_text()
    assert markdown.count("<!-- page ") == pages and "tip-toeing along a path" in markdown
    metadata = json.loads((book / "structured" / "metadata.json").read_text())
    cost = json.loads((book / "cost_report.json").read_text())
    assert metadata["pages"] == pages and metadata["stages"]["merge"]["done"] == 1
    # the ledger equals the bill, and every report says the same total
    billed = server.credits()
    assert billed > 0
    assert abs(cost["total_cost_usd"] - billed) <= 1e-9
    assert metadata["total_cost_usd"] == pytest.approx(billed, abs=1e-12)
    assert report["total_cost_usd"] == pytest.approx(billed, abs=1e-12)
    # the key never reaches a file, a log or the output
    assert KEY not in r.stdout + r.stderr
    for f in books_dir.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_a_second_run_of_a_done_book_does_nothing_and_spends_nothing(sim, books_dir, tmp_path):
    server = sim("--api-key", KEY)
    add(books_dir, REAL_SCANS / "c02-22.pdf", "book")
    env = llm_env(server, tmp_path)
    assert run_ar("process", "book", books_dir=books_dir, env=env).returncode == 0
    billed = server.credits()
    again = run_ar("process", "book", books_dir=books_dir, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert server.credits() == billed


def test_sigkill_mid_run_then_resume_gives_the_same_book_as_one_run(sim, books_dir, tmp_path):
    server = sim("--api-key", KEY, "--latency-ms", "400", "--seed", "1")
    add(books_dir, REAL_SCANS / "multipage.pdf", "once")
    add(books_dir, REAL_SCANS / "multipage.pdf", "killed")
    env = llm_env(server, tmp_path)
    assert run_ar("process", "once", books_dir=books_dir, env=env).returncode == 0

    proc = start_ar("process", "killed", "--workers", "2", books_dir=books_dir, env=env)
    db = books_dir / "killed" / "checkpoint.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once correction is under way, calls in flight
        led = Ledger.open_reader(db) if db.exists() else None
        if led is not None:
            busy = led.pending_calls() and len(led.done_pages("correct")) >= 1
            led.close()
            if busy:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    led = Ledger.open_reader(db)
    done_before = len(led.done_pages("fix"))
    led.close()
    assert done_before < 6

    r = run_ar("process", "killed", books_dir=books_dir, env=env)
    assert r.returncode == 0, r.stderr
    once, killed = books_dir / "once", books_dir / "killed"
    assert (killed / "book.md").read_bytes() == (once / "book.md").read_bytes()
    cost = json.loads((killed / "cost_report.json").read_text())
    assert [run["status"] for run in cost["runs"]] == ["crashed", "done"]
    assert not [f for f in killed.rglob("*") if ".tmp-" in f.name or f.name == "writer.lock"]
    # both books together cost what the server billed, the killed run's cut calls included
    both = cost["total_cost_usd"] + json.loads((once / "cost_report.json").read_text())["total_cost_usd"]
    assert abs(both - server.credits()) <= 1e-9


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ocr_workers_die_with_a_sigkilled_ar(books_dir):
    add(books_dir, REAL_SCANS / "multipage.pdf", "book")
    proc = start_ar("process", "book", "--stages", "ocr", books_dir=books_dir)
    deadline = time.monotonic() + 60
    while len(workers := children_of(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) >= 2  # one OCR process per core
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers)


def test_ctrl_c_in_a_terminal_lets_the_ocr_pages_in_flight_finish(books_dir):
    """A terminal's Ctrl-C goes to its whole process group: tesseract is not in it, so the
    pages being read are finished and saved, and the run stops after them."""
    add(books_dir, REAL_SCANS / "multipage.pdf", "book")
    proc = start_ar("process", "book", "--stages", "ocr", books_dir=books_dir, process_group=0)
    deadline = time.monotonic() + 60
    while len(readers := children_of(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(readers) >= 2  # one tesseract per core at work
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    ledger = Ledger.open_reader(books_dir / "book" / "checkpoint.db")
    try:
        done, failed = ledger.done_pages("ocr"), ledger.failed_pages("ocr")
    finally:
        ledger.close()
    assert failed == {} and len(done) >= len(readers)  # the pages in flight were finished, not lost
    assert {int(p.stem[5:]) for p in (books_dir / "book" / "ocr").glob("page_*.json")} == done


def test_running_out_of_credits_stops_the_run_cleanly_and_the_next_run_goes_on(sim, books_dir, tmp_path, ocr_book):
    """HTTP 402 mid-run: no more calls are sent, the calls in flight are recorded, the run is
    closed as failed with a one-line reason, and a run with credits again finishes the book."""
    ocr_book(books_dir)
    poor = sim("--credits", "0.005", "--latency-ms", "50")  # the whole book costs about $0.02
    r = run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=llm_env(poor, tmp_path))
    assert r.returncode == 1, r.stderr
    assert "out of credits" in r.stdout and "add credits, then run again" in r.stdout
    ledger = Ledger.open_reader(books_dir / "book" / "checkpoint.db")
    try:
        assert ledger.runs()[-1]["status"] == "failed"
        assert ledger.pending_calls() == []
        assert abs(ledger.total_cost() - poor.credits()) <= 1e-9
        done = ledger.done_pages("correct")
    finally:
        ledger.close()
    assert 0 < len(done) < 120
    assert {int(p.stem[5:]) for p in (books_dir / "book" / "corrected").glob("page_*.json")} == done
    rich = sim()
    again = run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=llm_env(rich, tmp_path))
    assert again.returncode == 0, again.stderr
    ledger = Ledger.open_reader(books_dir / "book" / "checkpoint.db")
    try:
        assert len(ledger.done_pages("correct")) == 120
        assert abs(ledger.total_cost() - poor.credits() - rich.credits()) <= 1e-9
    finally:
        ledger.close()


def processed_scan(server, books_dir, tmp_path) -> tuple[dict, Path]:
    """c02-22.pdf added as `book` and processed through every stage: (its env, its folder)."""
    add(books_dir, REAL_SCANS / "c02-22.pdf", "book")
    env = llm_env(server, tmp_path)
    assert run_ar("process", "book", books_dir=books_dir, env=env).returncode == 0
    return env, books_dir / "book"


def test_clean_removes_what_the_stage_and_those_after_it_made_and_keeps_the_cost(sim, books_dir, tmp_path):
    server = sim()
    _, book = processed_scan(server, books_dir, tmp_path)
    made = [book / "corrected" / "page_0001.json", book / "fixed" / "page_0001.json", book / "book.md",
            book / "structured" / "metadata.json"]
    assert all(f.exists() for f in made)
    old_book = (book / "book.md").read_bytes()
    r = run_ar("clean", "book", "correct", "--json", books_dir=books_dir)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["files_removed"] == 7 and report["total_cost_usd"] == pytest.approx(server.credits())
    assert not any(f.exists() for f in made) and (book / "ocr" / "page_0001.json").exists()
    # the old book does not vanish: it is put aside until a merge makes it again
    assert report["previous"] == "previous/book.md" and (book / "previous" / "book.md").read_bytes() == old_book
    status = json.loads(run_ar("status", "book", "--json", books_dir=books_dir).stdout)
    assert {s: status["stages"][s]["done"] for s in ("ocr", "correct", "fix", "merge")} == \
        {"ocr": 1, "correct": 0, "fix": 0, "merge": 0}


def test_fresh_redoes_the_stages_but_only_once_the_run_can_go_on(sim, books_dir, tmp_path):
    server = sim()
    env, book = processed_scan(server, books_dir, tmp_path)
    corrected = (book / "corrected" / "page_0001.json").read_bytes()
    paid = server.credits()
    no_key = {**env, "OPENROUTER_API_KEY": ""}
    r = run_ar("process", "book", "--stages", "correct", "--fresh", books_dir=books_dir, env=no_key)
    assert r.returncode == 1 and "no API key" in r.stderr
    assert (book / "corrected" / "page_0001.json").read_bytes() == corrected and (book / "book.md").exists()
    r = run_ar("process", "book", "--stages", "correct", "--fresh", "--json", books_dir=books_dir, env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {s: report["stages"][s]["done"] for s in ("ocr", "correct", "fix", "merge")} == \
        {"ocr": 1, "correct": 1, "fix": 0, "merge": 0}
    assert server.credits() > paid and report["total_cost_usd"] == pytest.approx(server.credits(), abs=1e-9)


def test_two_runs_of_the_sample_book_give_the_same_book(sim, books_dir, tmp_path):
    """The local server answers the same request the same way in every process (its hash seed
    differs each time): runs that compare books, as tests and benchmarks do, can rely on it."""
    import shutil

    from tests.conftest import ROOT
    from tools.make_sample import make

    sample = tmp_path / "sample"
    (sample / "truth").mkdir(parents=True)
    shutil.copy(ROOT / "books" / "sample" / "truth" / "book.md", sample / "truth")
    make(sample)
    books = []
    for seed in ("1", "2"):
        server = sim("--api-key", KEY, env={"PYTHONHASHSEED": seed})
        add(books_dir, sample / "source", f"sample-{seed}")
        r = run_ar("process", f"sample-{seed}", books_dir=books_dir, env=llm_env(server, tmp_path))
        assert r.returncode == 0, r.stderr
        books.append((books_dir / f"sample-{seed}" / "book.md").read_bytes())
    assert books[0] == books[1] and b"<!-- page 5 -->" in books[0]
