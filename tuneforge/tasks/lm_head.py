"""The LM head and its cross-entropy over the answer rows, a chunk of the vocabulary at a time.

Computed as ``lm_head(hidden).float()`` followed by ``cross_entropy``, a step writes and re-reads the whole
``(rows, vocabulary)`` logits several times: the head's output, its float32 copy, the log-probabilities, and in
the backward a zero-filled gradient, the log-softmax gradient and its cast back (SmolLM2: 49,152 words, so 50 MB
of float32 per 256 answer rows, each pass out of cache). :class:`HeadNLL` takes ``CHUNK_WORDS`` words at a time:
a first pass keeps each row's running maximum logit and sum of exponentials (the loss is the log of that sum,
plus the maximum, minus the target's logit); while training, a second pass turns each chunk's logits into
``softmax - one_hot`` and multiplies it out into the gradients of the hidden states and, for a head that trains,
of its weight (as Liger Kernel's fused linear cross-entropy does). Only the head's output in the compute dtype is
kept between the passes; the backward scales the stored gradients by the incoming one. Same numbers as the plain
path up to rounding (``tests/tasks/test_lm_head.py``).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor

from tuneforge.data.chat import IGNORE

HEAD_ROWS = 64  # the LM head's rows (trained positions) are rounded up to a multiple of this
CHUNK_WORDS = 2048  # vocabulary rows of the head per chunk (SmolLM2: 2,048 x 576 bf16 weights = 2.4 MB)


class HeadNLL(torch.autograd.Function):
    """Summed float32 cross-entropy of ``hidden @ weight.T (+ bias)`` (+ ``offset``, a constant added in float32
    as BART adds its ``final_logits_bias`` to the head's output) against ``target`` (``IGNORE``: no loss), a chunk
    of the vocabulary at a time; gradients for ``hidden``, ``weight`` and ``bias`` computed during the forward,
    the incoming gradient applied in the backward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                chunk: int, offset: torch.Tensor | None = None) -> torch.Tensor:
        # hidden: (N, H); weight: (V, H); bias: (V,) or None; target: (N,); offset: (V,) or None -> () summed loss
        need = ctx.needs_input_grad[:2] + ((bias is not None and ctx.needs_input_grad[2]),)
        keep = target != IGNORE  # (N,)
        rows = torch.arange(len(target), device=target.device)  # (N,)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # float32, or float64 for float64 inputs
        peak = torch.full_like(target, float("-inf"), dtype=acc)  # (N,): running max logit
        total = torch.zeros_like(peak)  # (N,): running sum of exp(logit - peak)
        picked = torch.zeros_like(peak)  # (N,): the target's logit
        kept = []  # the logits of each chunk (compute dtype), for the gradient
        for v0 in range(0, weight.shape[0], chunk):
            w = weight[v0:v0 + chunk]  # (C, H)
            logits = hidden @ w.t() if bias is None else torch.addmm(bias[v0:v0 + chunk], hidden, w.t())  # (N, C)
            f = logits.to(acc) if offset is None else logits.to(acc) + offset[v0:v0 + chunk]  # (N, C)
            top = torch.maximum(peak, f.amax(1))  # (N,)
            total = total * (peak - top).exp() + (f - top.unsqueeze(1)).exp_().sum(1)
            peak = top
            here = (target >= v0) & (target < v0 + w.shape[0])  # (N,): targets in this chunk
            picked = torch.where(here, f[rows, (target - v0).clamp(0, w.shape[0] - 1)], picked)
            if any(need):
                kept.append(logits)
        lse = peak + total.log()  # (N,)
        loss = torch.where(keep, lse - picked, 0.0).sum()
        grads = _gradients(hidden, weight, target, keep, lse, kept, chunk, need, offset) if any(need) else (None,) * 3
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # grad: () of the summed loss
        scale = (lambda g: None if g is None else g * grad.to(g.dtype))
        return (*map(scale, ctx.saved_tensors), None, None, None)


def _gradients(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, keep: torch.Tensor,
               lse: torch.Tensor, kept: list[torch.Tensor], chunk: int, need: tuple[bool, bool, bool],
               offset: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
    """The summed loss's gradients for hidden ``(N, H)``, weight ``(V, H)`` and bias ``(V,)`` from each chunk's
    ``softmax - one_hot``, cast to the compute dtype as autocast's backward would. Ignored rows are left in
    ``g`` and masked out of the narrow operands instead (the hidden states, the summed hidden gradient, the
    bias's row weights): no pass over each ``(N, C)`` chunk to zero them."""
    rows = torch.arange(len(target), device=target.device)
    weights = keep.to(hidden.dtype)  # (N,): 1 on rows that count, 0 on ignored ones
    grad_h = torch.zeros_like(hidden, dtype=lse.dtype) if need[0] else None  # (N, H), summed over chunks
    grad_w = torch.empty_like(weight) if need[1] else None  # (V, H)
    grad_b = weight.new_empty(weight.shape[0]) if need[2] else None  # (V,)
    counted = hidden * weights.unsqueeze(1) if need[1] else None  # (N, H): ignored rows zeroed
    for logits, v0 in zip(kept, range(0, weight.shape[0], chunk)):
        g = logits.to(lse.dtype) - lse.unsqueeze(1)  # (N, C)
        if offset is not None:
            g += offset[v0:v0 + g.shape[1]]
        g = g.exp_()  # (N, C): softmax
        here = keep & (target >= v0) & (target < v0 + g.shape[1])
        g[rows[here], target[here] - v0] -= 1.0
        g = g.to(hidden.dtype)  # (N, C), ignored rows not zeroed
        if grad_h is not None:
            grad_h += g @ weight[v0:v0 + chunk]  # (N, H)
        if grad_w is not None:
            grad_w[v0:v0 + chunk] = g.t() @ counted  # (C, H)
        if grad_b is not None:
            grad_b[v0:v0 + chunk] = weights @ g  # (C,)
    if grad_h is not None:
        grad_h = grad_h.mul_(keep.unsqueeze(1)).to(hidden.dtype)
    return grad_h, grad_w, grad_b


def applies(head: nn.Module) -> bool:
    """Whether :func:`head_nll` can stand in for running the head: a plain ``nn.Linear`` (not a method's wrapper)
    without hooks, whose weight is not sharded (FSDP2 gathers it only when the module itself runs)."""
    return (type(head) is nn.Linear and not isinstance(head.weight, DTensor)
            and not (head._forward_hooks or head._forward_pre_hooks))


def head_nll(head: nn.Linear, hidden: torch.Tensor, target: torch.Tensor, chunk: int = CHUNK_WORDS,
             extra_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden) + extra_bias`` against ``target`` as :class:`HeadNLL` computes it, the
    head in the dtype it would run in (autocast's, else the weight's), ``extra_bias`` added to its float32 output.
    hidden ``(N, H)``, target ``(N,)``, extra_bias ``(V,)`` (BART's ``final_logits_bias``, no gradient) -> ``()``."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
    bias = None if head.bias is None else head.bias.to(dtype)
    offset = None if extra_bias is None else extra_bias.detach().to(torch.promote_types(dtype, torch.float32))
    off = torch.autocast(device_type=device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext()
    with off:  # the chunks' products run in ``dtype`` as cast here
        return HeadNLL.apply(hidden.to(dtype), head.weight.to(dtype), bias, target, chunk, offset)


def kept_rows(hidden: torch.Tensor, target: torch.Tensor, multiple: int = HEAD_ROWS
              ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The rows of ``hidden`` whose ``target`` is kept (not ``IGNORE``), their number rounded up to a multiple of
    ``multiple`` with spare rows that read row 0 and count for nothing (few matmul shapes: see
    ``batching.Shapes``). hidden ``(N, H)``, target ``(N,)`` -> rows ``(K + spare, H)``, their targets
    ``(K + spare,)`` and K, in row order."""
    keep = target != IGNORE  # (N,)
    at = keep.nonzero().squeeze(1)  # (K,)
    kept = at.numel()
    spare = -kept % multiple
    at = torch.cat([at, at.new_zeros(spare)])  # (K + spare,)
    chosen = torch.cat([target[keep], target.new_full((spare,), IGNORE)])  # (K + spare,)
    return hidden[at], chosen, kept
