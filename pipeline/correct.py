"""correct: an LLM fixes the OCR errors of each page, keeping the text's structure."""
from __future__ import annotations

from infra.llm_client import InvalidAnswer, image_part
from pipeline.llm_stage import LLMStage, max_tokens_for

SYSTEM = """You correct the OCR text of one scanned book page.
Fix recognition errors (wrong letters, split or merged words, stray symbols) and nothing else:
do not rewrite, modernise or summarise. Keep every line in its place, including running
headers and page numbers; keep paragraph breaks; join a word hyphenated across two lines
of the page into one word on the first line. Answer with the JSON object the schema asks
for: the corrected text, your confidence (0..1), the list of changes ("old -> new"), and
unsure=true when parts of the page cannot be read with confidence."""


def ocr_message(ocr_text: str) -> str:
    return f"OCR text of the page:\n<ocr_text>\n{ocr_text}\n</ocr_text>"


class CorrectStage(LLMStage):
    name = "correct"

    def __init__(self, ctx, model: str, vision: bool = False):
        super().__init__(ctx, model)
        self.vision = vision

    async def process_page(self, page: int) -> dict:
        ocr = self.read_output("ocr", page)
        text = ocr["text"]
        base = {"page": page, "model": self.model, "ocr_confidence": ocr.get("mean_confidence")}
        if not text.strip():  # a blank page: nothing to correct, nothing to pay
            return {**base, "text": "", "confidence": 1.0, "changes": [], "unsure": False}
        user: list[dict] = [{"type": "text", "text": ocr_message(text)}]
        if self.vision:
            user.append(image_part(self.ctx.book.source_image(page)))
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        try:
            result = await self.ask(page, messages, max_tokens_for(text))
        except InvalidAnswer as e:  # keep the OCR text; fix will take this page
            return {**base, "text": text, "confidence": 0.0, "changes": [], "unsure": True,
                    "invalid_answer": str(e)}
        return {**base, **result.response.model_dump(), "cost_usd": result.cost}
