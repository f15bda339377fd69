"""tuneforge.rms_norm: the hand-written RMSNorm equals transformers' LlamaRMSNorm (float32 to rounding, bf16
forward to the bit, bf16 gradients as close to the exact ones as the plain bf16 path's), and is switched in only
where a norm computes exactly what LlamaRMSNorm does."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from conftest import assert_same_logits_and_grads, logits_and_grads, tiny_batch, tiny_causal_lm
from tuneforge.rms_norm import RMSNormFunction, fast_rms_norm, llama_style

EPS = 1e-5


def _inputs(dtype: torch.dtype, weight_dtype: torch.dtype, shape=(3, 5, 48)):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=g) * 3).to(dtype)  # (batch, seq, hidden)
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(weight_dtype)  # (hidden,)
    dy = torch.randn(*shape, generator=g)  # (batch, seq, hidden): the incoming gradient
    return x, w, dy


def _run(fn, x, w, dy):
    """Output and gradients (x, weight) of ``fn`` at ``x``, ``w`` for the incoming gradient ``dy``."""
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = fn(x, w)
    y.backward(dy.to(y.dtype))
    return y, x.grad, w.grad


def plain(x, w):
    """transformers' own LlamaRMSNorm.forward with ``w`` as its weight."""
    return LlamaRMSNorm.forward(SimpleNamespace(weight=w, variance_epsilon=EPS), x)


def fused(x, w):
    return RMSNormFunction.apply(x, w, EPS)


def test_equal_to_llama_rms_norm_in_float32():
    x, w, dy = _inputs(torch.float32, torch.float32)
    for a, b in zip(_run(fused, x, w, dy), _run(plain, x, w, dy)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gradients_are_exact_in_float64():
    x, w, _ = _inputs(torch.float64, torch.float64, shape=(2, 3, 6))
    assert torch.autograd.gradcheck(fused, (x.requires_grad_(), w.requires_grad_()))


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_bf16_forward_is_bitwise_and_gradients_as_close_as_the_plain_path(weight_dtype):
    """A bf16 residual stream: the output is LlamaRMSNorm's to the bit; the gradients' error against the exact
    (float64) ones is at most twice the plain bf16 path's, relative to the largest gradient."""
    x, w, dy = _inputs(torch.bfloat16, weight_dtype, shape=(4, 32, 576))
    exact = _run(plain, x.double(), w.double(), dy.double())
    ours, theirs = _run(fused, x, w, dy), _run(plain, x, w, dy)
    assert ours[0].dtype == theirs[0].dtype and torch.equal(ours[0], theirs[0])

    def error(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    for i in (1, 2):
        assert error(ours[i], exact[i]) <= 2 * error(theirs[i], exact[i]) + 1e-4


def test_frozen_weight_gets_no_gradient():
    x, w, dy = _inputs(torch.bfloat16, torch.bfloat16)
    x.requires_grad_()
    RMSNormFunction.apply(x, w, EPS).backward(dy.to(torch.bfloat16))
    assert x.grad is not None and w.grad is None


def test_llama_style_recognises_copies_of_llama_rms_norm_only():
    assert llama_style(LlamaRMSNorm(8)) and llama_style(Qwen2RMSNorm(8))
    assert not llama_style(GemmaRMSNorm(8))  # (1 + weight), float32 arithmetic
    assert not llama_style(nn.LayerNorm(8)) and not llama_style(nn.RMSNorm(8))


def test_fast_rms_norm_switches_a_models_norms_and_restores_them():
    """A tiny Llama's norms run RMSNormFunction within the block (same logits and gradients, float32) and
    their own forward after it; on another device type nothing is switched."""
    model = tiny_causal_lm("llama")
    batch = tiny_batch()
    norms = [m for m in model.modules() if isinstance(m, LlamaRMSNorm)]


    before = logits_and_grads(model, batch)
    calls = []
    apply = RMSNormFunction.apply
    RMSNormFunction.apply = lambda *a: calls.append(1) or apply(*a)
    try:
        with fast_rms_norm(model, torch.device("cuda")) as n:
            assert n == 0
            model(**batch)
        assert not calls
        with fast_rms_norm(model, torch.device("cpu")) as n:
            assert n == len(norms) == 2 * 2 + 1  # two per block, one final
            during = logits_and_grads(model, batch)
        assert len(calls) == n
    finally:
        RMSNormFunction.apply = apply
    assert all("forward" not in vars(m) for m in norms)
    assert_same_logits_and_grads(during, before)
