"""correct: an LLM fixes the OCR errors of each page, keeping the text's structure."""
from __future__ import annotations

from pydantic import BaseModel, Field

from infra.errors import InvalidAnswer
from pipeline.llm_stage import (FAITHFUL, LLMStage, answer_flags, answer_keys, failure_flags, max_tokens_for,
                                ocr_message, scan_flags)

TYPICAL_PAGE_CHARS = 2000
NO_TEXT_MESSAGE = ("The OCR found no text on this page, though the scan has ink on it: transcribe the "
                   "page from its image.")


class CorrectedPage(BaseModel):
    """The answer correct must give, validated before it is used."""

    text: str = Field(description="the page's corrected text, line structure kept")
    confidence: float = Field(ge=0, le=1, description="how sure the correction is right, 0..1")
    changes: list[str] = Field(description="what was changed, e.g. 'tbe -> the'")
    unsure: bool = Field(description="true when parts of the page could not be read with confidence")


class CorrectStage(LLMStage):
    system = f"You correct the OCR text of one scanned book page.\n{FAITHFUL}\n{answer_keys(CorrectedPage)}"
    answer = CorrectedPage

    async def process_page(self, page: int) -> dict:
        (ocr,) = self.inputs(page)
        text, flags = ocr["text"], scan_flags(ocr)
        base = {"page": page, "model": self.model, "ocr_confidence": ocr.get("mean_confidence")}
        if not text.strip():
            if not (self.vision and "no_text" in flags):  # a blank page: nothing to correct, nothing to pay
                return {**base, "text": "", "confidence": 1.0, "changes": [], "unsure": False, "flags": flags}
            text = ""  # ink the OCR could not read: the model reads the image
            message, room = NO_TEXT_MESSAGE, max_tokens_for("x" * TYPICAL_PAGE_CHARS)
        else:
            message, room = ocr_message(text), max_tokens_for(text)
        try:
            result = await self.ask(page, message, room)
        except InvalidAnswer as e:  # keep the OCR text; fix will take this page
            return {**base, "text": text, "confidence": 0.0, "changes": [], "unsure": True,
                    "invalid_answer": str(e), "flags": {**flags, **failure_flags(e)}}
        answer = result.response.model_dump()
        flags = {**flags, **answer_flags(ocr, answer)}
        if "changed_too_much" in flags:  # the OCR's words stay; fix looks again, with the image
            return {**base, **answer, "text": text, "rejected_text": answer["text"], "cost_usd": result.cost,
                    "flags": flags}
        return {**base, **answer, "cost_usd": result.cost, "flags": flags}
