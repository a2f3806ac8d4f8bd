"""The book's stages, in order, and how each is built from the settings."""
from __future__ import annotations

from infra.config import Settings
from pipeline.process import StageFactory

STAGE_NAMES = ["ocr", "correct", "fix", "merge"]


def build_stages(selected: list[str], settings: Settings) -> list[tuple[str, StageFactory]]:
    from pipeline.ocr import OcrStage

    factories: dict[str, StageFactory] = {"ocr": OcrStage}
    missing = [s for s in selected if s not in factories]
    if missing:
        from infra.errors import UsageError
        raise UsageError(f"stage {', '.join(missing)} is not available yet")
    return [(name, factories[name]) for name in selected]
