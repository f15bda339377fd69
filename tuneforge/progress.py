"""Progress bars (tqdm) that suit where stderr goes. On a terminal: live bars. Elsewhere (a scheduler's log file,
a pipe) a live bar is thousands of carriage-return redraws run together with the log lines, so there a bar
writes plain lines: when it starts, then at most one per ``LOG_INTERVAL`` seconds, and when it ends (a bar that
leaves nothing behind on a terminal, ``leave=False``, writes no last line)."""
from __future__ import annotations

import io
import sys
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL = 60.0  # seconds between a long bar's lines when stderr is not a terminal


class _Lines(io.TextIOBase):
    """tqdm's output as lines of their own: each redraw on a new line, the redraws that clear a bar dropped."""

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            if part.strip():
                sys.stderr.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr as suits it (module docstring); ``disable``: no bar at all."""
    if not disable and not _terminal():
        kwargs.update(file=_Lines(), mininterval=LOG_INTERVAL, dynamic_ncols=False, ncols=100)
    return tqdm(iterable, disable=disable, **kwargs)


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
