"""Rotary position embedding with a hand-written backward, for CPU training (``fast_rotary``).

transformers' ``apply_rotary_pos_emb`` computes ``q * cos + rotate_half(q) * sin`` with ``rotate_half(q) =
cat(-q2, q1)`` (q1, q2: the two halves of the head dimension): five element-wise passes per tensor forward
(a product, a negation, a concatenation, a product, a sum) and, in autograd's backward, as many plus the
zero-filled gradients of the two slices. Here the rotation is one product and two half-width fused
multiply-adds, forward and backward alike:

    out1 = q1 * cos1 - q2 * sin1,   out2 = q2 * cos2 + q1 * sin2
    dq1  = g1 * cos1 + g2 * sin2,   dq2  = g2 * cos2 - g1 * sin1

Each output is written in contiguous ``(B, heads, T, d)`` layout. Fused multiply-adds round once where the plain
path rounds the product and the sum separately, so bf16 results differ from it by rounding only.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch
from torch import nn

from tuneforge.fast import bytecode, patched

__all__ = ["Rotate", "apply_rotary_pos_emb", "llama_style_files", "fast_rotary"]


class Rotate(torch.autograd.Function):
    """``x * cos + rotate_half(x) * sin`` for x ``(B, heads, T, d)`` and cos/sin broadcastable to it (no
    gradient for cos and sin)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, sign=1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, sign=-1.0), None, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """``x * cos`` with ``-sign * x2 * sin1`` added to the first half and ``sign * x1 * sin2`` to the second
    (sign 1: the rotation; -1: its transpose, the backward)."""
    h = x.shape[-1] // 2
    out = torch.empty(x.shape, dtype=torch.result_type(x, cos), device=x.device)  # contiguous (B, heads, T, d)
    torch.mul(x, cos, out=out)
    out[..., :h].addcmul_(x[..., h:], sin[..., :h] if sign > 0 else sin[..., h:], value=-1.0 if sign > 0 else 1.0)
    out[..., h:].addcmul_(x[..., :h], sin[..., h:] if sign > 0 else sin[..., :h], value=1.0 if sign > 0 else -1.0)
    return out


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_pos_emb`` through :class:`Rotate`: q ``(B, heads, T, d)``, k ``(B, kv
    heads, T, d)``, cos/sin ``(B, T, d)`` -> the rotated q and k. Tensors of another dtype than cos and sin,
    or cos/sin that need gradients, take the plain path."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    if cos.requires_grad or sin.requires_grad or not q.dtype == k.dtype == cos.dtype == sin.dtype:
        return _plain(q, cos, sin), _plain(k, cos, sin)
    return Rotate.apply(q, cos, sin), Rotate.apply(k, cos, sin)


def _plain(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


def llama_style_files(model: nn.Module) -> list[Any]:
    """The Python modules defining ``model``'s layers whose ``apply_rotary_pos_emb`` and ``rotate_half`` are
    Llama's, instruction for instruction (Qwen2/3, Mistral, ...; not partial or interleaved rotations)."""
    from transformers.models.llama import modeling_llama as llama

    want = (bytecode(llama.apply_rotary_pos_emb), bytecode(llama.rotate_half))
    files = {type(m).__module__: sys.modules.get(type(m).__module__) for m in model.modules()}
    return [f for f in files.values() if f is not None and (bytecode(getattr(f, "apply_rotary_pos_emb", None)),
                                                             bytecode(getattr(f, "rotate_half", None))) == want]


def fast_rotary(model: nn.Module, device: torch.device) -> contextlib.AbstractContextManager[int]:
    """Within the block, on a CPU, the model files of :func:`llama_style_files` call this module's
    :func:`apply_rotary_pos_emb`; elsewhere nothing changes. Yields how many files were switched."""
    files = llama_style_files(model) if device.type == "cpu" else []
    return patched("apply_rotary_pos_emb", [(f, apply_rotary_pos_emb) for f in files])
