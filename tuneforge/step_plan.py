"""A run's optimizer steps: how many (an explicit ``train.epochs`` / ``train.max_steps``, else the automatic
length) and which micro-batches each rank trains at each step (``data.batching.step_plan``)."""
from __future__ import annotations

import math

from tuneforge import distributed
from tuneforge.config import ConfigError, RunConfig
from tuneforge.data.batching import step_plan
from tuneforge.tasks import Prepared, Task


class StepPlan:
    """Optimizer steps across epochs: step ``s`` -> (epoch, this rank's micro-batches). Steps are counted
    globally, so an epoch boundary never leaves gradients behind and a resumed run needs only ``s``."""

    def __init__(self, lengths: list[int], cfg: RunConfig, grouped: bool, d: distributed.Dist) -> None:
        t = cfg.train
        self._args = dict(lengths=lengths, batch_size=t.batch_size, grad_accum=t.grad_accum, seed=t.seed,
                          group_by_length=grouped, window=t.length_group_batches, rank=d.rank, world_size=d.world)
        self._cache: tuple[int, list[list[list[int]]]] | None = None
        self.per_epoch = len(self.epoch(0))
        if self.per_epoch == 0:
            raise ConfigError(f"data: {len(lengths)} training examples cannot be shared by {d.world} processes; "
                              "give more examples or use fewer processes")
        self.n = len(lengths)
        self.auto = t.max_steps is None and t.epochs is None
        if t.max_steps:
            self.total = t.max_steps
        elif t.epochs is not None:
            self.total = max(1, math.ceil(round(t.epochs * self.per_epoch, 6)))  # 0.28 x 25 is 7.000000000000001
        else:  # automatic: at least auto_min_steps, in at most auto_max_epochs whole epochs, the best one kept
            self.total = min(t.auto_max_epochs, math.ceil(t.auto_min_steps / self.per_epoch)) * self.per_epoch

    def describe(self, patience: int | None = None) -> str:
        """E.g. "training 6 epochs = 228 steps (auto: 1,200 examples)"; ``patience``: early stopping's."""
        epochs = self.total / self.per_epoch
        shown = f"{epochs:g}" if epochs == int(epochs) else f"{epochs:.2f}"
        how = f"auto: {self.n:,} examples" if self.auto else f"{self.n:,} examples"  # every rank holds them all
        how += f"; stops after {patience} evaluations without improvement" if patience else ""
        return f"training {shown} epoch{'s' if epochs != 1 else ''} = {self.total:,} steps ({how})"

    def epoch(self, e: int) -> list[list[list[int]]]:
        if self._cache is None or self._cache[0] != e:
            self._cache = (e, step_plan(epoch=e, **self._args))
        return self._cache[1]

    def step(self, s: int) -> tuple[int, list[list[int]]]:
        e, k = divmod(s, self.per_epoch)
        return e, self.epoch(e)[k]


def group_by_length(cfg: RunConfig, task: Task) -> bool:
    """``train.group_by_length``, or where unset the task's default (``task.group_by_length``)."""
    return cfg.train.group_by_length if cfg.train.group_by_length is not None else task.group_by_length


def plan_steps(data: Prepared, cfg: RunConfig, task: Task) -> StepPlan:
    """The run's optimizer steps, agreed over the ranks (too few examples for the processes: one error line)."""
    lengths = [len(e["input_ids"]) for e in data.train]
    return distributed.agree(lambda: StepPlan(lengths, cfg, group_by_length(cfg, task), distributed.current()))
