"""The optimizer steps only the input-embedding rows that training can reach.

Full fine-tuning trains the whole ``(vocabulary, hidden)`` input embedding, yet a batch looks up only the ids its
training examples hold: a row whose id appears in no training example never has a gradient. With no weight decay
on it, an optimizer leaves such a row exactly as it is: AdamW's moments stay zero and its update is
``lr * 0 / (sqrt(0) + eps) = 0`` (SGD's and RMSprop's likewise), so stepping it is wasted work, and its moments are
wasted memory. WNUT-16's 1,914 training tweets hold 6,566 of MiniLM's 30,522 ids (21.5 %), Rotten Tomatoes' 6,824
sentences 12,051 (39.5 %); AdamW's moments over the whole embedding are 94 MB. AdamW's decoupled weight decay
changes such a row by one factor alone, ``row * (1 - lr * weight_decay)`` (the moments stay zero): that factor is
applied to the whole weight after each step, before the stepped rows are written back, so decay needs no state
for those rows either (SGD's and RMSprop's decay enters the gradient and their moments: not applicable).

:class:`TrainedRows` gives the optimizer a stand-in parameter holding only those rows, ``(rows, hidden)``. The
embedding's sparse gradient (:func:`tuneforge.fast.sparse_embedding_gradient`) is added into the stand-in's
gradient, kept across steps like :class:`tuneforge.fast.KeptGradient`'s (only the previous step's rows zeroed);
after each optimizer step the stepped rows are written back into the embedding, which every forward reads. The
update is that of the whole embedding, row for row; only the gradient norm that clipping measures sums fewer zeros
(rounding). Checkpoints hold the optimizer state at the embedding's full shape (zeros in the other rows), as the
plain path writes it, so either path resumes the other's.

It applies where the sparse gradient does (CPU, one process, an untied embedding being trained), the embedding's
weight decay is zero (the default) or AdamW's, and no regulariser adds a dense gradient to it.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["TrainedRows", "training_ids"]


def training_ids(examples: Iterable[dict[str, Any]], pad_id: int) -> torch.Tensor:
    """The sorted distinct token ids that training batches of ``examples`` can look up (padding's included)."""
    seen = {pad_id}
    for e in examples:
        seen.update(e["input_ids"])
    return torch.tensor(sorted(seen), dtype=torch.long)


class TrainedRows:
    """Post-accumulate-grad hook of an embedding weight with sparse gradients and the optimizer's stand-in for
    it: ``param`` holds the rows ``ids`` of the weight (``(rows, hidden)``), ``param.grad`` their gradient."""

    def __init__(self, weight: nn.Parameter, ids: torch.Tensor) -> None:
        self.weight = weight  # (vocabulary, hidden)
        self.ids = ids.to(weight.device)  # (rows,) sorted distinct
        self.slot = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)  # id -> row or -1
        self.slot[self.ids] = torch.arange(len(self.ids), device=weight.device)
        self.param = nn.Parameter(weight.detach()[self.ids].clone())  # (rows, hidden): what the optimizer steps
        self.buffer: torch.Tensor | None = None  # the stand-in's gradient, kept across steps
        self.touched: list[torch.Tensor] = []  # rows of the buffer written since it was last zeroed
        self.handles = [weight.register_post_accumulate_grad_hook(self)]

    def __call__(self, weight: nn.Parameter) -> None:
        grad, weight.grad = weight.grad, None  # the stand-in carries it from here
        if grad is None:
            return
        if not grad.is_sparse:
            raise RuntimeError("the trained embedding received a dense gradient; TrainedRows needs sparse ones")
        slots = self.slot[grad._indices()[0]]  # (looked-up tokens,)
        if bool((slots < 0).any()):
            raise RuntimeError("a training batch looked up an embedding row that no training example holds")
        if self.buffer is None:
            self.buffer = torch.zeros_like(self.param)
        if self.param.grad is not self.buffer:  # the step's first micro-batch: clear the previous step's rows
            for rows in self.touched:
                self.buffer.index_fill_(0, rows, 0)
            self.touched = []
            self.param.grad = self.buffer
        self.buffer.index_add_(0, slots, grad._values())  # values: (looked-up tokens, hidden)
        self.touched.append(slots)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Write the stepped rows back after every ``optimizer.step()``; save/load its state at the full shape."""
        self.handles += [optimizer.register_step_post_hook(lambda opt, *_: self.push(opt)),
                         optimizer.register_state_dict_post_hook(self._expanded),
                         optimizer.register_load_state_dict_pre_hook(self._compacted),
                         optimizer.register_load_state_dict_post_hook(lambda *_: self.pull())]

    @torch.no_grad()
    def push(self, optimizer: torch.optim.Optimizer) -> None:
        """The stand-in's rows into the embedding weight; after an AdamW step with weight decay the other rows
        first shrink as AdamW shrinks a row without gradient (its moments zero): by ``1 - lr * weight_decay``."""
        decay = self._decoupled_decay(optimizer)
        if decay:
            self.weight.mul_(1 - decay)  # (vocabulary, hidden): the stepped rows are overwritten below
        self.weight.index_copy_(0, self.ids, self.param)

    def _decoupled_decay(self, optimizer: torch.optim.Optimizer) -> float:
        """``lr * weight_decay`` of the stand-in's AdamW group at the step just taken (0: no decay)."""
        if not isinstance(optimizer, torch.optim.AdamW):
            return 0.0
        group = next(g for g in optimizer.param_groups if any(p is self.param for p in g["params"]))
        return float(group["lr"]) * group["weight_decay"]

    @torch.no_grad()
    def pull(self) -> None:
        """The embedding weight's rows into the stand-in (after the weight was loaded)."""
        self.param.copy_(self.weight[self.ids])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _index(self, optimizer: torch.optim.Optimizer) -> int:
        params = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict's numbering
        return next(i for i, p in enumerate(params) if p is self.param)

    def _expanded(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        i = self._index(optimizer)
        if i in state_dict["state"]:  # a new dict: the entry itself is the optimizer's live state
            full = {k: self._full(v) for k, v in state_dict["state"][i].items()}
            state_dict["state"] = {**state_dict["state"], i: full}
        return state_dict

    def _compacted(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        i = self._index(optimizer)
        if i in state_dict["state"]:
            state_dict = {**state_dict, "state": {**state_dict["state"], i: {
                k: v[self.ids.to(v.device)] if torch.is_tensor(v) and v.shape == self.weight.shape else v
                for k, v in state_dict["state"][i].items()}}}
        return state_dict

    def _full(self, value: Any) -> Any:
        """A per-row state tensor ``(rows, hidden)`` at the weight's shape, zeros in the other rows."""
        if not torch.is_tensor(value) or value.shape != self.param.shape:
            return value
        return value.new_zeros(self.weight.shape).index_copy_(0, self.ids.to(value.device), value)
