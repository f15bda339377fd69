"""LoRA layers that read one input computed together (``methods/lora_stack.py``): the groups found, and the
outputs and gradients of the plain path (float32: to rounding; bf16: within the plain path's own bf16 error)."""
import contextlib

import pytest
import torch

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from tuneforge.methods import registry
from tuneforge.methods.lora_layer import LoRALinear
from tuneforge.methods.lora_stack import LoRAStack, shared_inputs
from tuneforge.models import autocast

GROUPS = {  # family -> the groups of one block
    "llama": [["q_proj", "k_proj", "v_proj"], ["gate_proj", "up_proj"]],
    "bert": [["query", "key", "value"]],
    "gpt2": [],  # c_attn is one layer already; c_fc and c_proj read different inputs
}


def _lora(family: str) -> torch.nn.Module:
    """A tiny model with LoRA on every linear layer, B randomised so the branch counts; eval mode (no dropout)."""
    torch.manual_seed(0)
    model = tiny_classifier(family) if family == "bert" else tiny_causal_lm(family)
    model = registry.apply(model, "lora", registry.make_config("lora", {"rank": 4}), always_train=["classifier"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _run(family: str, stacked: bool, bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    model = _lora(family)
    batch = tiny_batch()
    sample = {k: v[:2] for k, v in batch.items()}
    with shared_inputs(model, sample, bf16) if stacked else contextlib.nullcontext(0) as groups:
        with autocast(torch.device("cpu"), bf16):
            out = model(**batch).logits.float()
        (out ** 2).mean().backward()
    assert all(m.shared is None for m in model.modules() if isinstance(m, LoRALinear))  # undone on exit
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, groups


@pytest.mark.parametrize("family", list(GROUPS))
def test_groups_are_the_layers_reading_one_input(family):
    model = _lora(family)
    seen = []
    with shared_inputs(model, {k: v[:2] for k, v in tiny_batch().items()}) as n:
        for name, m in model.named_modules():
            if isinstance(m, LoRALinear) and m.shared is not None and m.shared.members[0] is m:
                names = {id(x): k.rsplit(".", 1)[-1] for k, x in model.named_modules()}
                seen.append([names[id(x)] for x in m.shared.members])
    assert n == len(seen) == 2 * len(GROUPS[family])  # two blocks
    assert seen == GROUPS[family] * 2


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_same_outputs_and_gradients_as_the_plain_path(family):
    out, grads, _ = _run(family, stacked=False, bf16=False)
    out_s, grads_s, groups = _run(family, stacked=True, bf16=False)
    assert groups > 0
    torch.testing.assert_close(out_s, out, rtol=0, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads_s[name], grads[name], rtol=1e-5, atol=1e-6)
    out_b, grads_b, _ = _run(family, stacked=False, bf16=True)  # bf16: no further from float32 than plain bf16
    out_sb, grads_sb, _ = _run(family, stacked=True, bf16=True)
    torch.testing.assert_close(out_sb, out_b, rtol=0, atol=1e-6)  # the same products forward
    for name in grads:
        err_plain = (grads_b[name] - grads[name]).norm()
        assert (grads_sb[name] - grads[name]).norm() <= 1.5 * err_plain + 1e-3 * grads[name].norm()


@pytest.mark.parametrize("columns", [True, False])
def test_gradcheck(monkeypatch, columns):
    """Float64 gradients of the stacked product, in both layouts of its rank-wide products."""
    monkeypatch.setattr("tuneforge.methods.lora_stack.rank_columns", lambda dtype: columns)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    weights = [torch.randn(o, 6, dtype=torch.float64, generator=g) for o in (4, 3)]
    biases = [torch.randn(4, dtype=torch.float64, generator=g), None]
    a = [torch.randn(2, 6, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2)]
    b = [torch.randn(o, 2, dtype=torch.float64, generator=g, requires_grad=True) for o in (4, 3)]
    assert torch.autograd.gradcheck(lambda x, *ab: LoRAStack.apply(x, 0.5, 2, *weights, *biases, *ab), (x, *a, *b))
    outs = LoRAStack.apply(x, 0.5, 2, *weights, *biases, *a, *b)
    for out, w, bias, ai, bi in zip(outs, weights, biases, a, b):
        plain = x @ w.T + (0 if bias is None else bias) + 0.5 * (x @ ai.T) @ bi.T
        torch.testing.assert_close(out, plain)


def test_a_member_called_with_another_input_computes_alone():
    model = _lora("llama")
    attention = model.model.layers[0].self_attn
    x, other = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    with torch.no_grad():
        expected = attention.k_proj(other)
        with shared_inputs(model, {k: v[:2] for k, v in tiny_batch().items()}):
            attention.q_proj(x)  # the group's first layer: computes q, k and v of x
            torch.testing.assert_close(attention.k_proj(other), expected)  # not x: k of its own input
            attention.q_proj(x)
            torch.testing.assert_close(attention.k_proj(x), attention.k_proj.base(x) + x @ attention.k_proj.delta().T)


def test_a_layer_called_twice_on_one_input_is_no_group():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.proj = torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8)

        def forward(self, input_ids, **_):
            h = self.embed(input_ids)
            return self.proj(h) + self.proj(h)

    model = registry.apply(Twice(), "lora", registry.make_config("lora", {"rank": 2}))
    with shared_inputs(model, {"input_ids": torch.tensor([[1, 2, 3]])}) as groups:
        assert groups == 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_gradient_checkpointing_recomputes_the_group():
    """Under gradient checkpointing the blocks run again in the backward: the group hands out its outputs again."""
    grads = []
    for stacked in (False, True):
        model = _lora("llama")
        model.gradient_checkpointing_enable()
        model.train()
        batch = tiny_batch()
        with shared_inputs(model, {k: v[:2] for k, v in batch.items()}) if stacked else contextlib.nullcontext(0):
            (model(**batch).logits ** 2).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)
