"""Full fine-tuning: every weight of the model trains (the standard, most expensive method)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

# token classification: on WNUT-16 + MiniLM at the automatic length, 3e-4 beat 1e-4 on validation and test at
# 496 training sentences (test entity F1 0.427 vs 0.365) and 1,915 (0.510 vs 0.447); 9e-4 tied on validation
# at 496 and lost at 1,915 (0.401) (bench_defaults.py, docs/benchmarks.md)
TRAIN_DEFAULTS = {"lr": {"default": 5e-5, "token_classification": 3e-4}}


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
