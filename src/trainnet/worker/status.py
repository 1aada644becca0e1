"""The worker's live status line and its log lines.

    with StatusLine(enabled=sys.stdout.isatty()) as status:
        status.update(phase="training", task="t0000012")
        status.log("task t0000012 ... accepted")      # one dense line per task, always printed

With the line disabled (--quiet, or stdout is not a terminal) only the log lines are printed.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}GB"


class StatusLine:
    FIELDS = ("phase", "task", "version", "tok_s", "raw", "sent", "last", "note")

    def __init__(self, enabled: bool, prefix: str = "") -> None:
        self.enabled = enabled
        self.prefix = prefix
        self.state: dict[str, Any] = {}
        self._console = Console(file=sys.stdout) if enabled else None
        self._live: Live | None = None

    def __enter__(self) -> StatusLine:
        if self.enabled and self._console is not None:
            self._live = Live(self._render(), console=self._console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def update(self, **fields: Any) -> None:
        self.state.update(fields)
        if self._live is not None:
            self._live.update(self._render())

    def log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        text = f"{stamp} {self.prefix}{line}"
        if self._live is not None:
            self._live.console.print(Text(text))
        else:
            print(text, flush=True)

    def _render(self) -> Text:
        s = self.state
        t = Text()
        t.append(f"{s.get('phase', 'starting'):<11}", style="bold cyan")
        if s.get("task"):
            t.append(f" {s['task']}")
        if s.get("version") is not None:
            t.append(f" v{s['version']}")
        if s.get("tok_s"):
            t.append(f" | {s['tok_s']:,.0f} tok/s")
        if s.get("raw"):
            t.append(f" | update {human_bytes(s['raw'])} -> {human_bytes(s.get('sent', 0))}")
        if s.get("last"):
            ok = str(s["last"]).startswith("accepted")
            t.append(" | last: ")
            t.append(str(s["last"]), style="green" if ok else "red")
        if s.get("note"):
            t.append(f" | {s['note']}", style="dim")
        return t
