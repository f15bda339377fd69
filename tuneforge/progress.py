"""Progress bars (tqdm) that suit where stderr goes. On a terminal: live bars. Elsewhere (a scheduler's log file,
a pipe) a live bar is thousands of carriage-return redraws run together with the log lines, so there a bar
writes plain lines: when it starts, then at most one per ``LOG_INTERVAL`` seconds, and when it ends. A passing
bar (``leave=False``: an evaluation, generation) writes nothing unless it runs longer than ``LOG_INTERVAL``."""
from __future__ import annotations

import io
import re
import sys
import weakref
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL = 60.0  # seconds between a long bar's lines when stderr is not a terminal
_OPEN: weakref.WeakSet = weakref.WeakSet()  # bars made here and not yet collected
_CURSOR = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # ANSI cursor moves (tqdm's nested bars)


class _Lines(io.TextIOBase):
    """tqdm's output as lines of their own: each redraw on a new line, the redraws that clear a bar dropped."""

    def write(self, text: str) -> int:
        for part in _CURSOR.sub("", text).replace("\r", "\n").split("\n"):  # no cursor moves of nested bars
            if part.strip():
                sys.stderr.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr as suits it (module docstring); ``disable``: no bar at all. A bar
    given its own ``file``, or drawn as a notebook widget (Jupyter's stderr is no terminal either), is as asked."""
    widget = tqdm.__module__ == "tqdm.auto"  # tqdm.auto's notebook class; a console is tqdm.asyncio's
    if not disable and "file" not in kwargs and not widget and not _terminal():
        kwargs.update(file=_Lines(), mininterval=LOG_INTERVAL, dynamic_ncols=False, ncols=100)
        if kwargs.get("leave", True) is False:  # a passing bar (an evaluation): a line only once it runs long
            kwargs.setdefault("delay", LOG_INTERVAL)
    out = tqdm(iterable, disable=disable, **kwargs)
    _OPEN.add(out)
    return out


def close_all() -> None:
    """Close the bars still open (a command stopped by Ctrl-C): their last lines come before its one-line message,
    not after it."""
    for open_bar in list(_OPEN):
        open_bar.close()


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
