"""The LoRA layer (``methods/lora_layer.py``): its fused forward and hand-written backward against the plain
formula, ``gradcheck``, both layouts of the rank-wide products, and the layers it leaves to autograd."""
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from tuneforge.methods import lora_layer
from tuneforge.methods.lora_layer import LoRALinear, LoRAProduct


def _reference(m: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """The unfused formula: base(x) + s * B(A(dropout(x)))."""
    return m.base(x) + m.lora_B(m.lora_A(m.dropout(x))) * m.scaling


@pytest.mark.parametrize("base", [torch.nn.Linear(12, 20), Conv1D(20, 12)], ids=["linear", "conv1d"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
def test_fused_forward_matches_the_unfused_formula_with_gradients(base, bf16, columns, monkeypatch):
    """The GEMM-accumulated low-rank branch (and the single autocast cast) gives the plain formula's output and
    gradients in either layout of the rank-wide products: float32 to 1e-6, bf16 autocast to 2e-2 relative (bf16
    keeps 8 bits of mantissa)."""
    monkeypatch.setattr(lora_layer, "rank_columns", lambda dtype: columns)
    torch.manual_seed(0)
    m = LoRALinear(base, rank=4, alpha=8, dropout=0.0, rslora=False)
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
    monkeypatch.setattr(lora_layer, "rank_columns", lambda dtype: columns)
    torch.manual_seed(0)
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)  # (T, in)
    w = torch.randn(6, 5, dtype=torch.float64).t() if transposed else torch.randn(5, 6, dtype=torch.float64)
    b_ = torch.randn(5, dtype=torch.float64) if bias else None  # (out,)
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)  # (r, in)
    b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)  # (out, r)
    assert torch.autograd.gradcheck(lambda x, a, b: LoRAProduct.apply(x, w, b_, a, b, 0.7), (x, a, b))


def test_rank_columns_for_low_precision_rows_for_float32():
    """oneDNN's bf16/fp16 kernels get (tokens, r) columns, MKL's float32 ones (r, tokens) rows."""
    assert lora_layer.rank_columns(torch.bfloat16) and lora_layer.rank_columns(torch.float16)
    assert not lora_layer.rank_columns(torch.float32)


def test_lora_product_skips_the_input_gradient_nobody_needs():
    """Layer 0 reads frozen embeddings: no input gradient is computed, A and B still train."""
    m = LoRALinear(torch.nn.Linear(12, 20), rank=4, alpha=8, dropout=0.0, rslora=False)
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
    m = LoRALinear(torch.nn.Linear(12, 20), rank=4, alpha=8, dropout=0.2 if case == "dropout" else 0.0,
                        rslora=False)
    m.base.requires_grad_(case == "trainable-base")
    assert not m._product_applies()
    x = torch.randn(3, 12)
    m(x).sum().backward()
    assert (m.base.weight.grad is not None) == (case == "trainable-base")
    m.eval()
    assert torch.allclose(m(x), _reference(m, x), atol=1e-6)
