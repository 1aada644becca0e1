"""The one pattern every id that crosses the network must match (node, task, run ids), checked at the edge.

    check_id("task_id", value)    # raises BadId (a ValueError) naming the field; returns value

Ids are only ever compared and stored as values; they never name a file (blob names are chosen by the
server), but a strict pattern at the edge keeps odd bytes out of logs, rows and error messages too.
"""

from __future__ import annotations

import re

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BadId(ValueError):
    """An id that does not match ID_RE; the message names the field."""


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.match(value) is not None


def check_id(field: str, value: object) -> str:
    if not is_id(value):
        raise BadId(f"{field} must be 1-64 characters of A-Z a-z 0-9 _ - (got {str(value)[:40]!r})")
    return value  # type: ignore[return-value]
