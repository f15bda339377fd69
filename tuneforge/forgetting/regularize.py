"""Regularisation toward earlier weights against forgetting.

- L2-SP (Li, Grandvalet & Davoine 2018, "Explicit Inductive Bias for Transfer Learning with Convolutional
  Networks", arXiv 1802.01483): ``alpha/2 * ||w_S - w0_S||^2`` over the pre-trained weights ``S`` plus
  ``beta/2 * ||w_new||^2`` (plain decay) over freshly initialised ones (e.g. a new classification head).
- EWC (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks", PNAS,
  arXiv 1612.00796): ``sum_i lambda/2 * F_i * (theta_i - theta*_i)^2`` with ``F`` the diagonal Fisher
  information estimated on the reference ("old task") data.

Both are small classes holding detached copies of the anchor weights; the loop adds ``penalty(model)`` to the
task loss through the :class:`Regularizer` protocol without knowing which one it has. They are meant for
runs that train pre-trained weights (full, freeze, bitfit); parameters a method injects (LoRA, adapters,
prompts) are excluded by passing ``pretrained`` (the parameter names of the model before the method).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from tuneforge.config import ConfigError


@runtime_checkable
class Regularizer(Protocol):
    """Anything the loop can add to the task loss: a scalar (float32) tensor that depends on ``model``."""

    def penalty(self, model: nn.Module) -> torch.Tensor: ...


def _excluded(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def anchor_names(model: nn.Module, exclude: Sequence[str] = (), pretrained: Iterable[str] | None = None) -> list[str]:
    """Trainable parameters to anchor: not under an ``exclude`` prefix (e.g. a fresh head) and, when
    ``pretrained`` is given, present in the pre-trained model (not injected by a method)."""
    known = set(pretrained) if pretrained is not None else None
    return [n for n, p in model.named_parameters()
            if p.requires_grad and not _excluded(n, exclude) and (known is None or n in known)]


def snapshot(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Detached float32 copies of the named parameters (on their current device)."""
    wanted = set(names)
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if n in wanted}


class _Anchored:
    """Shared part: anchor weights by name; moved to the parameter's device on first use."""

    def __init__(self, model: nn.Module, strength: float, exclude: Sequence[str], pretrained: Iterable[str] | None,
                 anchor: dict[str, torch.Tensor] | None) -> None:
        if strength < 0:
            raise ConfigError(f"regularisation strength must be >= 0, got {strength}")
        names = anchor_names(model, exclude, pretrained)
        if not names:
            raise ConfigError("regularisation: no trainable pre-trained parameter to anchor; use it with a method "
                              "that trains pre-trained weights (full, freeze, bitfit)")
        if anchor is None:
            anchor = snapshot(model, names)
        missing = [n for n in names if n not in anchor]
        if missing:
            raise ConfigError(f"regularisation: no anchor weight for parameter '{missing[0]}'")
        self.strength = float(strength)
        self.anchor = {n: anchor[n].detach().float() for n in names}
        self.exclude = tuple(exclude)

    def _pairs(self, model: nn.Module):
        """(name, current parameter, anchor on its device) for every anchored parameter."""
        for name, p in model.named_parameters():
            a = self.anchor.get(name)
            if a is None:
                continue
            if a.device != p.device:
                a = self.anchor[name] = a.to(p.device)
            yield name, p, a


class L2SP(_Anchored):
    """``strength/2 * sum ||theta - theta0||^2`` over anchored weights, plus ``head_strength/2 * ||w||^2`` over
    trainable parameters under ``exclude`` (the paper's beta term for the new head; 0 disables it)."""

    def __init__(self, model: nn.Module, strength: float, exclude: Sequence[str] = (), head_strength: float = 0.0,
                 pretrained: Iterable[str] | None = None, anchor: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(model, strength, exclude, pretrained, anchor)
        self.head_strength = float(head_strength)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=next(model.parameters()).device)
        for _, p, a in self._pairs(model):
            total = total + (p.float() - a).pow(2).sum()
        total = 0.5 * self.strength * total
        if self.head_strength:
            head = [p for n, p in model.named_parameters() if p.requires_grad and _excluded(n, self.exclude)]
            total = total + 0.5 * self.head_strength * sum(p.float().pow(2).sum() for p in head)
        return total


class EWC(_Anchored):
    """``strength/2 * sum F_i (theta_i - theta*_i)^2`` with the diagonal Fisher ``fisher`` (name -> tensor) of the
    reference data, anchored at the weights ``model`` has now (the weights after the earlier task)."""

    def __init__(self, model: nn.Module, fisher: dict[str, torch.Tensor], strength: float,
                 exclude: Sequence[str] = (), pretrained: Iterable[str] | None = None,
                 anchor: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(model, strength, exclude, pretrained, anchor)
        self.fisher: dict[str, torch.Tensor] = {}
        for name, a in self.anchor.items():
            f = fisher.get(name)
            if f is None or f.shape != a.shape:
                found = "none" if f is None else tuple(f.shape)
                raise ConfigError(f"EWC: the Fisher information has no entry of shape {tuple(a.shape)} for '{name}' "
                                  f"(found {found}); estimate it on the same model, excluding the new head")
            self.fisher[name] = f.detach().float().to(a.device)

    @classmethod
    def from_reference(cls, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                       batches: Iterable[Any], strength: float, n_batches: int | None = None,
                       exclude: Sequence[str] = (), pretrained: Iterable[str] | None = None) -> "EWC":
        """Estimate the Fisher on reference batches, then anchor at the current weights."""
        return cls(model, estimate_fisher(model, loss_fn, batches, n_batches), strength, exclude, pretrained)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=next(model.parameters()).device)
        for name, p, a in self._pairs(model):
            f = self.fisher[name]
            if f.device != p.device:
                f = self.fisher[name] = f.to(p.device)
            total = total + (f * (p.float() - a).pow(2)).sum()
        return 0.5 * self.strength * total


def estimate_fisher(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], batches: Iterable[Any],
                    n_batches: int | None = None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the trainable parameters: the mean over (up to ``n_batches``) reference
    batches of the squared gradient of ``loss_fn(model, batch)``.

    With batches of one example this is the per-example empirical Fisher of the EWC paper; larger batches
    square the *batch-mean* gradient, which is cheaper but smaller (sampling noise averages out), so the
    strength to use depends on the batch size. Dropout is off (eval mode) during the estimate; the model's
    mode and gradients are left as they were (gradients cleared).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ConfigError("EWC: the model has no trainable parameter to estimate the Fisher information for")
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            if n_batches is not None and count >= n_batches:
                break
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach().float().pow(2)
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise ConfigError("EWC: no reference batch to estimate the Fisher information on; give reference data")
    return {n: f / count for n, f in fisher.items()}
