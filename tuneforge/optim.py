"""The optimizer and learning-rate schedule of a run: AdamW (fused on a CPU) / SGD / RMSprop over the trainable
parameters, weight decay only on matrices, an optional own rate for a fresh head; linear warmup, then a constant,
linear or cosine schedule."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from tuneforge import distributed
from tuneforge.config import RunConfig

__all__ = ["build_optimizer", "lr_lambda"]


def build_optimizer(module: nn.Module, cfg: RunConfig, heads: tuple[str, ...] = (),
                    stand_ins: dict[int, nn.Parameter] | None = None) -> tuple[torch.optim.Optimizer, list[str]]:
    """AdamW / SGD / RMSprop over trainable parameters (no weight decay on biases and norms; the modules named
    in ``heads`` at ``train.head_lr`` where set); returns the optimizer and the parameter names in its order
    (how checkpoints name optimizer state). ``stand_ins`` (by ``id`` of a parameter) are stepped in their
    parameters' place, under their names (:class:`tuneforge.embedding_rows.TrainedRows`)."""
    t = cfg.train
    head_lr = t.head_lr if t.head_lr is not None and heads else None
    body: tuple[list, list] = ([], [])  # (name, parameter) with weight decay / without (biases, norms)
    head: tuple[list, list] = ([], [])  # the same for the heads' parameters when they have their own rate
    for name, p in distributed.inner(module).named_parameters():
        if p.requires_grad:
            local = name.removeprefix("model.")  # WithLoss holds the model as .model
            own = head_lr is not None and any(local == h or local.startswith(h + ".") for h in heads)
            (head if own else body)[p.ndim < 2].append((name, (stand_ins or {}).get(id(p), p)))
    parts = [(body[0], t.weight_decay, {}), (body[1], 0.0, {})]
    parts += [(ps, decay, {"lr": head_lr}) for ps, decay in zip(head, (t.weight_decay, 0.0)) if ps]
    groups = [{"params": [p for _, p in ps], "weight_decay": decay, **extra} for ps, decay, extra in parts]
    names = [n for ps, _, _ in parts for n, _ in ps]
    if t.optimizer == "adamw":
        try:  # the fused kernel is ~7x faster per step than the foreach one on a CPU (full MiniLM, measured)
            if distributed.is_fsdp(module):
                raise TypeError("sharded (DTensor) parameters: foreach kernel")
            return torch.optim.AdamW(groups, lr=t.lr, fused=True), names
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(groups, lr=t.lr), names
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum), names
    return torch.optim.RMSprop(groups, lr=t.lr, momentum=t.momentum), names


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base learning rate at each optimizer step: linear warmup, then the schedule."""
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return fn
