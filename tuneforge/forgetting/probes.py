"""Probes: what the model knew, measured on the current weights before and after a run.

* reference perplexity (``forgetting.reference``; the embedded chat model defaults to held-out ``chitchat``
  conversations): perplexity of reference text that is not in training;
* task 1 (``forgetting.previous_run``, sequential classification): task-1 accuracy of the current backbone
  with task 1's own head, on task 1's test split.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data.dataset import source_records
from tuneforge.tasks import Runtime, Task


@dataclass
class Probe:
    """Measures "what the model knew" on the current weights."""
    name: str  # e.g. "chitchat perplexity"
    metric: str  # accuracy | perplexity
    measure: Callable[[nn.Module], float]
    examples: list[dict[str, Any]]  # what it measures on
    loss: Callable[[nn.Module, dict[str, Any]], Any]  # summed loss of one collated batch (for the Fisher)
    fisher_examples: list[dict[str, Any]]  # EWC's Fisher data: same source, none of the measured examples
    keys: set[str]  # input texts of the measured examples (never trained on by replay)
    heads: dict[str, nn.Module] | None = None  # task-1 head modules to swap in (sequential classification)


def sample(items: list[Any], n: int, seed: int) -> list[Any]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def mean_loss(task: Task, model: nn.Module, batch: dict[str, Any]) -> Any:
    """The batch's loss averaged over its units (what EWC's Fisher differentiates)."""
    return task.loss(model, batch) / max(task.units(batch), 1)


def task1_probe(prev: Any, heads: list[str], rt: Runtime) -> Probe:
    """Task-1 accuracy of the current backbone with task 1's own head, on task 1's test split (EWC's Fisher:
    task 1's training split). ``prev`` is the reloaded task-1 run (``tuneforge.loaded.Run``)."""
    task1 = prev.prepared()
    examples = task1.test
    own = {h: getattr(prev.model, h).to(rt.device) for h in heads}

    def swapped(model: nn.Module, fn: Callable[[], Any]) -> Any:
        saved = {h: getattr(model, h) for h in heads}
        for h, module in own.items():
            setattr(model, h, module)
        try:
            return fn()
        finally:
            for h, module in saved.items():
                setattr(model, h, module)

    def measure(model: nn.Module) -> float:
        return swapped(model, lambda: prev.task.evaluate(model, examples, rt, prev.cfg, prev.meta))["accuracy"]

    def loss(model: nn.Module, batch: dict[str, Any]) -> Any:
        return swapped(model, lambda: mean_loss(prev.task, model, batch))

    name = prev.cfg.data.dataset if not prev.cfg.data.train_file else prev.cfg.data.train_file
    return Probe(f"task 1 ({name}) accuracy", "accuracy", measure, examples, loss, task1.train, set(), own)


def reference_probe(cfg: RunConfig, task: Task, tokenizer: Any, rt: Runtime, meta: dict[str, Any]) -> Probe | None:
    """Perplexity on reference data, or None when none applies (``"none"``, or a task without a default).
    A seeded sample of ``reference_examples`` is measured; up to as many others of the same source are EWC's
    Fisher data."""
    from tuneforge.data.dataset import normalise

    name = cfg.forgetting.reference or task.default_reference(cfg)
    if name in (None, "none"):
        return None
    n = cfg.forgetting.reference_examples
    records, where = source_records(task, name, cfg)
    if 4 * n < len(records):  # a seeded sample of 4n rows (in source order), 2n of them drawn again
        rows = sorted(random.Random(cfg.data.seed).sample(range(len(records)), 4 * n))
        records, where = [records[i] for i in rows], [where[i] for i in rows]
    chosen = sample(list(zip(records, where)), 2 * n, cfg.data.seed)
    pool = task.encode_any([r for r, _ in chosen], cfg, tokenizer, meta, [w for _, w in chosen])
    examples = pool[:n]
    keys = {normalise(task.input_text(r, cfg)) for r, _ in chosen[:n]}

    def measure(model: nn.Module) -> float:
        metrics = task.evaluate(model, examples, rt, cfg, meta)
        if "perplexity" not in metrics:
            raise ConfigError(f"forgetting.reference measures perplexity; a {task.name} run has none: "
                              "use forgetting.previous_run, or forgetting.reference=none")
        return metrics["perplexity"]

    return Probe(f"{name} perplexity", "perplexity", measure, examples, lambda m, b: mean_loss(task, m, b),
                 pool[n:], keys)
