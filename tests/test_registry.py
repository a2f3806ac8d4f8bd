"""The stage registry: a stage declared once, in one line; the runner waits for exactly the
inputs a stage declares; clean, status and the layout derive from the declarations; and the
code's import graph has no cycle."""
import ast
import json
from pathlib import Path

import pytest

from infra.books import Book
from infra.checkpoint import Ledger
from pipeline.process import clean_stage, process_book
from pipeline.registry import STAGES, Registry, StageSpec
from pipeline.reports import status_report
from tests.conftest import ROOT, make_book, run_ar, text_pages
from tests.fakestages import ECHO_STAGES, EchoStage, StampStage, TallyStage

# the one line that adds the test stage of tests/running_headers.py to ar's own stages
WITH_FIRST_LINES = STAGES.with_stage(StageSpec("first_lines", "tests.running_headers:FirstLinesStage", reads=("ocr",),
                                               writes=("structured/first_lines.json",), per_page=False), before="correct")


def pages_table(book: Book) -> list[tuple]:
    led = Ledger.open_reader(book.ledger_path)
    try:
        return led._db.execute("SELECT stage, page, updated_at FROM pages WHERE status = 'done'").fetchall()
    finally:
        led.close()


def test_a_stage_added_by_one_module_and_one_line_runs_and_is_known_to_status_and_clean(books_dir, tmp_path):
    scans = text_pages(tmp_path / "scans", 3)
    assert run_ar("add", str(scans), "--id", "b", books_dir=books_dir).returncode == 0
    book = Book(books_dir / "b")
    outcome = process_book(book, WITH_FIRST_LINES.select(["ocr", "first_lines"]), workers=2, registry=WITH_FIRST_LINES)
    assert outcome.status == "done" and outcome.pages_processed == 3

    found = json.loads((book.root / "structured" / "first_lines.json").read_text())["first_lines"]
    ocr_firsts = [STAGES["ocr"].read_page(book, p)["text"].split("\n")[0] for p in (1, 2, 3)]
    assert sum(found.values()) == 3 and set(found) == set(ocr_firsts) and all(ocr_firsts)
    done_at = {(s, p): t for s, p, t in pages_table(book)}
    assert done_at[("first_lines", 0)] > max(t for (s, _), t in done_at.items() if s == "ocr")

    status = status_report(book, WITH_FIRST_LINES)
    assert list(status["stages"]) == ["ocr", "layout", "first_lines", "correct", "fix", "merge"]
    assert status["stages"]["first_lines"] == {**status["stages"]["first_lines"], "done": 1, "total": 1}
    # what is made from OCR goes with it: clean knows the new stage from its declaration
    led = Ledger.open_writer(book.ledger_path)
    removed = clean_stage(book, led, "ocr", WITH_FIRST_LINES)
    led.close()
    assert removed == 4 and not (book.root / "structured" / "first_lines.json").exists()
    assert STAGES.names == ["ocr", "layout", "correct", "fix", "merge"]  # ar's own stages are untouched


def test_a_book_stage_between_page_stages_waits_for_every_page_and_its_readers_wait_for_it(books_dir):
    registry = ECHO_STAGES.with_stage(StageSpec("tally", TallyStage, reads=("echo",), writes=("tally.json",),
                                                per_page=False)).with_stage(
        StageSpec("stamp", StampStage, reads=("echo", "tally")))
    book = Book(make_book(books_dir, "b", 12))
    outcome = process_book(book, list(registry), workers=4, registry=registry, options={"delay": 0.01})
    assert outcome.status == "done" and outcome.pages_processed == 12 * 3  # the pages of echo, shout and stamp

    done_at = {(s, p): t for s, p, t in pages_table(book)}
    last_echo = max(t for (s, _), t in done_at.items() if s == "echo")
    first_stamp = min(t for (s, _), t in done_at.items() if s == "stamp")
    first_shout = min(t for (s, _), t in done_at.items() if s == "shout")
    assert last_echo < done_at[("tally", 0)] < first_stamp  # tally had every page; stamp waited for it
    assert first_shout < last_echo  # shout, which reads echo alone, did not wait
    stamps = [registry["stamp"].read_page(book, p) for p in range(1, 13)]
    assert all(s["tally"] == sum(range(1, 13)) for s in stamps)
    assert status_report(book, registry)["state"] == "done"

    # a page redone upstream makes the book stage stale: it runs again before stamp takes the page
    led = Ledger.open_writer(book.ledger_path)
    clean_stage(book, led, "shout", registry)  # shout alone: nothing reads it
    led.close()
    assert (book.root / "tally.json").exists() and registry["stamp"].outputs(book)
    again = process_book(book, list(registry), workers=4, registry=registry)
    assert again.status == "done" and again.pages_processed == 12  # only shout's pages


def test_a_declaration_reads_only_stages_declared_before_it_and_names_each_stage_once():
    with pytest.raises(ValueError, match="not declared before it"):
        Registry([StageSpec("b", "x:B", reads=("a",)), StageSpec("a", "x:A")])
    with pytest.raises(ValueError, match="declared twice"):
        Registry([StageSpec("a", "x:A"), StageSpec("a", "x:B")])


def test_clean_removes_what_is_made_from_a_stage_as_the_declarations_say():
    assert [s.name for s in STAGES.downstream("correct")] == ["correct", "fix", "merge"]
    assert [s.name for s in STAGES.downstream("merge")] == ["merge"]
    assert [s.name for s in STAGES.downstream("ocr")] == ["ocr", "layout", "correct", "fix", "merge"]
    assert [s.name for s in WITH_FIRST_LINES.downstream("first_lines")] == ["first_lines"]


def test_unknown_stage_names_are_a_usage_error_naming_the_stages(books_dir):
    r = run_ar("process", "nobook", "--stages", "ocr,polish", books_dir=books_dir)
    assert r.returncode == 2 and "unknown stage polish: choose from ocr,layout,correct,fix,merge" in r.stderr


def _imports(path: Path, module: str) -> set[str]:
    """Every project module `path` imports, at the top or inside a function."""
    package = module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = package + ("." + base if base else "")
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path that comes back to where it started, if there is one (depth first)."""
    def walk(path: list[str], seen: set[str]) -> list[str] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == path[0]:
                return path + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                if found := walk(path + [nxt], seen):
                    return found
        return None

    return next((c for m in sorted(graph) if (c := walk([m], {m}))), None)


def test_the_import_graph_has_no_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check sees one
    modules = {}
    for folder in ("infra", "pipeline", "tools"):
        for path in (ROOT / folder).glob("*.py"):
            modules[f"{folder}.{path.stem}" if path.stem != "__init__" else folder] = path
    graph = {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}
    assert {"pipeline.cli", "pipeline.live", "infra.errors"} <= graph.keys() and graph["pipeline.cli"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
    # the registry loads a stage only when it runs: reading it (status, the monitor) loads none
    assert not {m for m in graph["pipeline.registry"] if m.startswith("pipeline.")}


class Broken(EchoStage):
    """An echo stage with a bug on page 5."""

    async def process_page(self, page: int) -> dict:
        if page == 5:
            raise RuntimeError("a bug")
        return await super().process_page(page)


def test_a_bug_in_one_stage_stops_the_others_taking_new_pages_and_is_raised(books_dir):
    registry = Registry([StageSpec("echo", Broken), ECHO_STAGES["shout"]])
    book = Book(make_book(books_dir, "b", 40))
    with pytest.raises(RuntimeError, match="a bug"):
        process_book(book, list(registry), workers=2, registry=registry, options={"delay": 0.02})
    done = {(s, p) for s, p, _ in pages_table(book)}
    assert len(done) < 20  # stopped soon after page 5, not at the book's end
    assert Ledger.read(book.ledger_path, Ledger.runs, [])[-1]["status"] == "failed"


def test_a_stale_book_stage_is_not_done_in_the_ledger_until_it_is_redone(books_dir):
    registry = ECHO_STAGES.with_stage(StageSpec("tally", TallyStage, reads=("echo",), writes=("tally.json",),
                                                per_page=False))
    book = Book(make_book(books_dir, "b", 6))
    assert process_book(book, list(registry), workers=2, registry=registry).status == "done"
    led = Ledger.open_writer(book.ledger_path)
    led.clear_stage("echo")  # echo's pages to do again: what tally was made from is changing
    led.close()
    again = process_book(book, list(registry), workers=2, registry=registry, options={"fail_pages": {3}})
    assert again.status == "failed"  # page 3 failed, so tally cannot be redone in this run
    status = Ledger.read(book.ledger_path, Ledger.page_counts, {})
    assert status.get("tally", {}).get("done", 0) == 0  # the old tally no longer passes for done
