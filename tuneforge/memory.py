"""A run's peak memory: resident memory (CPU) or allocated GPU memory, from the run's own start.

``getrusage``'s ``ru_maxrss`` never falls in a process and starts from the parent's peak in a child that
``subprocess`` started (a ``compare`` row read its parent's peak); /proc's ``VmHWM`` starts afresh at exec and is
reset to the current resident size by writing 5 to ``/proc/self/clear_refs``, so a second run in one process
(a notebook, ``compare --in-process``) reports its own peak, not the first's."""
from __future__ import annotations

import resource
from pathlib import Path

import torch


def reset_peak() -> None:
    """Start measuring the peak afresh from now (where the system allows it)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # not yet initialised: nothing allocated yet
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak since the process started
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB since it started or since :func:`reset_peak`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()
