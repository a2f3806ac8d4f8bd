"""fix: a second, stronger model that sees the page's image, only on the pages that need it:
those correct was unsure of, could not validate or changed more than a correction explains,
and those whose OCR doubted many words (pipeline/faithful.py)."""
from __future__ import annotations

from infra.errors import InvalidAnswer
from pipeline.correct import CorrectedPage
from pipeline.faithful import DOUBTFUL, ocr_doubts
from pipeline.llm_stage import (FAITHFUL, BookState, LLMStage, PagesToCall, answer_flags, answer_keys,
                                failure_flags, max_tokens_for, ocr_message, scan_flags)
from pipeline.registry import StageSpec


class FixedPage(CorrectedPage):
    """The answer fix must give: the same fields as a first pass's."""


# A first pass's flags that send its page to fix: its own doubt, no valid answer, an answer
# that changed more than a correction explains (pipeline/correct.py, llm_stage.answer_flags).
FIRST_PASS_DOUBTS = frozenset({"unsure", "invalid", "truncated", "changed_too_much"})


def needs_fix(ocr: dict, corrected: dict) -> bool:
    return bool(FIRST_PASS_DOUBTS & (corrected.get("flags") or {}).keys() or ocr_doubts(ocr))


def _ocr_doubted(book: BookState, stage: str, page: int) -> bool:
    """For the estimate: the OCR doubted many of the page's words, as its done-mark's flag
    says, or its words (a page read before the ledger kept its flags)."""
    kept = book.marked_flags.get(stage, {}).get(page)
    if kept is not None:
        return DOUBTFUL in kept
    ocr = book.read(stage, page)
    return ocr is not None and ocr_doubts(ocr) is not None


class FixStage(LLMStage):
    system = f"""You are the second, careful pass over one scanned book page: its OCR text, and its image
to read it from. The OCR doubted many words, or a first pass was unsure, gave no valid answer
or changed more than a correction explains. Give the page's faithful transcription.
{FAITHFUL}
{answer_keys(FixedPage)}"""
    answer = FixedPage
    text_copies = 2  # the OCR text and the first pass
    sees_image = True

    async def process_page(self, page: int) -> dict:
        ocr, corrected = self.inputs(page)
        if not needs_fix(ocr, corrected):
            return {**corrected, "fixed": False}
        shown = not (corrected.get("invalid_answer") or corrected.get("rejected_text"))
        first = f"\nThe first pass proposed:\n<first_pass>\n{corrected['text']}\n</first_pass>" if shown else ""
        try:
            result = await self.ask(page, ocr_message(ocr["text"]) + first, max_tokens_for(ocr["text"]))
        except InvalidAnswer as e:  # keep the first pass's text (the OCR's, if it had none to use) and flags
            return {**corrected, "fixed": False, "fix_error": str(e),
                    "flags": {**corrected.get("flags", {}), **failure_flags(e)}}
        answer = result.response.model_dump()
        flags = {**scan_flags(corrected), **answer_flags(ocr, answer)}
        if "changed_too_much" in flags:  # fix could not do better: the text that passed the check stays
            why = flags["changed_too_much"]
            note = (f"fix's answer: {why}; the first pass's text is kept" if shown
                    else f"{why}, fix's answer too: the OCR text is kept")
            return {**corrected, "fixed": False, "fix_rejected_text": answer["text"],
                    "flags": {**corrected.get("flags", {}), "changed_too_much": note}}
        return {"page": page, "model": self.model, **answer, "fixed": True, "cost_usd": result.cost, "flags": flags}

    @classmethod
    def pages_to_call(cls, spec: StageSpec, book: BookState) -> list[PagesToCall]:
        """The pages that need it: those the first pass did (or the OCR doubted), and of the
        first pass's others, between half and twice the share it sent so far (none to all when
        nothing is known yet)."""
        ocr_stage, first_pass = spec.reads
        doubted = {p for p in book.done[ocr_stage] if _ocr_doubted(book, ocr_stage, p)}
        answers = {p: book.flags(first_pass, p) for p in book.done[first_pass]}
        flagged = {p for p, flags in answers.items() if flags is not None and (p in doubted or FIRST_PASS_DOUBTS & flags.keys())}
        doubted -= answers.keys()
        share = len(flagged) / len(answers) if answers else None
        guess = (0.0, 1.0) if share is None else (share / 2, min(1.0, 2 * share + 0.1))
        return [PagesToCall(sorted((flagged | doubted) - book.done[spec.name])),
                PagesToCall([p for p in book.pages if p not in book.done[first_pass] and p not in doubted], guess)]
