"""One process trains a run directory at a time. While it trains, rank 0 holds an advisory lock
(``fcntl.flock``) on ``.training.lock`` in the run directory, which names its process id. The operating system
drops the lock when the process ends, however it ends, so a killed run never stays locked and resumes at once.
A second ``train --resume`` or ``--overwrite`` of that directory, and ``tuneforge.load`` of it, are refused with
that process id, where without the lock two processes would write one checkpoint. Where flock is missing
(Windows) or refused by the file system (some network mounts), runs are not locked."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from tuneforge.strict import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not locked
    fcntl = None  # type: ignore[assignment]

LOCK = ".training.lock"


def holder(run_dir: Path) -> str | None:
    """The process id (as text) of another process training ``run_dir`` now, else None."""
    path = Path(run_dir) / LOCK
    if fcntl is None or not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "unknown"
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:  # unreadable, or a file system without flock: cannot tell
        return None
    return None


def refuse_held(run_dir: Path, doing: str) -> None:
    """A ConfigError if another process trains ``run_dir`` now; ``doing`` is what was asked ('resume it')."""
    pid = holder(run_dir)
    if pid is not None:
        raise ConfigError(f"{run_dir} is being trained now by process {pid}; wait for it to finish (or stop it) "
                          f"before you {doing}")


class Holding(contextlib.AbstractContextManager):
    """The locks :meth:`take` took, released (and their files removed) on exit."""

    def __init__(self) -> None:
        self._held: list[tuple[Path, Any]] = []

    def take(self, run_dir: Path) -> None:
        """Lock ``run_dir`` for this process; a ConfigError if another process holds it."""
        if fcntl is None:
            return
        path = Path(run_dir) / LOCK
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            refuse_held(run_dir, "train it")
            raise ConfigError(f"{run_dir} is being trained now by another process; wait for it to finish") from None
        except OSError:  # the file system has no flock: train unlocked
            handle.close()
            return
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._held.append((path, handle))

    def __exit__(self, *exc: Any) -> None:
        while self._held:
            path, handle = self._held.pop()
            path.unlink(missing_ok=True)  # before unlocking: no process finds it locked by a finished run
            handle.close()
