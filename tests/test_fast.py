"""The cheaper training paths of tuneforge.fast are equivalent to the plain ones."""
from __future__ import annotations

import copy
import platform

import pytest
import torch
from torch import nn

from conftest import tiny_causal_lm, tiny_classifier
from tuneforge import fast


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_scale_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    mask = (fast.dropout_scale(torch.empty(1000, 1003), p) != 0).double()  # odd size: the last int64 word is cut
    assert mask.shape == (1000, 1003)
    assert abs(mask.mean().item() - (1 - p)) < 0.003  # ~1M draws: standard error <= 0.0005
    flat = mask.flatten()
    for lag in (1, 2, 3, 4):  # the four 16-bit lanes of one int64 and the next word are independent
        r = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()
        assert abs(r) < 0.01


def test_dropout_scale_follows_the_torch_seed():
    x = torch.empty(64, 64)
    torch.manual_seed(3)
    a = fast.dropout_scale(x, 0.1)
    b = fast.dropout_scale(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(fast.dropout_scale(x, 0.1), a) and not torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_scale_is_zero_or_the_scale_in_the_tensors_dtype_with_the_same_draws_in_every_dtype(dtype):
    x = torch.empty(5, 7, 11, dtype=dtype)  # 385 elements: the last int64 word is cut
    torch.manual_seed(4)
    got = fast.dropout_scale(x, 0.3)
    torch.manual_seed(4)
    reference = fast.dropout_scale(x.float(), 0.3)
    assert got.dtype == dtype and got.shape == x.shape
    assert set(got.unique().tolist()) == {0.0, torch.tensor(1 / 0.7, dtype=dtype).item()}
    assert torch.equal(got != 0, reference != 0)


def test_fast_dropout_scales_kept_values_and_is_unbiased():
    torch.manual_seed(0)
    x = torch.randn(8, 16, requires_grad=True)
    drop = fast.FastDropout(0.25).train()
    out = drop(x)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.75)
    out.sum().backward()  # d out / d x = mask / (1 - p)
    assert torch.allclose(x.grad, kept.float() / 0.75)
    mean = torch.stack([drop(x.detach()) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, x.detach(), atol=0.1 * x.detach().abs().max().item())
    assert torch.equal(drop.eval()(x), x) and torch.equal(fast.FastDropout(0.0).train()(x), x)


def test_fast_dropout_context_swaps_and_restores():
    model = tiny_classifier("bert").train()
    originals = {name: m for name, m in model.named_modules() if type(m) is nn.Dropout}
    assert originals
    with fast.fast_dropout(model, torch.device("cpu")) as swapped:
        assert swapped == len(originals)
        inside = {name: m for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
        assert all(type(m) is fast.FastDropout and m.p == originals[name].p and m.training
                   for name, m in inside.items())
        model.eval()
    assert {name: m for name, m in model.named_modules() if isinstance(m, nn.Dropout)} == originals
    assert not any(m.training for m in originals.values())  # the mode set inside is kept
    with fast.fast_dropout(model, torch.device("cuda")) as swapped:  # CUDA's own dropout is kept
        assert swapped == 0


def test_model_in_eval_mode_is_unchanged_by_fast_dropout():
    model = tiny_classifier("bert")
    ids = torch.randint(4, 100, (3, 7))
    plain = model(input_ids=ids).logits
    with fast.fast_dropout(model, torch.device("cpu")):
        assert torch.equal(model(input_ids=ids).logits, plain)


def _step(model, optimizer, clip, max_norm, grad_scale):
    torch.manual_seed(1)
    ids = torch.randint(4, 100, (4, 9))
    loss = nn.functional.cross_entropy(model(input_ids=ids).logits, torch.tensor([0, 1, 1, 0])) * grad_scale
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    clip(params, max_norm, optimizer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping active / inactive
@pytest.mark.parametrize("optimizer", ["fused_adamw", "sgd"])
def test_clip_gradients_matches_clip_grad_norm(max_norm, optimizer):
    make = {"fused_adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True),
            "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)}[optimizer]
    plain = tiny_classifier("bert").train()
    for m in plain.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    ours = copy.deepcopy(plain)
    opt_plain, opt_ours = make(list(plain.parameters())), make(list(ours.parameters()))
    for _ in range(3):  # several steps: the optimizer's moments see the clipped gradients
        _step(plain, opt_plain, lambda ps, n, o: nn.utils.clip_grad_norm_(ps, n), max_norm, 50.0)
        _step(ours, opt_ours, fast.clip_gradients, max_norm, 50.0)
    for (name, a), b in zip(plain.named_parameters(), ours.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name


def test_tune_allocator_on_glibc():
    done = fast.tune_allocator()
    assert isinstance(done, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert done


def test_training_uses_the_cheaper_paths(tmp_path, monkeypatch):
    import pandas as pd

    from tiny import model_dir, sentiment_rows
    from tuneforge.run import train

    calls = {"dropout": 0, "clip": 0, "attention": 0, "last_block": 0, "sparse_embedding": 0}
    forward, clip, attention = fast.FastDropout.forward, fast.clip_gradients, fast.attention
    from tuneforge.embedding_rows import TrainedRows
    kept = TrainedRows.__call__  # with no weight decay the optimizer steps only the rows the data can reach

    def counted_forward(self, x):
        calls["dropout"] += self.training
        return forward(self, x)

    def counted_clip(*args):
        calls["clip"] += 1
        return clip(*args)

    def counted_kept(self, weight):
        calls["sparse_embedding"] += weight.grad.is_sparse
        return kept(self, weight)

    monkeypatch.setattr(fast.FastDropout, "forward", counted_forward)
    monkeypatch.setattr(TrainedRows, "__call__", counted_kept)

    def counted_attention(module, *args, **kwargs):
        calls["attention"] += module.training
        return attention(module, *args, **kwargs)

    def counted_block(block, *args, **kwargs):
        calls["last_block"] += 1
        return block_forward(block, *args, **kwargs)

    from tuneforge import last_layer
    block_forward = last_layer._first_position_forward
    monkeypatch.setattr(last_layer, "_first_position_forward", counted_block)
    monkeypatch.setattr(fast, "clip_gradients", counted_clip)
    monkeypatch.setitem(fast.ALL_ATTENTION_FUNCTIONS, fast.ATTENTION, counted_attention)
    data = tmp_path / "rows.csv"
    pd.DataFrame(sentiment_rows(64)).to_csv(data, index=False)
    cfg = {"model": {"name": str(model_dir(tmp_path / "bert", "bert")), "max_length": 32},
           "data": {"dataset": str(data)}, "method": {"name": "full"},
           "train": {"max_steps": 3, "batch_size": 16, "precision": "fp32", "max_grad_norm": 1.0},
           "output_dir": str(tmp_path / "run")}
    train(cfg, progress=False)
    assert calls["clip"] == 3 and calls["dropout"] > 0  # every step clips; BERT's dropouts ran as FastDropout
    assert calls["attention"] > 0  # and its attention through fast.attention
    assert calls["last_block"] >= 1 + 3  # its last block at the head's position: the check, then every step
    assert calls["sparse_embedding"] == 3  # the word embedding's gradient came sparse at every step


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_batch_lengths_are_rounded_only_where_kernels_are_built_per_shape(tmp_path, monkeypatch, task, precision):
    """bf16 on a CPU (oneDNN builds a kernel per matmul shape): padded lengths rounded to 4, packed rows' widths
    to 16; float32 on a CPU (MKL): every batch exactly as wide as its longest example or packed row."""
    import pandas as pd

    from lm_helpers import model_folder, write_pairs
    from tiny import model_dir, sentiment_rows
    from tuneforge import models, train as train_module
    from tuneforge.data import batching
    from tuneforge.run import train

    monkeypatch.setattr(models, "bf16_supported", lambda device: True)  # emulated where the CPU has no bf16
    seen = []  # (width, longest row's real tokens) of every training batch

    def recorded(*args, **kwargs):
        for batch in batching.iterate(*args, **kwargs):
            seen.append((batch["input_ids"].shape[1], int(batch["attention_mask"].sum(1).max())))
            yield batch

    monkeypatch.setattr(train_module, "iterate", recorded)
    if task == "classification":
        data = tmp_path / "rows.csv"
        pd.DataFrame(sentiment_rows(64)).to_csv(data, index=False)
        model, multiple = model_dir(tmp_path / "bert", "bert"), 4
    else:
        data, model, multiple = write_pairs(tmp_path / "pairs.jsonl"), model_folder(tmp_path / "llama"), 16
    out = train({"model": {"name": str(model), "task": task, "max_length": 64}, "data": {"dataset": str(data)},
                 "method": {"name": "lora"}, "train": {"max_steps": 3, "batch_size": 8, "precision": precision},
                 "output_dir": str(tmp_path / "run")}, progress=False)
    assert out.metrics["padding_free"] == (task == "causal_lm")
    assert len(seen) == 3
    if precision == "bf16":
        assert all(width % multiple == 0 for width, _ in seen)
    else:
        assert all(width == longest for width, longest in seen)
        assert any(width % multiple for width, _ in seen)  # so rounding would have shown


def _embedding_step(model, optimizer, micro_batches, step):
    """One optimizer step of ``micro_batches`` backward passes (ids seeded by step and micro-batch; some ids
    repeat within a batch); clipping small enough that the fused kernel rescales the gradients."""
    for m in range(micro_batches):
        g = torch.Generator().manual_seed(10 * step + m)
        ids = torch.randint(4, 40, (4, 9), generator=g)
        labels = torch.randint(0, 2, (4,), generator=g)
        nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
    grad = model.get_input_embeddings().weight.grad.clone()
    fast.clip_gradients([p for p in model.parameters() if p.grad is not None], 1e-3, optimizer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad


@pytest.mark.parametrize("micro_batches", [1, 2])  # 2: the later micro-batch adds into the kept buffer
def test_sparse_embedding_gradient_equals_the_dense_one(micro_batches):
    plain = tiny_classifier("bert").train()
    for m in plain.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    ours = copy.deepcopy(plain)
    opt_plain, opt_ours = (torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
                           for m in (plain, ours))
    emb = ours.get_input_embeddings()
    with fast.sparse_embedding_gradient(ours, torch.device("cpu"), 1) as applied:
        assert applied and emb.sparse
        for step in range(4):  # different rows each step: the previous step's rows must be zeroed
            expected = _embedding_step(plain, opt_plain, micro_batches, step)
            got = _embedding_step(ours, opt_ours, micro_batches, step)
            assert not got.is_sparse and torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
    for (name, a), b in zip(plain.named_parameters(), ours.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
    assert not emb.sparse and not emb.weight._post_accumulate_grad_hooks  # restored, the hook removed


def test_sparse_embedding_gradient_only_where_it_applies():
    cpu = torch.device("cpu")

    def applies(model, device=cpu, processes=1):
        with fast.sparse_embedding_gradient(model, device, processes) as applied:
            return applied

    assert applies(tiny_classifier("bert"))
    assert not applies(tiny_classifier("bert"), processes=2)  # DDP / FSDP reduce dense gradients
    assert not applies(tiny_classifier("bert"), device=torch.device("cuda"))
    frozen = tiny_classifier("bert")
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not applies(frozen)
    assert not applies(tiny_causal_lm("gpt2"))  # tied LM head: the weight's gradient is dense anyway
    assert applies(tiny_causal_lm("llama"))  # untied
