"""Full fine-tuning: every weight of the model trains (the standard, most expensive method)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

TRAIN_DEFAULTS = {"lr": 5e-5}


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
