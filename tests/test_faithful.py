"""A correction stays faithful (issue 13): each corrected page is measured against its OCR text
(pipeline/faithful.py); a change no correction explains keeps the OCR's words and sends the
page to fix, which sees the page's image; fix's answer is kept only if it passes the same
measure. Pages whose OCR doubted many words go to fix too, and the estimate counts them. The
prompts ask to keep the page's own spelling and punctuation, and name the answer's keys.
Real `ar.py` runs on real scans against the local server, whose faults make a model unfaithful."""
import json
import sqlite3
from pathlib import Path

from infra.books import Book
from infra.config import Settings
from pipeline.registry import STAGES
from tests.conftest import REAL_SCANS, llm_env, run_ar, text_pages
from tools.openrouter_sim import INVENTED

KEY = "sk-or-v1-faithful-0123456789"
FIRST_PASS, SECOND_PASS = Settings.model_fields["correct_model"].default, Settings.model_fields["fix_model"].default


def ocr_book(books_dir: Path, source: Path, book_id: str = "book") -> Book:
    for args in (("add", str(source), "--id", book_id), ("process", book_id, "--stages", "ocr")):
        r = run_ar(*args, books_dir=books_dir)
        assert r.returncode == 0, r.stderr
    return Book(books_dir / book_id)


def sent(log: Path, model: str) -> list[dict]:
    """The chat requests the server got for `model` (its --log-requests file)."""
    bodies = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [b for b in bodies if b["model"] == model]


def has_image(body: dict) -> bool:
    return any(part.get("type") == "image_url" for m in body["messages"] if isinstance(m["content"], list)
               for part in m["content"])


def page(book: Book, stage: str, number: int = 1) -> dict:
    return STAGES[stage].read_page(book, number)


def test_a_truncated_correction_of_a_real_scan_is_refused_and_the_ocr_text_kept(sim, books_dir, tmp_path):
    """The brochure page (82 lines) comes back without its last 40% of lines, from correct and
    again from fix: no answer passes, so the page keeps its OCR text, flagged for review.
    Before the guard, book.md lost the page's end."""
    log = tmp_path / "requests.jsonl"
    server = sim("--api-key", KEY, "--fail-truncate", "1", "--log-requests", str(log))
    book = ocr_book(books_dir, REAL_SCANS / "linn.pdf")
    r = run_ar("process", "book", books_dir=books_dir, env=llm_env(server, tmp_path))
    assert r.returncode == 0, r.stderr
    ocr, corrected, fixed = page(book, "ocr"), page(book, "correct"), page(book, "fix")
    assert "lines 82 -> 50" in corrected["flags"]["changed_too_much"]
    assert corrected["text"] == ocr["text"] and "Oxnard Street" not in corrected["rejected_text"]
    assert fixed["text"] == ocr["text"] and not fixed["fixed"]
    assert fixed["flags"]["changed_too_much"].endswith("fix's answer too: the OCR text is kept")
    assert "18720 Oxnard Street, Tarzana" in book.text_path.read_text()
    (fix_request,) = sent(log, SECOND_PASS)
    assert has_image(fix_request) and "<first_pass>" not in json.dumps(fix_request)  # not shown the bad answer
    assert r.stdout.strip().splitlines()[-1].startswith("done, 1 page to review (1 changed_too_much)")


def test_an_invented_paragraph_is_refused_and_fix_reading_the_image_does_better(sim, books_dir, tmp_path):
    """The first pass's model adds a paragraph of its own to every page; fix's model does not:
    its answers pass, are kept, and settle the flag."""
    log = tmp_path / "requests.jsonl"
    server = sim("--api-key", KEY, "--fail-invent", "1", "--faults-model", FIRST_PASS, "--log-requests", str(log))
    book = ocr_book(books_dir, text_pages(tmp_path / "scans", 3))
    r = run_ar("process", "book", books_dir=books_dir, env=llm_env(server, tmp_path))
    assert r.returncode == 0, r.stderr
    for n in (1, 2, 3):
        corrected, fixed = page(book, "correct", n), page(book, "fix", n)
        assert "of the characters changed" in corrected["flags"]["changed_too_much"]
        assert INVENTED in corrected["rejected_text"] and corrected["text"] == page(book, "ocr", n)["text"]
        assert fixed["fixed"] and "changed_too_much" not in fixed["flags"] and INVENTED not in fixed["text"]
    assert INVENTED not in book.text_path.read_text()
    assert len(sent(log, SECOND_PASS)) == 3 and all(has_image(b) for b in sent(log, SECOND_PASS))
    assert "to review" not in r.stdout


def test_pages_the_ocr_doubted_go_to_fix_with_their_image_and_the_estimate_counts_them(sim, books_dir, tmp_path):
    """Huckleberry Finn's page 22, beside its illustration: 9% of its words are read under
    confidence 60, though the first pass is sure of itself. The brochure page: 2%."""
    log = tmp_path / "requests.jsonl"
    server = sim("--api-key", KEY, "--log-requests", str(log))
    env = llm_env(server, tmp_path)
    doubted = ocr_book(books_dir, REAL_SCANS / "c02-22.pdf", "huck")
    clear = ocr_book(books_dir, REAL_SCANS / "linn.pdf", "linn")
    assert "doubtful" in page(doubted, "ocr")["flags"] and "doubtful" not in page(clear, "ocr")["flags"]

    def fix_estimate(book: Book) -> dict:
        r = run_ar("estimate", book.id, "--json", books_dir=books_dir, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["stages"]["fix"]

    for book, sure in ((doubted, True), (clear, False)):
        assert (fix_estimate(book)["low_usd"] > 0) is sure  # known to need fix before correct runs
    kept = fix_estimate(doubted)  # from the done-marks' flags; a ledger from before kept none: the words
    with sqlite3.connect(doubted.ledger_path) as db:
        db.execute("UPDATE pages SET chars = NULL")
    assert fix_estimate(doubted) == kept
    for book in (doubted, clear):
        assert run_ar("process", book.id, books_dir=books_dir, env=env).returncode == 0
    assert not page(doubted, "correct")["unsure"] and page(doubted, "fix")["fixed"]
    assert not page(clear, "fix")["fixed"]
    (fix_request,) = sent(log, SECOND_PASS)
    assert has_image(fix_request) and "tip-toeing" in json.dumps(fix_request)


def test_both_prompts_keep_the_pages_spelling_and_punctuation_and_name_the_answers_keys(sim, books_dir, tmp_path):
    log = tmp_path / "requests.jsonl"
    server = sim("--api-key", KEY, "--log-requests", str(log))
    ocr_book(books_dir, REAL_SCANS / "c02-22.pdf")  # its OCR doubts send it to fix: both stages ask
    assert run_ar("process", "book", books_dir=books_dir, env=llm_env(server, tmp_path)).returncode == 0
    for model in (FIRST_PASS, SECOND_PASS):
        (request,) = sent(log, model)
        system = " ".join(request["messages"][0]["content"].split())
        assert request["messages"][0]["role"] == "system"
        for asked in ("do not rewrite, modernise", "dialect, archaic", "warn't", "to-day",
                      "original punctuation", "a real compound", "keeps its hyphen"):
            assert asked in system, (model, asked)
        keys = system[system.index("exactly these keys"):]
        assert all(f'"{key}":' in keys for key in ("text", "confidence", "changes", "unsure"))
        assert set(request["response_format"]["json_schema"]["schema"]["properties"]) == \
            {"text", "confidence", "changes", "unsure"}


def test_a_page_sent_to_fix_keeps_the_first_pass_when_fixs_answer_changed_too_much(sim, books_dir, tmp_path):
    """The OCR's doubts send Huckleberry Finn's page to fix; fix's model drops the page's end:
    the first pass, which passed the check, stays."""
    server = sim("--api-key", KEY, "--fail-truncate", "1", "--faults-model", SECOND_PASS)
    book = ocr_book(books_dir, REAL_SCANS / "c02-22.pdf")
    assert run_ar("process", "book", books_dir=books_dir, env=llm_env(server, tmp_path)).returncode == 0
    corrected, fixed = page(book, "correct"), page(book, "fix")
    assert "changed_too_much" not in corrected["flags"] and "rejected_text" not in corrected
    assert fixed["text"] == corrected["text"] and not fixed["fixed"] and "tip-toeing" in fixed["text"]
    assert fixed["flags"]["changed_too_much"].startswith("fix's answer: ")
    assert fixed["flags"]["changed_too_much"].endswith("the first pass's text is kept")
