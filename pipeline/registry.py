"""The book's stages, each declared once, in one line: the one place that says what stages
there are, what each reads and writes, and which model it calls.

The runner, the estimate, the CLI's `--stages`, status, clean, the monitor and the book's
layout all derive from these declarations. Adding a stage is writing its module and adding
its line to STAGES (docs/architecture.md, "Adding a stage"). A declaration names its class
as "module:Class" and the class is imported only when the stage runs, so that reading the
registry (status, the monitor) loads no stage.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from infra.books import BOOK_TEXT, METADATA, Book, page_file
from infra.errors import UsageError

LAYOUT_FILES = ("structured/layout.json", "structured/page_map.json", "structured/furniture.json")
BOOK_FILES = (BOOK_TEXT, "book.txt", "book.epub", METADATA, "structured/chapters.json", "structured/toc.json")
BOOK_PAGE = 0  # a book stage's one unit of work, in the ledger's pages table


@dataclass(frozen=True)
class StageSpec:
    """One stage: `name`; the stages whose outputs it `reads`; where it writes (a page stage:
    the folder of its page_NNNN.json files; a book stage: its files); the Settings field
    holding its `model` (LLM stages only); and the class that does the work."""

    name: str
    impl: str | type  # "module:Class", or the class itself
    reads: tuple[str, ...] = ()
    writes: str | tuple[str, ...] = ""
    per_page: bool = True
    model: str | None = None

    @property
    def uses_llm(self) -> bool:
        return self.model is not None

    def load(self):
        """The stage's class (a pipeline.stage.Stage)."""
        if not isinstance(self.impl, str):
            return self.impl
        module, _, cls = self.impl.partition(":")
        return getattr(importlib.import_module(module), cls)

    # ---- where its outputs are, in a book -----------------------------------------

    def folder(self, book: Book) -> Path:
        """A page stage's folder of outputs."""
        return book.root / (self.writes or self.name)

    def page_path(self, book: Book, page: int) -> Path:
        return self.folder(book) / page_file(page, ".json")

    def read_page(self, book: Book, page: int) -> dict:
        # orjson: an OCR page, its words' boxes and confidences, parses in a third of json's time
        return orjson.loads(self.page_path(book, page).read_bytes())

    def outputs(self, book: Book) -> list[Path]:
        """The files this stage has made in `book`."""
        if not self.per_page:
            return [f for f in (book.root / name for name in self.writes) if f.exists()]
        folder = self.folder(book)
        return list(folder.iterdir()) if folder.is_dir() else []

    def total(self, pages: int) -> int:
        """Units of work in a book of `pages` pages: one per page, or one for the book."""
        return pages if self.per_page else 1


class Registry:
    """Stages in an order where each comes after every stage it reads."""

    def __init__(self, specs: Iterable[StageSpec]):
        self._specs: dict[str, StageSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"stage {spec.name!r} declared twice")
            missing = [r for r in spec.reads if r not in self._specs]
            if missing:
                raise ValueError(f"stage {spec.name!r} reads {missing}, not declared before it")
            self._specs[spec.name] = spec

    def __iter__(self) -> Iterator[StageSpec]:
        return iter(self._specs.values())

    def __getitem__(self, name: str) -> StageSpec:
        return self._specs[name]

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def with_stage(self, spec: StageSpec, before: str | None = None) -> Registry:
        """A copy with `spec` added, at the end or before the stage `before`."""
        specs = list(self)
        at = self.names.index(before) if before else len(specs)
        return Registry(specs[:at] + [spec] + specs[at:])

    def select(self, names: Iterable[str]) -> list[StageSpec]:
        """The stages `names` (all when empty), in order; an unknown name is a usage error."""
        names = [n for n in names if n]
        unknown = [n for n in names if n not in self._specs]
        if unknown:
            raise UsageError(f"unknown stage {', '.join(unknown)}: choose from {','.join(self.names)}")
        return [s for s in self if s.name in names or not names]

    def missing_inputs(self, selected: list[StageSpec], left: dict[str, int]) -> dict[str, list[str]]:
        """Each selected stage with work `left` that reads a stage not selected and not
        finished (`left` of it > 0): what it cannot take its pages from, by stage."""
        chosen = {spec.name for spec in selected}
        missing = {spec.name: [r for r in spec.reads if r not in chosen and left.get(r, 0) > 0]
                   for spec in selected if left.get(spec.name, 0) > 0}
        return {name: reads for name, reads in missing.items() if reads}

    def with_inputs(self, names: Iterable[str], left: dict[str, int]) -> list[str]:
        """`names` and every unfinished stage they need, directly or not, in order."""
        needed = set(names)
        for spec in reversed(list(self)):
            if spec.name in needed:
                needed |= {r for r in spec.reads if left.get(r, 0) > 0}
        return [name for name in self.names if name in needed]

    def downstream(self, name: str) -> list[StageSpec]:
        """`name` and every stage made from it, directly or not: what `clean` removes."""
        made = {name}
        for spec in self:
            if made & set(spec.reads):
                made.add(spec.name)
        return [s for s in self if s.name in made]


STAGES = Registry([
    StageSpec("ocr", "pipeline.ocr:OcrStage", writes="ocr"),
    StageSpec("layout", "pipeline.layout:LayoutStage", reads=("ocr",), writes=LAYOUT_FILES, per_page=False),
    StageSpec("correct", "pipeline.correct:CorrectStage", reads=("ocr",), writes="corrected", model="correct_model"),
    StageSpec("fix", "pipeline.fix:FixStage", reads=("ocr", "correct"), writes="fixed", model="fix_model"),
    StageSpec("merge", "pipeline.merge:MergeStage", reads=("ocr", "correct", "fix", "layout"), writes=BOOK_FILES, per_page=False),
])
