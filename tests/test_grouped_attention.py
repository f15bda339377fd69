"""tuneforge.grouped_attention: eager attention per key/value head group equals transformers' eager attention
(float32 to rounding; bf16 forward to the bit, gradients as close to the exact ones as eager's), and is switched
in only for models whose eager attention is Llama's."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM
from transformers.models.llama.modeling_llama import eager_attention_forward

from conftest import assert_same_logits_and_grads, logits_and_grads, tiny_batch, tiny_causal_lm
from tuneforge.grouped_attention import GROUPED, attention, grouped_attention, llama_eager_configs


def _inputs(dtype: torch.dtype, heads: int, kv_heads: int, mask: str, seq: int = 12, dim: int = 16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, seq, heads, dim, generator=g).to(dtype).transpose(1, 2)  # (B, H, T, d), as models pass it
    k, v = (torch.randn(2, seq, kv_heads, dim, generator=g).to(dtype).transpose(1, 2) for _ in range(2))
    allowed = torch.ones(seq, seq).tril().bool().expand(2, 1, seq, seq).clone()  # (B, 1, T, S) causal
    allowed[0, :, 7:, :7] = False  # row 0 packs two examples: the second sees only itself
    allowed[1, :, :, 10:] = False  # row 1's last two keys are padding
    allowed[1, :, 0] = False  # and its first query sees nothing (left padding): uniform weights, not NaN
    if mask == "bool":
        m = allowed
    else:
        m_dtype = dtype if mask == "float" else torch.float32
        m = torch.zeros(allowed.shape, dtype=m_dtype).masked_fill(~allowed, torch.finfo(m_dtype).min)
    dout = torch.randn(2, seq, heads, dim, generator=g)  # (B, T, H, d): the incoming gradient
    return q, k, v, m, dout


def _run(fn, q, k, v, mask, dout):
    """Output, weights and gradients (q, k, v) of attention ``fn``."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=True)
    out, weights = fn(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5, dropout=0.0)
    out.backward(dout.to(out.dtype))
    return out, weights, q.grad, k.grad, v.grad


@pytest.mark.parametrize("mask", ["float", "bool"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (3, 3), (6, 1)])
def test_equal_to_eager_attention_in_float32(heads, kv_heads, mask):
    inputs = _inputs(torch.float32, heads, kv_heads, "float")
    ours = _run(attention, *inputs[:3], _inputs(torch.float32, heads, kv_heads, mask)[3], inputs[4])
    theirs = _run(eager_attention_forward, *inputs)
    assert ours[0].shape == (2, 12, heads, 16) and ours[1].shape == (2, heads, 12, 12)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask", ["float", "float32"])
def test_bf16_forward_is_bitwise_and_gradients_as_close_as_eager(mask):
    """bf16 scores (a float32 mask is clamped into bf16's range, as eager's sum saturates): the output and
    weights are eager's to the bit (power-of-two scale); each gradient's error against the exact one is at
    most twice eager's, relative to its largest value."""
    q, k, v, m, dout = _inputs(torch.bfloat16, 4, 2, mask, seq=32, dim=64)
    exact = _run(eager_attention_forward, q.double(), k.double(), v.double(), m.double().clamp(min=-1e30),
                 dout.double())
    ours, theirs = _run(attention, q, k, v, m, dout), _run(eager_attention_forward, q, k, v, m, dout)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1].to(ours[1].dtype))

    def error(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    for i in (2, 3, 4):
        assert error(ours[i], exact[i]) <= 2 * error(theirs[i], exact[i]) + 1e-4


def test_only_models_with_llamas_eager_attention_are_switched():
    llama = tiny_causal_lm("llama")
    llama.config._attn_implementation = "eager"
    assert llama_eager_configs(llama) == [llama.config]
    torch.manual_seed(0)
    gemma2 = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            num_key_value_heads=1, head_dim=16, intermediate_size=64))
    gemma2.config._attn_implementation = "eager"
    assert llama_eager_configs(gemma2) == []  # soft-capped scores
    llama.config._attn_implementation = "sdpa"
    assert llama_eager_configs(llama) == []  # not eager at all


def test_grouped_attention_runs_a_models_attention_and_restores_it():
    """A tiny Llama (4 query, 2 key/value heads) with eager attention: within the block on a CPU its
    attention runs :func:`attention`, with the same logits and gradients as eager (float32); the config is
    restored after; on another device type nothing is switched."""
    model = tiny_causal_lm("llama")
    model.config._attn_implementation = "eager"
    batch = tiny_batch()


    before = logits_and_grads(model, batch)
    with grouped_attention(model, torch.device("cuda")) as n:
        assert n == 0 and model.config._attn_implementation == "eager"
    with grouped_attention(model, torch.device("cpu")) as n:
        assert n == 1 and model.config._attn_implementation == GROUPED
        during = logits_and_grads(model, batch)
    assert model.config._attn_implementation == "eager"
    assert_same_logits_and_grads(during, before)
