"""How a WriterLocked message names the coordinator that holds a run: the `writer` row, in words.

    describe_holder("coord-a", 4242, "gpu-box", 1767225600.0)
    # -> "held by 'coord-a' (pid 4242 on gpu-box) since 2026-01-01T00:00:00Z"
"""

from __future__ import annotations

import datetime as dt


def describe_holder(owner: str | None, pid: int | None, host: str | None, since: float | None) -> str:
    """The holder as the SQL backends store it in their writer row; 'unknown' parts when a field is empty."""
    when = ("at an unknown time" if since is None else
            "since " + dt.datetime.fromtimestamp(float(since), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return f"held by {owner!r} (pid {pid if pid is not None else '?'} on {host or '?'}) {when}"
