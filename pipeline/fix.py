"""fix: a second, stronger model, only on the pages correct flagged or could not validate."""
from __future__ import annotations

from infra.errors import InvalidAnswer
from pipeline.correct import CorrectedPage
from pipeline.llm_stage import (BookState, LLMStage, PagesToCall, answer_flags, failure_flags, max_tokens_for,
                                ocr_message, scan_flags)
from pipeline.registry import StageSpec


class FixedPage(CorrectedPage):
    """The answer fix must give: the same fields as a first pass's."""


def needs_fix(corrected: dict) -> bool:
    return bool(corrected.get("unsure") or corrected.get("invalid_answer"))


class FixStage(LLMStage):
    system = """You are the second, careful pass over the OCR text of one scanned book page.
A first pass was unsure of its correction. Produce the best faithful transcription: fix
recognition errors only, keep every line (running headers and page numbers included) and
the paragraph breaks, join words hyphenated across lines of the page. Answer with the JSON
object the schema asks for: corrected text, confidence (0..1), the list of changes
("old -> new"), and unsure=true if parts still cannot be read."""
    answer = FixedPage
    text_copies = 2  # the OCR text and the first pass

    async def process_page(self, page: int) -> dict:
        ocr, corrected = self.inputs(page)
        if not needs_fix(corrected):
            return {**corrected, "fixed": False}
        first = "" if corrected.get("invalid_answer") else (
            f"\nThe first pass proposed:\n<first_pass>\n{corrected['text']}\n</first_pass>")
        try:
            result = await self.ask(page, ocr_message(ocr["text"]) + first, max_tokens_for(ocr["text"]))
        except InvalidAnswer as e:  # keep the first pass, its flags, and this one's
            return {**corrected, "fixed": False, "fix_error": str(e),
                    "flags": {**corrected.get("flags", {}), **failure_flags(e)}}
        answer = result.response.model_dump()
        return {"page": page, "model": self.model, **answer, "fixed": True, "cost_usd": result.cost,
                "flags": {**scan_flags(corrected), **answer_flags(ocr["text"], answer)}}

    @classmethod
    def pages_to_call(cls, spec: StageSpec, book: BookState) -> list[PagesToCall]:
        """The pages the first pass flagged, and of those it has still to do, between half
        and twice the share it flagged so far (none to all when nothing is known yet)."""
        first_pass = spec.reads[1]
        answers = {p: book.read(first_pass, p) for p in book.done[first_pass]}
        flagged = {p for p, a in answers.items() if a is not None and needs_fix(a)}
        share = len(flagged) / len(answers) if answers else None
        guess = (0.0, 1.0) if share is None else (share / 2, min(1.0, 2 * share + 0.1))
        return [PagesToCall(sorted(flagged - book.done[spec.name])),
                PagesToCall([p for p in book.pages if p not in book.done[first_pass]], guess)]
