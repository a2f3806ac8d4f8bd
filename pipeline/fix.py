"""fix: a second, stronger model, only on the pages correct flagged or could not validate."""
from __future__ import annotations

from infra.llm_client import InvalidAnswer, image_part
from pipeline.correct import ocr_message
from pipeline.llm_stage import LLMStage, max_tokens_for

SYSTEM = """You are the second, careful pass over the OCR text of one scanned book page.
A first pass was unsure of its correction. Produce the best faithful transcription: fix
recognition errors only, keep every line (running headers and page numbers included) and
the paragraph breaks, join words hyphenated across lines of the page. Answer with the JSON
object the schema asks for: corrected text, confidence (0..1), the list of changes
("old -> new"), and unsure=true if parts still cannot be read."""


def needs_fix(corrected: dict) -> bool:
    return bool(corrected.get("unsure") or corrected.get("invalid_answer"))


class FixStage(LLMStage):
    name = "fix"

    def __init__(self, ctx, model: str, vision: bool = False):
        super().__init__(ctx, model)
        self.vision = vision

    async def process_page(self, page: int) -> dict:
        corrected = self.read_output("correct", page)
        if not needs_fix(corrected):
            return {**corrected, "fixed": False}
        ocr_text = self.read_output("ocr", page)["text"]
        first = "" if corrected.get("invalid_answer") else (
            f"\nThe first pass proposed:\n<first_pass>\n{corrected['text']}\n</first_pass>")
        user: list[dict] = [{"type": "text", "text": ocr_message(ocr_text) + first}]
        if self.vision:
            user.append(image_part(self.ctx.book.source_image(page)))
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        try:
            result = await self.ask(page, messages, max_tokens_for(ocr_text))
        except InvalidAnswer as e:  # keep the first pass; say so
            return {**corrected, "fixed": False, "fix_error": str(e)}
        return {"page": page, "model": self.model, **result.response.model_dump(),
                "fixed": True, "cost_usd": result.cost}
