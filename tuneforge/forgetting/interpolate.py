"""Weight-space interpolation back toward the start of training (``forgetting.interpolate``).

WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", arXiv 2109.01903) and model averaging
against the alignment tax (Lin et al. 2024, "Mitigating the Alignment Tax of RLHF", arXiv 2309.06256): after
training, every trained parameter is set to ``start + keep * (trained - start)``. ``keep`` 1 is the trained
model, 0 the untrained one; in between, the model keeps most of the task and loses less of what it knew (the
fine-tuning change is partly undone along the straight line the two share). It costs no training, only a copy of
the trained parameters' starting values.

For full fine-tuning this is WiSE-FT exactly. For methods that inject parameters (LoRA, adapters, prompts) their
starting values are their initialisation: a zero-initialised factor (LoRA's B, an adapter's up-projection)
shrinks toward zero, so the method's change to the model shrinks with it. A fresh task head (``exclude``) is
left as trained: its start is random, not knowledge.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from tuneforge.forgetting.regularize import anchor_names, snapshot


def start_weights(model: nn.Module, keep: float, exclude: Sequence[str] = ()) -> dict[str, torch.Tensor] | None:
    """Float32 copies of the trainable parameters not under an ``exclude`` prefix (the regularisers' anchors),
    taken before training; None when ``keep`` is 1 (off)."""
    return None if keep >= 1 else snapshot(model, anchor_names(model, exclude))


@torch.no_grad()
def interpolate(model: nn.Module, start: dict[str, torch.Tensor], keep: float) -> int:
    """Set every parameter named in ``start`` to ``start + keep * (current - start)`` in place (in the
    parameter's own dtype and device); returns how many parameters moved."""
    moved = 0
    for name, p in model.named_parameters():
        s = start.get(name)
        if s is None:
            continue
        s = s.to(p.device)
        p.copy_((s + keep * (p.float() - s)).to(p.dtype))  # (same shape as p)
        moved += 1
    return moved
