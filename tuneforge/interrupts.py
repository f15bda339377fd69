"""Ctrl-C and SIGTERM on the command line: one line saying what was kept, and the usual exit statuses.

SIGTERM (a scheduler's pre-emption, ``docker stop``, systemd) is turned into :class:`Terminated`, a
``KeyboardInterrupt``, in a single process; torchrun's workers keep Python's default, as torchrun stops them
itself. The exit status is 130 after Ctrl-C and 143 after SIGTERM (128 + the signal), as shells report them,
so a scheduler's wrapper can tell pre-emption from a configuration error (2).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside the block (single process, main thread); the handler that was
    there before is put back after it."""
    alone = int(os.environ.get("WORLD_SIZE", "1")) == 1 and threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if alone else None
    try:
        yield
    finally:
        if alone:
            signal.signal(signal.SIGTERM, before)


PARENT_SAYS = "TUNEFORGE_PARENT_REPORTS_INTERRUPTS"  # set for a child process whose parent tells the user


def report(exc: KeyboardInterrupt, command: str | None, resume: str | None = None, overwrite: bool = False) -> int:
    """Say in one line that the command stopped (:func:`stopped`), unless a parent process says it (``compare``'s
    training children, which Ctrl-C reaches too); returns the exit status."""
    progress = sys.modules.get("tuneforge.progress")  # not imported: no bar was drawn
    if progress is not None:
        progress.close_all()
    if not os.environ.get(PARENT_SAYS) and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 alone knows the run
        print(f"tuneforge: error: {stopped(exc, command, resume, overwrite)}", file=sys.stderr)
    return status(exc)


def status(exc: KeyboardInterrupt) -> int:
    """The exit status after ``exc``: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def stopped(exc: KeyboardInterrupt, command: str | None, resume: str | None = None, overwrite: bool = False) -> str:
    """What an interrupted or terminated command says; for ``train``, whether and how its run (``resume``: the
    one it was continuing) resumes; for ``compare`` and ``mitigate``, how to go on (``overwrite``: not with --overwrite again,
    which would retrain the methods it finished)."""
    word = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    resume_check = sys.modules.get("tuneforge.resume_check")  # not imported: no run was started here
    run = resume_check.current_run() if command == "train" and resume_check is not None else None
    if command in ("compare", "mitigate"):
        done = "methods" if command == "compare" else "runs"
        if overwrite:  # runs of the earlier folder not yet retrained keep their config, which may differ
            return (f"{word}; running the same `tuneforge {command}` command again without --overwrite skips the "
                    f"{done} it finished and resumes the interrupted one, where the folder's other runs have the "
                    "same config (else it says so: use --overwrite again)")
        return (f"{word}; running the same `tuneforge {command}` command again skips the finished {done} and "
                "resumes the interrupted one from its last checkpoint")
    if command != "train":
        return word
    if run is None and resume is not None:
        return f"{word}; `{_train()} --resume {resume}` continues from the run's last checkpoint"
    if run is None:
        return f"{word} before training started; nothing was kept"
    if resume_check.finished(run):
        return f"{word} after the run finished; its results are in {run}"
    return f"{word}; `{_train()} --resume {run}` continues from the run's last checkpoint"


def _train() -> str:
    """The command that resumes a run: under torchrun, with as many processes (a run resumes with its own)."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("LOCAL_WORLD_SIZE")
    if world == 1:
        return "tuneforge train"
    nodes = f" --nnodes={world // int(local)}" if local and int(local) != world else ""
    return f"torchrun{nodes} --nproc_per_node={local or world} -m tuneforge train"
