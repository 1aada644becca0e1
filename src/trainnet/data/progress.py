"""The progress bar of `trainnet data prepare` (rich, on stderr): source bytes read, tokens written.

    with prepare_progress(total_bytes, quiet=False) as bar:
        advance = bar.phase("tokenizing"); advance(nbytes); bar.tokens(count)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.task = progress, total, None

    def phase(self, name: str) -> Callable[[int], None]:
        """Start a pass over the source; returns the callback that advances it by bytes read."""
        if self.progress is None:
            return lambda _: None
        if self.task is not None:
            self.progress.update(self.task, completed=self.total)
        task = self.progress.add_task(name, total=self.total, tokens="")
        self.task = task
        return lambda n: self.progress.advance(task, n)

    def tokens(self, count: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, tokens=f"{count:,} tokens")


@contextmanager
def prepare_progress(total_bytes: int, quiet: bool) -> Iterator[_Bar]:
    if quiet:
        yield _Bar(None, total_bytes)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[tokens]}"))
    with Progress(*columns, console=Console(stderr=True)) as progress:
        bar = _Bar(progress, total_bytes)
        yield bar
        if bar.task is not None:
            progress.update(bar.task, completed=total_bytes)
