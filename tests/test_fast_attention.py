"""The attention paths of tuneforge.fast (attention dropout by dropout_scale, the sdpa switch for packed rows)
are equivalent to the plain ones."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from conftest import tiny_batch, tiny_classifier
from tuneforge import fast


def _qkv(heads_kv: int = 4):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 7, 8, generator=g)  # (batch, heads, queries, head dim)
    k, v = (torch.randn(2, heads_kv, 7, 8, generator=g) for _ in range(2))  # (batch, kv heads, keys, head dim)
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    mask[1, :, :, 5:] = False  # the second example's last two keys are padding
    return q, k, v, mask


def test_attention_drops_eager_weights_with_dropout_scale():
    """Training-mode encoder attention: softmax(q k^T * s, masked) * keep / (1 - p) @ v with the mask that
    dropout_scale draws from the same seed (float32, 1e-6); padded keys get no weight."""
    q, k, v, mask = _qkv()
    module = nn.Module().train()
    torch.manual_seed(4)
    out, _ = fast.attention(module, q, k, v, mask, dropout=0.25, scaling=0.3)  # (2, 7, 4, 8)
    torch.manual_seed(4)
    keep = fast.dropout_scale(torch.empty(2, 4, 7, 7), 0.25) != 0  # (batch, heads, queries, keys)
    weights = torch.softmax((q @ k.transpose(2, 3) * 0.3).masked_fill(~mask, float("-inf")), -1)
    expected = ((weights * keep / 0.75) @ v).transpose(1, 2)
    assert out.shape == (2, 7, 4, 8) and torch.allclose(out, expected, atol=1e-6)
    v_padded = v.clone()
    v_padded[1, :, 5:] = 1e4  # what padded keys hold does not matter
    torch.manual_seed(4)
    assert torch.allclose(fast.attention(module, q, k, v_padded, mask, dropout=0.25, scaling=0.3)[0], out, atol=1e-6)


@pytest.mark.parametrize("case", ["no dropout", "causal", "grouped kv heads"])
def test_attention_leaves_other_cases_to_sdpa(case):
    """Without dropout, in a causal module or with grouped key/value heads it is transformers' sdpa, draw for
    draw (same seed, same output)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    q, k, v, mask = _qkv(heads_kv=2 if case == "grouped kv heads" else 4)
    module = nn.Module().train()
    module.is_causal = case == "causal"
    module.num_key_value_groups = 2 if case == "grouped kv heads" else 1
    mask = None if case == "causal" else mask
    p = 0.0 if case == "no dropout" else 0.25
    outs = []
    for fn in (fast.attention, ALL_ATTENTION_FUNCTIONS["sdpa"]):
        torch.manual_seed(4)
        outs.append(fn(module, q, k, v, mask, dropout=p, scaling=0.3)[0])
    assert torch.equal(*outs)


def test_fast_attention_context_switches_sdpa_configs_and_restores():
    """Inside, a padded batch gives the plain logits in evaluation, and in training what padding holds does not
    change them (masks are built as for sdpa)."""
    model = tiny_classifier("bert")
    assert model.config._attn_implementation == "sdpa"
    batch = tiny_batch()  # the last row ends in 3 padding tokens
    other = {**batch, "input_ids": batch["input_ids"].clone()}
    other["input_ids"][-1, -3:] = 7
    plain = model(**batch).logits
    with fast.fast_attention(model, torch.device("cpu")) as switched:
        assert switched == 1 and model.config._attn_implementation == fast.ATTENTION
        assert torch.equal(model(**batch).logits, plain)  # evaluation: no dropout, sdpa itself
        model.train()
        runs = []
        for b in (batch, other):
            torch.manual_seed(0)
            runs.append(model(**b).logits)
        assert torch.allclose(*runs, atol=1e-6) and not torch.allclose(runs[0], plain, atol=1e-3)  # dropout ran
        model.eval()
    assert model.config._attn_implementation == "sdpa"
    with fast.fast_attention(model, torch.device("cuda")) as switched:
        assert switched == 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_attention_gives_the_eager_losses_and_gradients(family):
    """Packed rows (three examples in two rows, position ids restarting) through sdpa inside the block: the
    per-token losses and every gradient of the eager path, float32, no dropout; configs restored after; nothing
    switched for padded rows, under bf16 or off the CPU."""
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config
    from tuneforge.data.batching import collate_packed
    from tuneforge.tasks.causal_lm import token_nll

    torch.manual_seed(0)
    no_dropout = {"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0} if family == "gpt2" else {}
    model = AutoModelForCausalLM.from_config(tiny_config(family, **no_dropout), attn_implementation="eager").train()
    g = torch.Generator().manual_seed(1)
    examples = [{"input_ids": ids, "labels": ids} for ids in
                (torch.randint(4, 40, (n,), generator=g).tolist() for n in (7, 5, 9))]
    batch = collate_packed(examples, pad_id=0, rows=[[0, 1], [2]])
    batch = {k: v for k, v in batch.items() if k != "attention_mask"}  # as training passes it
    results = []
    for packed in (False, True):
        with fast.packed_attention(model, torch.device("cpu"), packed, bf16=False) as switched:
            assert switched == packed and model.config._attn_implementation == ("sdpa" if packed else "eager")
            nll = token_nll(model, batch, reduction="none")
            nll.sum().backward()
        results.append((nll.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    assert model.config._attn_implementation == "eager"
    (plain, plain_grads), (sdpa, sdpa_grads) = results
    assert torch.allclose(sdpa, plain, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(sdpa_grads, plain_grads))
    for device, bf16 in (("cuda", False), ("cpu", True)):  # CUDA loads sdpa; bf16 SDPA's CPU backward was slower
        with fast.packed_attention(model, torch.device(device), True, bf16) as switched:
            assert switched == 0


def test_a_padding_free_causal_run_trains_its_packed_rows_through_sdpa(tmp_path, monkeypatch):
    from lm_helpers import model_folder, write_pairs
    from tuneforge.run import train

    seen = []
    packed_attention = fast.packed_attention

    @contextlib.contextmanager
    def spy(model, device, packed, bf16):
        with packed_attention(model, device, packed, bf16) as switched:
            seen.append((packed, switched, model.config._attn_implementation))
            yield switched

    monkeypatch.setattr(fast, "packed_attention", spy)
    cfg = {"model": {"name": str(model_folder(tmp_path / "llama")), "task": "causal_lm", "max_length": 32},
           "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))}, "method": {"name": "lora"},
           "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32"}, "eval": {"before": False},
           "forgetting": {"probes": ["none"]}, "output_dir": str(tmp_path / "run")}
    out = train(cfg, progress=False)
    # loaded eager (short rows), packed: sdpa, in the start-up check (packing_ok) and in training
    assert out.metrics["padding_free"] and seen == [(True, 1, "sdpa")] * 2
