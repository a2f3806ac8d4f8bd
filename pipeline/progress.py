"""The progress bars of `ar.py process`: one per stage, with pages and cost."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.stage import Stage


class StageProgress:
    def __init__(self, totals: dict[str, int], done: dict[str, int], costs: dict[str, float]):
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
            name: self.progress.add_task(name, total=total, completed=done.get(name, 0),
                                         cost=costs.get(name, 0.0), failed="")
            for name, total in totals.items()
        }

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, stage: Stage) -> None:
        failed = stage.stats["pages_failed"]
        self.progress.update(
            self.tasks[stage.name], completed=stage.stats["pages_done"],
            cost=stage.stats["total_cost_usd"], failed=f"{failed} failed" if failed else "",
        )
