"""The progress bars of `ar.py process`: one per stage of each book, with pages and cost."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.stage import Stage


BARS_BY_BOOK_UP_TO = 8  # more books than this: one bar per stage, for all the books together


class StageProgress:
    def __init__(self, totals: dict[tuple[str, str], int], done: dict[tuple[str, str], int],
                 costs: dict[tuple[str, str], float]):
        """Each figure by (book, stage); one book's bars are named by their stage alone, and a
        run of many books has one bar per stage (a library's thousand bars would be unreadable)."""
        books = len({book for book, _ in totals})
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
        if books == 1:
            self.bar = lambda book, stage: stage
        elif books <= BARS_BY_BOOK_UP_TO:
            self.bar = lambda book, stage: f"{book} {stage}"
        else:
            self.bar = lambda book, stage: f"{stage} ({books} books)"
        # each (book, stage)'s last figures: pages done, cost, pages failed; a bar shows their sum
        self.figures = {key: (done.get(key, 0), costs.get(key, 0.0), 0) for key in totals}
        self.sums: dict[str, list] = {}
        for key, total in totals.items():
            bar = self.sums.setdefault(self.bar(*key), [0, 0, 0.0, 0])  # total, done, cost, failed
            bar[0] += total
            bar[1:] = [a + b for a, b in zip(bar[1:], self.figures[key])]
        self.tasks = {bar: self.progress.add_task(bar, total=total, completed=n, cost=cost, failed="")
                      for bar, (total, n, cost, _) in self.sums.items()}

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, stage: Stage) -> None:
        key = (stage.ctx.book.id, stage.name)
        now = (stage.stats["pages_done"], stage.stats["total_cost_usd"], stage.stats["pages_failed"])
        before, self.figures[key] = self.figures[key], now
        name = self.bar(*key)
        bar = self.sums[name]
        bar[1:] = [b + n - o for b, n, o in zip(bar[1:], now, before)]
        self.progress.update(self.tasks[name], completed=bar[1], cost=bar[2],
                             failed=f"{bar[3]} failed" if bar[3] else "")


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
