"""A stage that is not ar's, added by this module and one line (tests/test_registry.py): a
book step that needs every page's OCR, as finding running headers does, standing before the
LLM stages. It counts the line each page opens with."""
from collections import Counter

from infra.storage import atomic_write_json
from pipeline.stage import Stage


class FirstLinesStage(Stage):
    async def run_book(self) -> None:
        book = self.ctx.book
        firsts = Counter(ocr["text"].split("\n", 1)[0] for p in range(1, book.page_count() + 1)
                         for ocr in self.inputs(p))
        (path,) = self.spec.writes
        atomic_write_json(book.root / path, {"first_lines": dict(firsts)})
