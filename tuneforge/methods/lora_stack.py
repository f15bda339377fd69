"""LoRA layers that read the same input computed together (``shared_inputs``): attention's query, key and value
projections and a gated MLP's gate and up projections each read one tensor. Called one by one, every layer
multiplies that input by its own ``A`` and, backward, multiplies its ``dh`` by the input again and adds its own
input gradient; stacked, the group's ``A`` matrices make one ``(tokens, n * r)`` product each way, and the base
layers' input gradients accumulate into one buffer. The base products stay as they are (one per layer).

Which layers share an input is seen, not assumed: one forward pass of a sample batch records the input object
each LoRA layer receives; layers of one parent module called in a row with the same object form a group. The
first of a group then computes every member's output and hands the others theirs when they are called with the
same object; any other call (another order, another input) computes the layer alone.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from tuneforge.methods.lora_layer import LoRALinear, rank_columns


class LoRAStack(torch.autograd.Function):
    """``x @ W_i.T + b_i + s * (x @ A_i.T) @ B_i.T`` for n frozen ``W_i``/``b_i`` sharing ``x``; gradients for
    ``x``, every ``A_i`` and ``B_i``. Arguments: ``x`` (T, in), ``s``, n, then n weights ``(out_i, in)``, n biases
    (or None), n ``A_i`` ``(r, in)``, n ``B_i`` ``(out_i, r)``. Layout of the rank-wide products as in
    :class:`tuneforge.methods.lora_layer.LoRAProduct`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scaling: float, n: int,
                *tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        dtype = x.dtype
        weights = [w.to(dtype) for w in tensors[:n]]
        biases, a_list, b_list = tensors[n:2 * n], tensors[2 * n:3 * n], [b.to(dtype) for b in tensors[3 * n:]]
        a = torch.cat([m.to(dtype) for m in a_list])  # (n r, in)
        r = a_list[0].shape[0]
        ctx.columns = rank_columns(dtype)
        h_t = (x @ a.t()).t() if ctx.columns else a @ x.t()  # (n r, T)
        outs = []
        for i, (w, bias, b) in enumerate(zip(weights, biases, b_list)):
            out = x @ w.t() if bias is None else torch.addmm(bias.to(dtype), x, w.t())  # (T, out_i)
            outs.append(out.addmm_(h_t[i * r:(i + 1) * r].t(), b.t(), alpha=scaling))
        ctx.save_for_backward(x, a, h_t, *weights, *b_list)
        ctx.scaling, ctx.n, ctx.r = scaling, n, r
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:  # grads: (T, out_i)
        x, a, h_t, *rest = ctx.saved_tensors
        n, r, s = ctx.n, ctx.r, ctx.scaling
        weights, b_list = rest[:n], rest[n:]
        grads = [torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device) if g is None else g
                 for g, w in zip(grads, weights)]
        if ctx.columns:
            dh_t = torch.cat([g @ b for g, b in zip(grads, b_list)], dim=1).t()  # (n r, T) view of (T, n r)
        else:
            dh_t = torch.cat([b.t() @ g.t() for g, b in zip(grads, b_list)])  # (n r, T)
        dh_t.mul_(s)
        grad_a = dh_t @ x  # (n r, in)
        grad_b = [(h_t[i * r:(i + 1) * r] @ g).mul_(s).t() for i, g in enumerate(grads)]  # (out_i, r)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grads[0] @ weights[0]).addmm_(dh_t.t(), a)  # (T, in)
            for g, w in zip(grads[1:], weights[1:]):
                grad_x.addmm_(g, w)
        grad_a_list = [grad_a[i * r:(i + 1) * r] for i in range(n)]
        return (grad_x, None, None, *[None] * (2 * n), *grad_a_list, *grad_b)


class SharedInput:
    """A group of LoRA layers that read one input: the first computes all, the others collect their outputs."""

    def __init__(self, members: list[LoRALinear]) -> None:
        self.members = members
        self.pending: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # (input, outputs not yet collected)

    def output(self, layer: LoRALinear, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
        """``layer``'s ``(T, out)`` output for input ``x`` (its rows ``rows``), or None: compute it alone."""
        i = self.members.index(layer)
        if i == 0:
            bases = [m.base for m in self.members]
            outs = LoRAStack.apply(rows, layer.scaling, len(bases),
                                   *[m.weight.t() if layer.transposed else m.weight for m in bases],
                                   *[m.bias for m in bases], *[m.lora_A.weight for m in self.members],
                                   *[m.lora_B.weight for m in self.members])
            self.pending = (x, list(outs))
            return outs[0]
        if self.pending is None or self.pending[0] is not x:
            return None
        out = self.pending[1][i]
        if i == len(self.members) - 1:
            self.pending = None
        return out


def _groups(model: nn.Module, sample: dict[str, torch.Tensor], bf16: bool) -> list[list[LoRALinear]]:
    """LoRA layers of one parent called one after another with the same input object in a forward of ``sample``
    (model inputs; ``bf16``: the run's autocast)."""
    parent = {id(m): name.rpartition(".")[0] for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    calls: list[tuple[LoRALinear, torch.Tensor]] = []  # inputs kept alive: no id is reused while recording
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append((m, args[0])))
             for m in model.modules() if isinstance(m, LoRALinear)]
    training = model.training
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model.eval()(**sample)
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    groups: list[list[LoRALinear]] = []
    for (m, x), (prev, prev_x) in zip(calls, [(None, None), *calls[:-1]]):
        if prev is not None and x is prev_x and parent[id(m)] == parent[id(prev)] and m not in groups[-1]:
            groups[-1].append(m)
        else:
            groups.append([m])
    return [g for g in groups if len(g) > 1 and _compatible(g)]


def _compatible(group: list[LoRALinear]) -> bool:
    first = group[0]
    return all(m._product_applies() and m.lora_A.weight.shape[0] == first.lora_A.weight.shape[0]
               and m.scaling == first.scaling and m.transposed == first.transposed for m in group)


@contextlib.contextmanager
def shared_inputs(model: nn.Module, sample: dict[str, torch.Tensor] | None, bf16: bool = False) -> Iterator[int]:
    """Within the block, groups of LoRA layers reading one input are computed together (:class:`LoRAStack`),
    found on ``sample`` (model inputs; ``bf16``: the run's autocast); yields how many groups. Nothing changes
    without LoRA layers or a sample batch."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    groups = _groups(model, sample, bf16) if layers and sample is not None else []
    for group in groups:
        shared = SharedInput(group)
        for m in group:
            m.shared = shared
    try:
        yield len(groups)
    finally:
        for m in layers:
            m.shared = None

