"""The LoRA layer (:mod:`tuneforge.methods.lora` applies it): ``base(x) + s * B(A(dropout(x)))`` beside a frozen
linear weight (``A: (r, in)``, ``B: (out, r)``, ``B`` zero-initialised), torchtune's LoRALinear. The low-rank product
is accumulated into the base output by the GEMM itself (``addmm_``; under autocast the input is cast once for both
branches). With a frozen base and no LoRA dropout (the defaults) one autograd function (:class:`LoRAProduct`)
computes the branch's gradients with its rank-wide products laid out the way the compute dtype's CPU BLAS
multiplies them fastest (:func:`rank_columns`; autograd's own ``linear`` backward multiplies ``dB = g.T @ h``,
up to 7x slower; docs/performance.md), and adds the branch's input gradient inside the base one's GEMM. Works on
``nn.Linear`` and GPT-2's transposed ``Conv1D``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from tuneforge.methods.layers import Wrapper


def rank_columns(dtype: torch.dtype) -> bool:
    """Whether :class:`LoRAProduct` lays its rank-wide products out as ``(tokens, r)`` columns (else ``(r, tokens)``
    rows): the columns for bf16/fp16, whose CPU matmuls are oneDNN's (interleaved probes, bf16, Xeon with AMX:
    SmolLM2 LoRA SFT +3.3 %, MiniLM LoRA classification +3.2 % real tokens/s), the rows for float32, whose
    matmuls are MKL's (on the AMD EPYC ``dh = g @ B`` ran 3-4x slower than ``B.T @ g.T``; docs/performance.md)."""
    return dtype != torch.float32


class LoRAProduct(torch.autograd.Function):
    """``x @ W.T + bias + s * (x @ A.T) @ B.T`` for a frozen ``W``/``bias``; gradients for ``x``, ``A``, ``B``.

    The rank-wide products are laid out by :func:`rank_columns`: ``h = x @ A.T`` or ``h.T = A @ x.T`` and,
    backward, ``dh = s * g @ B`` or ``dh.T = s * B.T @ g.T``; then ``dA = dh.T @ x`` and ``dB = s * (h.T @ g).T``
    (autograd's ``linear`` backward computes ``dB = g.T @ h``, a ``(out, tokens) @ (tokens, r)`` product 7x slower
    on CPU BLAS at MiniLM's sizes); ``dx = g @ W + dh @ A`` accumulates the branch in the base GEMM."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scaling: float) -> torch.Tensor:
        # x: (T, in); weight: (out, in); bias: (out,) or None; a: (r, in); b: (out, r) -> (T, out)
        dtype = x.dtype  # the compute dtype (autocast's, cast by the caller)
        weight, a, b = weight.to(dtype), a.to(dtype), b.to(dtype)
        out = x @ weight.t() if bias is None else torch.addmm(bias.to(dtype), x, weight.t())  # (T, out)
        ctx.columns = rank_columns(dtype)
        h_t = (x @ a.t()).t() if ctx.columns else a @ x.t()  # (r, T): a transposed view of (T, r) columns
        out.addmm_(h_t.t(), b.t(), alpha=scaling)
        ctx.save_for_backward(x, weight, a, b, h_t)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # grad: (T, out)
        x, weight, a, b, h_t = ctx.saved_tensors
        dh_t = (grad @ b).t() if ctx.columns else b.t() @ grad.t()  # (r, T)
        dh_t.mul_(ctx.scaling)
        grad_a = dh_t @ x  # (r, in)
        grad_b = (h_t @ grad).mul_(ctx.scaling).t()  # (out, r)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight).addmm_(dh_t.t(), a)  # (T, in)
        return grad_x, None, None, grad_a, grad_b, None


class LoRALinear(Wrapper):
    """A frozen ``nn.Linear``/``Conv1D`` plus a trainable low-rank branch."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float, rslora: bool) -> None:
        super().__init__()
        self.base = base
        self.transposed = isinstance(base, Conv1D)  # Conv1D stores weight as (in, out)
        in_f, out_f = (base.weight.shape if self.transposed else base.weight.shape[::-1])
        self.lora_A = nn.Linear(in_f, rank, bias=False)  # weight (r, in)
        self.lora_B = nn.Linear(rank, out_f, bias=False)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base.weight.device)
        self.lora_B.to(base.weight.device)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        self.merged = False
        self.shared = None  # a lora_stack.SharedInput: computed with the layers that read the same input

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        if self.merged:
            return self.base(x)
        given = x
        if torch.is_autocast_enabled(x.device.type):  # cast once for both branches (autocast would cast twice)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        rows = x.reshape(-1, x.shape[-1])  # (T, in)
        out = self.shared.output(self, given, rows) if self.shared is not None else None  # (T, out) or None
        if out is None and self._product_applies():
            w = self.base.weight
            out = LoRAProduct.apply(rows, w.t() if self.transposed else w, self.base.bias,
                                    self.lora_A.weight, self.lora_B.weight, self.scaling)  # (T, out)
        elif out is None:
            out = self.base(rows)  # (T, out)
            h = self.lora_A(self.dropout(rows))  # (T, r)
            # out += s * h @ B.T inside the GEMM (beta 1): no separate (T, out) product, scaling or sum tensors
            out = out.addmm_(h.to(out.dtype), self.lora_B.weight.t().to(out.dtype), alpha=self.scaling)
        return out.view(*x.shape[:-1], out.shape[-1])

    def _product_applies(self) -> bool:
        """:class:`LoRAProduct` computes this layer: a plain frozen base, no dropout on the branch."""
        w, bias = self.base.weight, self.base.bias
        return (type(self.base) in (nn.Linear, Conv1D) and isinstance(self.dropout, nn.Identity)
                and not w.requires_grad and not (bias is not None and bias.requires_grad))

    def delta(self) -> torch.Tensor:
        """The dense update ``s * B @ A`` in the base weight's layout."""
        d = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling  # (out, in)
        return d.T if self.transposed else d

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to the base weight in place (the branch is skipped from then on)."""
        if not self.merged:
            w = self.base.weight
            w.copy_((w.float() + self.delta()).to(w.dtype))
            self.merged = True
