import math

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from tuneforge.config import ConfigError
from tuneforge.methods import lora, registry

HEADS = ["classifier", "score"]


def _apply(model, **options):
    return registry.apply(model, "lora", registry.make_config("lora", options), always_train=HEADS)


def _randomise_b(model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)


def test_only_lora_and_head_train(family):
    model = _apply(tiny_classifier(family), rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n or n.split(".")[0] in HEADS for n in trainable)
    assert any(n.split(".")[0] in HEADS for n in trainable)
    # every wrapped layer contributes exactly its A and B
    n_wrapped = sum(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert sum(".lora_" in n for n in trainable) == 2 * n_wrapped > 0


def test_zero_b_reproduces_base_exactly(family):
    base = tiny_classifier(family)
    batch = tiny_batch()
    expected = base(**batch).logits
    model = _apply(base, rank=4)
    assert torch.equal(model(**batch).logits, expected)


def test_merge_matches_unmerged_and_unwraps(family):
    batch = tiny_batch()
    model = _apply(tiny_classifier(family), rank=4, alpha=8)
    _randomise_b(model)
    unmerged = model(**batch).logits
    base_keys = set(tiny_classifier(family).state_dict())
    plain = lora.merge(model)
    assert not any(isinstance(m, lora.LoRALinear) for m in plain.modules())
    assert set(plain.state_dict()) == base_keys  # a plain Hugging Face model again
    assert torch.allclose(plain(**batch).logits, unmerged, atol=1e-5)  # stated tolerance: 1e-5 (float32)


def test_gpt2_conv1d_is_wrapped_and_merges_transposed():
    model = _apply(tiny_causal_lm("gpt2"), rank=2, target_modules=["c_attn"])
    wrapped = [m for m in model.modules() if isinstance(m, lora.LoRALinear)]
    assert wrapped and all(isinstance(m.base, Conv1D) and m.transposed for m in wrapped)
    _randomise_b(model)
    batch = tiny_batch()
    before = model(**batch).logits
    assert torch.allclose(lora.merge(model)(**batch).logits, before, atol=1e-5)


def test_target_selection_by_names_regex_and_all_linear():
    names = lambda m: sorted(n for n, x in m.named_modules() if isinstance(x, lora.LoRALinear))
    by_name = names(_apply(tiny_classifier("llama"), target_modules=["q_proj", "v_proj"]))
    assert by_name and all(n.endswith(("q_proj", "v_proj")) for n in by_name) and len(by_name) == 4
    by_regex = names(_apply(tiny_classifier("llama"), target_regex=r".*layers\.1\.mlp\..*"))
    assert by_regex == [f"model.layers.1.mlp.{p}" for p in ("down_proj", "gate_proj", "up_proj")]
    every = names(_apply(tiny_classifier("llama")))
    assert len(every) == 14 and not any(n.startswith("score") for n in every)  # 7 linears x 2 layers, no head


def test_rslora_scaling():
    model = _apply(tiny_classifier("bert"), rank=4, alpha=8, rslora=True)
    m = next(x for x in model.modules() if isinstance(x, lora.LoRALinear))
    assert m.scaling == pytest.approx(8 / math.sqrt(4))


def test_unmatched_targets_name_the_layers_that_exist():
    with pytest.raises(ConfigError, match="matches no linear layer.*q_proj"):
        _apply(tiny_classifier("llama"), target_modules=["query"])
    with pytest.raises(ConfigError, match="method.target_regex: 'zzz' matches no linear layer"):
        _apply(tiny_classifier("llama"), target_regex="zzz")
    both = _apply(tiny_classifier("bert"), target_modules=["query", "q_proj"])  # one list for two families
    wrapped = [n for n, x in both.named_modules() if isinstance(x, lora.LoRALinear)]
    assert wrapped and all(n.endswith(".query") for n in wrapped)
    for family, head in (("bert", "classifier"), ("llama", "score")):  # the head trains in full: not offered either
        for options in ({"target_modules": [head]}, {"target_regex": f".*{head}"}):
            with pytest.raises(ConfigError, match=f"names only the task head \\({head}\\), which trains in full") as err:
                _apply(tiny_classifier(family), **options)
            assert head not in str(err.value).split("named: ")[1].split(", ")


def _reference(m: lora.LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """The unfused formula: base(x) + s * B(A(dropout(x)))."""
    return m.base(x) + m.lora_B(m.lora_A(m.dropout(x))) * m.scaling


@pytest.mark.parametrize("base", [torch.nn.Linear(12, 20), Conv1D(20, 12)], ids=["linear", "conv1d"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
def test_fused_forward_matches_the_unfused_formula_with_gradients(base, bf16, columns, monkeypatch):
    """The GEMM-accumulated low-rank branch (and the single autocast cast) gives the plain formula's output and
    gradients in either layout of the rank-wide products: float32 to 1e-6, bf16 autocast to 2e-2 relative (bf16
    keeps 8 bits of mantissa)."""
    monkeypatch.setattr(lora, "rank_columns", lambda dtype: columns)
    torch.manual_seed(0)
    m = lora.LoRALinear(base, rank=4, alpha=8, dropout=0.0, rslora=False)
    m.base.requires_grad_(False)
    with torch.no_grad():
        m.lora_B.weight.normal_()
    x = torch.randn(3, 5, 12, requires_grad=True)  # (batch, seq, in)
    results = []
    for fn in (m, lambda t: _reference(m, t)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = fn(x)  # (3, 5, 20)
        (y.float() * torch.linspace(-1, 1, 20)).sum().backward()
        results.append((y.float(), x.grad.clone(), m.lora_A.weight.grad.clone(), m.lora_B.weight.grad.clone()))
        x.grad = m.lora_A.weight.grad = m.lora_B.weight.grad = None
    tol = 2e-2 if bf16 else 1e-6
    for fused, plain in zip(*results):
        assert fused.shape == plain.shape
        assert (fused - plain).abs().max() <= tol * plain.abs().max()


@pytest.mark.parametrize("transposed", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
def test_lora_product_gradients_pass_gradcheck(transposed, bias, columns, monkeypatch):
    """LoRAProduct's hand-written backward (the rank-wide products as (r, tokens) rows or (tokens, r) columns,
    the branch's input gradient inside the base GEMM) equals finite differences in float64, for x, A and B; W
    and the bias get none."""
    monkeypatch.setattr(lora, "rank_columns", lambda dtype: columns)
    torch.manual_seed(0)
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)  # (T, in)
    w = torch.randn(6, 5, dtype=torch.float64).t() if transposed else torch.randn(5, 6, dtype=torch.float64)
    b_ = torch.randn(5, dtype=torch.float64) if bias else None  # (out,)
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)  # (r, in)
    b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)  # (out, r)
    assert torch.autograd.gradcheck(lambda x, a, b: lora.LoRAProduct.apply(x, w, b_, a, b, 0.7), (x, a, b))


def test_rank_columns_for_low_precision_rows_for_float32():
    """oneDNN's bf16/fp16 kernels get (tokens, r) columns, MKL's float32 ones (r, tokens) rows."""
    assert lora.rank_columns(torch.bfloat16) and lora.rank_columns(torch.float16)
    assert not lora.rank_columns(torch.float32)


def test_lora_product_skips_the_input_gradient_nobody_needs():
    """Layer 0 reads frozen embeddings: no input gradient is computed, A and B still train."""
    m = lora.LoRALinear(torch.nn.Linear(12, 20), rank=4, alpha=8, dropout=0.0, rslora=False)
    m.base.requires_grad_(False)
    x = torch.randn(2, 5, 12)  # (batch, seq, in), no grad
    loss = m(x).sum()
    with torch.profiler.profile() as prof:
        loss.backward()
    ops = [e.name for e in prof.events()]
    assert "aten::addmm_" not in ops  # the input gradient's GEMM (g @ W, then + dh @ A) never ran
    assert ops.count("aten::mm") == 3  # dh.T, dA, dB
    assert x.grad is None and m.lora_A.weight.grad is not None and m.lora_B.weight.grad is not None


@pytest.mark.parametrize("case", ["trainable-base", "dropout"])
def test_layers_the_product_does_not_cover_keep_the_plain_path(case):
    """A trainable base (its weight needs a gradient) or dropout on the branch runs the autograd path: the base
    weight gets its gradient, and in eval mode (dropout off) both paths give the same output."""
    torch.manual_seed(0)
    m = lora.LoRALinear(torch.nn.Linear(12, 20), rank=4, alpha=8, dropout=0.2 if case == "dropout" else 0.0,
                        rslora=False)
    m.base.requires_grad_(case == "trainable-base")
    assert not m._product_applies()
    x = torch.randn(3, 12)
    m(x).sum().backward()
    assert (m.base.weight.grad is not None) == (case == "trainable-base")
    m.eval()
    assert torch.allclose(m(x), _reference(m, x), atol=1e-6)
