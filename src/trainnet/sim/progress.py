"""A one-line rich progress bar fed by measured eval points (tokens, val loss)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def progress_line(total: int, label: str, disable: bool = False) -> Iterator[Callable[[dict[str, Any]], None]]:
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} tok"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=disable, transient=False,
    ) as bar:
        task = bar.add_task(label, total=total, info="")

        def update(point: dict[str, Any]) -> None:
            bar.update(task, completed=point["tokens"],
                       info=f"val {point['val_loss']:.3f} | step {point['outer_steps']}")

        yield update
