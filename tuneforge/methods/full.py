"""Full fine-tuning: every weight of the model trains (the standard, most expensive method)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

# token classification: on WNUT-16 + MiniLM, 5e-5 for 2 epochs reached test entity F1 0.23, 1e-4 for 3 epochs
# 0.42 (docs/benchmarks.md, bench_ner.py --methods-table)
TRAIN_DEFAULTS = {"lr": {"default": 5e-5, "token_classification": 1e-4}}


@dataclass
class Config:
    """Full fine-tuning has no options."""


def apply(model: nn.Module, config: Config) -> nn.Module:
    """Select every parameter: the registry froze them all, full fine-tuning unfreezes them all."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merge(model: nn.Module) -> nn.Module:
    """Nothing to fold: the trained weights are the model's own (a plain Hugging Face model)."""
    return model
