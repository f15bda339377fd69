"""What tuneforge changes in the calling process while it works, and puts back when it returns.

The command line owns its process and silences Hugging Face's logging and progress bars for good
(:func:`silence_hf`: tuneforge prints its own notes). Called from Python (``tuneforge.finetune``, ``tuneforge.load``
and the run's methods), tuneforge silences them only while it works (:func:`quiet`), and a training run also puts
back the torch thread count it sets (``train.num_threads``) and trains even when called under ``torch.no_grad()``
or ``torch.inference_mode()`` (:func:`training`). The CPU functions swapped in while training are put back by
``tuneforge.fast``; glibc's 64 MiB heap top pad stays set (glibc has no way to read the old value; it only keeps
freed memory for reuse).
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import transformers
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

F = TypeVar("F", bound=Callable[..., Any])
hf_logging = transformers.utils.logging


def silence_hf() -> None:
    """Hugging Face's warnings and progress bars off for the rest of the process (the command line's)."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()


_LOCK = threading.Lock()
_DEPTH = [0]  # quiet() blocks open in the process: the first saves Hugging Face's settings, the last restores them
_SAVED: list[tuple[int, bool, bool]] = []


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hugging Face's warnings and progress bars off while the block runs (and any block nested in it or running
    in another thread), then as they were."""
    with _LOCK:
        if _DEPTH[0] == 0:
            _SAVED[:] = [(hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
                          are_progress_bars_disabled())]
            silence_hf()
        _DEPTH[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                verbosity, bars, hub_off = _SAVED.pop()
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()
                if not hub_off:
                    enable_progress_bars()


def quietly(fn: F) -> F:
    """``fn`` run under :func:`quiet` (a public entry point: loading, predicting, merging, exporting)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with quiet():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def training() -> Iterator[None]:
    """A training run's scope: :func:`quiet`, gradients on (whatever the caller's grad mode), and the torch
    thread count put back afterwards."""
    threads = torch.get_num_threads()
    try:
        with quiet(), torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
