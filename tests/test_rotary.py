"""tuneforge.rotary: the hand-written rotary embedding equals transformers' apply_rotary_pos_emb (float32 to
rounding, gradients exact in float64, bf16 as close to the exact values as the plain bf16 path), and is switched
in only for model files whose rotation is Llama's."""
from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as plain

from conftest import assert_same_logits_and_grads, logits_and_grads, tiny_batch, tiny_causal_lm
from tuneforge import rotary
from tuneforge.rotary import Rotate, apply_rotary_pos_emb, fast_rotary, llama_style_files


def _inputs(dtype: torch.dtype, seq: int = 10, dim: int = 16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, seq, 4, dim, generator=g).to(dtype).transpose(1, 2)  # (B, heads, T, d), as models pass it
    k = torch.randn(2, seq, 2, dim, generator=g).to(dtype).transpose(1, 2)  # (B, kv heads, T, d)
    angles = torch.rand(2, seq, dim, generator=g, dtype=torch.float64) * 6  # (B, T, d): the halves differ (Llama's
    #       embedding repeats them), so that each half of cos and sin is checked where it is used
    dq, dk = torch.randn(q.shape, generator=g), torch.randn(k.shape, generator=g)  # incoming gradients
    return q, k, angles.cos().to(dtype), angles.sin().to(dtype), dq, dk


def _run(fn, q, k, cos, sin, dq, dk):
    q, k = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    out_q, out_k = fn(q, k, cos, sin)
    (out_q * dq.to(out_q.dtype)).sum().add((out_k * dk.to(out_k.dtype)).sum()).backward()
    return out_q, out_k, q.grad, k.grad


def test_equal_to_apply_rotary_pos_emb_in_float32():
    inputs = _inputs(torch.float32)
    ours, theirs = _run(apply_rotary_pos_emb, *inputs), _run(plain, *inputs)
    assert ours[0].is_contiguous() and ours[0].shape == (2, 4, 10, 16)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)


def test_gradients_are_exact_in_float64():
    q, _, cos, sin, _, _ = _inputs(torch.float64, seq=3, dim=4)
    assert torch.autograd.gradcheck(lambda x: Rotate.apply(x, cos.unsqueeze(1), sin.unsqueeze(1)),
                                    (q.detach().requires_grad_(),))


def test_bf16_as_close_to_the_exact_rotation_as_the_plain_path():
    inputs = _inputs(torch.bfloat16, seq=32, dim=64)
    exact = _run(plain, *(t.double() for t in inputs))
    ours, theirs = _run(apply_rotary_pos_emb, *inputs), _run(plain, *inputs)

    def error(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    for i in range(4):
        assert ours[i].dtype == torch.bfloat16
        assert error(ours[i], exact[i]) <= 1.5 * error(theirs[i], exact[i]) + 1e-4


def test_cos_and_sin_needing_gradients_or_another_dtype_take_the_plain_path(monkeypatch):
    q, k, cos, sin, _, _ = _inputs(torch.float32)
    monkeypatch.setattr(Rotate, "apply", lambda *a: pytest.fail("Rotate used"))
    for c, s, x in ((cos.requires_grad_(), sin, q), (cos.detach(), sin, q.to(torch.bfloat16))):
        for a, b in zip(apply_rotary_pos_emb(x, k, c, s), plain(x, k, c, s)):
            assert torch.allclose(a, b.to(a.dtype), atol=1e-6)


def test_only_llama_style_files_are_switched_and_restored():
    """A tiny Llama: within the block its file calls rotary.apply_rotary_pos_emb (same logits and gradients,
    float32) and its own function after it; GPT-NeoX (its own rotation) is left alone; no switch on another
    device type."""
    model = tiny_causal_lm("llama")
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=64))
    assert llama_style_files(model) == [modeling_llama] and llama_style_files(neox) == []
    batch = tiny_batch()


    before = logits_and_grads(model, batch)
    with fast_rotary(model, torch.device("cuda")) as n:
        assert n == 0 and modeling_llama.apply_rotary_pos_emb is plain
    with fast_rotary(model, torch.device("cpu")) as n:
        assert n == 1 and modeling_llama.apply_rotary_pos_emb is rotary.apply_rotary_pos_emb
        during = logits_and_grads(model, batch)
    assert modeling_llama.apply_rotary_pos_emb is plain
    assert_same_logits_and_grads(during, before)
