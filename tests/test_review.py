"""Pages a person should look at: each page carries flags with reasons, status and the monitor
count them, `ar.py review` lists them, and `process` says so on its last line."""
import json

import pytest

from infra.books import Book
from infra.checkpoint import Ledger
from pipeline.llm_stage import answer_flags, language_line
from pipeline.registry import STAGES
from tests.conftest import llm_env, run_ar, text_pages

KEY = "sk-or-v1-review-0123456789"


@pytest.fixture
def small_book(books_dir, tmp_path):
    scans = text_pages(tmp_path / "scans", 3)
    for args in (("add", str(scans), "--id", "book"), ("process", "book", "--stages", "ocr")):
        assert run_ar(*args, books_dir=books_dir).returncode == 0
    return Book(books_dir / "book")


def test_pages_whose_answers_never_validated_are_listed_for_review(sim, books_dir, tmp_path, small_book):
    server = sim("--api-key", KEY, "--fail-malformed", "1")
    env = llm_env(server, tmp_path)
    r = run_ar("process", "book", books_dir=books_dir, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "done, 3 pages to review (3 invalid): see `ar.py review book`"
    assert "ar: WARNING: page 2: invalid answer from google/gemini-2.5-flash" in r.stderr  # warnings name their page

    status = json.loads(run_ar("status", "book", "--json", books_dir=books_dir).stdout)
    assert status["pages_to_review"] == 3 and status["flags"] == {"invalid": 3}
    review = run_ar("review", "book", "--json", books_dir=books_dir)
    assert review.returncode == 0
    listed = json.loads(review.stdout)["pages"]
    assert [p["page"] for p in listed] == [1, 2, 3]
    for p in listed:
        assert "did not match the schema" in p["flags"]["invalid"]
        assert p["image"].endswith(f"page_{p['page']:04d}.png")
        assert p["text"] == str(STAGES["fix"].page_path(small_book, p["page"]))  # the final text
    snapshot = json.loads(run_ar("monitor", "book", "--json", books_dir=books_dir).stdout)
    assert snapshot["pages_to_review"] == 3


def test_a_book_with_nothing_to_review_ends_plainly_and_review_says_so(sim, books_dir, tmp_path, small_book):
    server = sim("--api-key", KEY)
    r = run_ar("process", "book", books_dir=books_dir, env=llm_env(server, tmp_path))
    assert r.returncode == 0 and "to review" not in r.stdout
    review = run_ar("review", "book", books_dir=books_dir)
    assert review.returncode == 0 and "no page to review" in review.stdout


def test_the_final_stage_settles_what_an_earlier_one_flagged(ledger):
    ledger.mark_done("ocr", 1, ledger.run, {"rotated": "turned 180 degrees"})
    ledger.mark_done("correct", 1, ledger.run, {"rotated": "turned 180 degrees", "unsure": "the model was unsure"})
    ledger.mark_done("fix", 1, ledger.run, {"rotated": "turned 180 degrees"})  # fix settled the doubt
    ledger.mark_done("ocr", 2, ledger.run, {"blank": "no ink"})
    ledger.mark_done("ocr", 3, ledger.run)
    assert ledger.page_flags(["ocr", "correct", "fix"]) == {1: {"rotated": "turned 180 degrees"},
                                                            2: {"blank": "no ink"}}


def test_a_correction_that_rewrites_the_page_is_flagged_and_one_that_fixes_ocr_errors_is_not():
    ocr = {"text": "Tbe qnick brown f0x jumps over tbe lazy dog and runs into the wood at night."}
    fixed = {"text": "The quick brown fox jumps over the lazy dog and runs into the wood at night.", "unsure": False}
    rewritten = {"text": "A fast fox leapt across a sleeping hound, then fled to the forest.", "unsure": False}
    assert answer_flags(ocr, fixed) == {}
    assert "changed_too_much" in answer_flags(ocr, rewritten)
    assert answer_flags(ocr, {**fixed, "unsure": True}) == {"unsure": "the model was unsure of parts of the page"}


def test_the_prompt_names_the_language_and_asks_to_keep_its_spelling():
    assert "French" in language_line("fra") and "do not modernise" in language_line("fra")
    assert "English and French" in language_line("eng+fra")
    assert language_line(None) == ""


def test_a_ledger_of_schema_2_is_read_with_no_flags(tmp_path):
    """Books processed before flags existed: nothing to review, nothing broken."""
    import sqlite3

    from infra.checkpoint import MIGRATIONS

    path = tmp_path / "checkpoint.db"
    old = sqlite3.connect(path)
    old.executescript(";".join(MIGRATIONS[:2]) + "; PRAGMA user_version = 2;")
    old.execute("INSERT INTO pages (stage, page, status, updated_at) VALUES ('fix', 1, 'done', 1)")
    old.commit()
    old.close()
    assert Ledger.read(path, lambda led: led.page_flags(["ocr", "correct", "fix"]), None) == {}


def test_an_answer_cut_at_max_tokens_even_with_more_room_is_flagged_truncated(sim, books_dir, tmp_path, small_book):
    # a reasoning model whose thinking takes all the room it is given, however much
    server = sim("--api-key", KEY, "--reasoning-tokens", "100000")
    r = run_ar("process", "book", "--stages", "correct", "--model", "google/gemini-2.5-pro",
               books_dir=books_dir, env=llm_env(server, tmp_path))
    assert r.returncode == 0, r.stderr
    listed = json.loads(run_ar("review", "book", "--json", books_dir=books_dir).stdout)["pages"]
    assert [p["page"] for p in listed] == [1, 2, 3]
    assert all("even with more room" in p["flags"]["truncated"] for p in listed)


def test_with_vision_a_page_with_ink_but_no_ocr_text_is_read_from_its_image(sim, books_dir, tmp_path, small_book):
    """The OCR read no word on page 2, though it has ink: without --vision it is passed over
    (nothing to correct, nothing paid), with --vision the model is asked to read the image."""
    ocr = STAGES["ocr"].read_page(small_book, 2)
    STAGES["ocr"].page_path(small_book, 2).write_text(json.dumps(
        {**ocr, "text": "", "flags": {"no_text": "1.20% of the page is ink, but no words were read"}}))
    server = sim("--api-key", KEY)
    env = llm_env(server, tmp_path)

    def correct_calls(page):
        return Ledger.read(small_book.ledger_path, lambda led: led._db.execute(
            "SELECT COUNT(*) FROM calls WHERE stage = 'correct' AND page = ?", (page,)).fetchone()[0], 0)

    assert run_ar("process", "book", "--stages", "correct", books_dir=books_dir, env=env).returncode == 0
    assert correct_calls(2) == 0 and STAGES["correct"].read_page(small_book, 2)["text"] == ""
    assert run_ar("clean", "book", "correct", books_dir=books_dir).returncode == 0
    assert run_ar("process", "book", "--stages", "correct", "--vision", books_dir=books_dir, env=env).returncode == 0
    assert correct_calls(2) == 1  # asked, with the page's image
    assert "no_text" in STAGES["correct"].read_page(small_book, 2)["flags"]  # and still listed for a look
