"""The trainable weights of the best evaluation so far, kept in a file in the run directory instead of in memory.

Kept in memory, they were a second copy of every trained weight beside the model, its gradients and the
optimizer's state from a run's first evaluation to its end: full fine-tuning of SmolLM2 (135M parameters in
float32) peaked 600-800 MiB higher with validation than without. Trainer keeps its best checkpoint on disk too.

Each is ``.best-<step>.safetensors``, written atomically by rank 0 when an evaluation improves. The resumable
checkpoint names its best step (``best_step`` in the loop counters), so the file of the step that the last written
checkpoint names stays until a later checkpoint names another: a run killed in between resumes with the best
weights its checkpoint knew. Files of other steps are removed as soon as nothing can need them, and all of them
when the run finishes (:func:`tuneforge.checkpoint.finish_run`)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from tuneforge.config import ConfigError
from tuneforge.files import crash_point, save_tensors

PREFIX, SUFFIX = ".best-", ".safetensors"


def best_files(folder: Path) -> dict[int, Path]:
    """The best-weights files in ``folder`` by step."""
    found = {}
    for p in folder.glob(f"{PREFIX}*{SUFFIX}"):
        step = p.name[len(PREFIX):-len(SUFFIX)]
        if step.isdigit():
            found[int(step)] = p
    return found


class BestWeights:
    """Where a run keeps its best trainable weights: ``run_dir`` (or a temporary folder without one), rank 0 only."""

    def __init__(self, run_dir: Path | None, main: bool) -> None:
        self.main = main
        self._tmp = tempfile.TemporaryDirectory(prefix="tuneforge-best-") if main and run_dir is None else None
        self.folder = Path(self._tmp.name if self._tmp else run_dir) if main else None
        self.checkpointed: int | None = None  # the best step that the last written checkpoint names

    def path(self, step: int) -> Path:
        return self.folder / f"{PREFIX}{step}{SUFFIX}"

    def keep(self, state: dict[str, torch.Tensor], step: int) -> None:
        """Store ``state``, the weights evaluated at ``step`` (every rank calls it; rank 0 writes)."""
        if not self.main:
            return
        save_tensors(state, self.path(step))
        crash_point("best-kept")
        self._prune({step, self.checkpointed})

    def checkpoint_written(self, best_step: int | None) -> None:
        """A checkpoint naming ``best_step`` was written: no other step's file can be needed now."""
        self.checkpointed = best_step
        if self.main:
            self._prune({best_step})

    def resumed(self, best_step: int | None, embedded: dict[str, torch.Tensor] | None) -> None:
        """Continue from a checkpoint naming ``best_step``; ``embedded``: the best weights that checkpoints of
        tuneforge before 2026-12-06 held inside them."""
        if embedded and best_step is not None:
            self.keep(embedded, best_step)
        self.checkpoint_written(best_step)
        if self.main and best_step is not None and not self.path(best_step).is_file():
            raise ConfigError(f"cannot resume: the best weights of step {best_step} ({self.path(best_step)}) that the "
                              "checkpoint names are missing; start the run again with --overwrite")
        if self.main and best_step is not None:  # read at the end: a damaged file would fail the finished run
            try:
                with safe_open(str(self.path(best_step)), "pt"):
                    pass
            except (SafetensorError, OSError) as exc:
                raise ConfigError(f"cannot resume: the best weights of step {best_step} ({self.path(best_step)}) that "
                                  f"the checkpoint names are damaged ({str(exc).splitlines()[0]}); start the run again "
                                  "with --overwrite") from None

    def load(self, step: int) -> dict[str, torch.Tensor]:
        """The weights stored for ``step`` (rank 0)."""
        return load_file(str(self.path(step)))

    def _prune(self, keep: set[int | None]) -> None:
        remove_all(self.folder, keep)


def remove_all(folder: Path, keep: set[int | None] = frozenset()) -> None:
    """Remove the best-weights files in ``folder`` except those of the steps in ``keep`` (a finished run needs
    none)."""
    for step, p in best_files(folder).items():
        if step not in keep:
            p.unlink(missing_ok=True)
