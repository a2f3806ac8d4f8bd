"""The progress bars of `ar.py process`: one per stage of each book, with pages and cost."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.stage import Stage


class StageProgress:
    def __init__(self, totals: dict[tuple[str, str], int], done: dict[tuple[str, str], int],
                 costs: dict[tuple[str, str], float]):
        """Each figure by (book, stage); one book's bars are named by their stage alone."""
        many = len({book for book, _ in totals}) > 1
        self.progress = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]}"),
            TextColumn("${task.fields[cost]:.4f}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.tasks = {
            key: self.progress.add_task(" ".join(key) if many else key[1], total=total, completed=done.get(key, 0),
                                        cost=costs.get(key, 0.0), failed="")
            for key, total in totals.items()
        }

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, stage: Stage) -> None:
        failed = stage.stats["pages_failed"]
        self.progress.update(
            self.tasks[stage.ctx.book.id, stage.name], completed=stage.stats["pages_done"],
            cost=stage.stats["total_cost_usd"], failed=f"{failed} failed" if failed else "",
        )


class ItemProgress:
    """One bar over a list of things (the books `ar.py add` makes from a folder), naming the current one."""

    def __init__(self, what: str, total: int):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                                 TextColumn("{task.fields[item]}"), console=Console(stderr=True), transient=True)
        self.task = self.progress.add_task(what, total=total, item="")
        self.started = False

    def __enter__(self) -> ItemProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, item: str) -> None:
        """`item` is next: the ones before it are done."""
        if self.started:
            self.progress.advance(self.task)
        self.started = True
        self.progress.update(self.task, item=item)
