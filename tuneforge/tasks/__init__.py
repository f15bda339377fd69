"""Tasks: what a model is trained to do (classification, causal LM). Each task module defines a ``Task``
class with the same methods; the loop, saving and CLI only call those."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneforge.config import ConfigError

TASKS = {
    "classification": "tuneforge.tasks.classification",
    "causal_lm": "tuneforge.tasks.causal_lm",
}


@dataclass
class Runtime:
    """Where and how tensors are computed, shared by training and evaluation."""
    device: torch.device
    bf16: bool
    pad_id: int
    padding_free: bool = False  # training batches packed into rows (see data.batching.collate_packed)


@dataclass
class Prepared:
    """Tokenised splits plus what must be stored with the run to reuse the model (e.g. the label names)."""
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    raw_test: list[dict[str, Any]] = field(default_factory=list)  # untokenised test records (for generation)


def get(name: str) -> Any:
    """A task instance by name."""
    if name not in TASKS:
        raise ConfigError(f"model.task: unknown task '{name}'; choose one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).Task()
