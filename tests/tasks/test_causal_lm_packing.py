"""Padding-free causal-LM batches: packed rows give the per-token losses and gradients of padded rows, the
start-up check refuses methods that prepend virtual tokens, and a run trains the same with and without.
``data.packing`` rows keep their examples apart the same way, or fall back to plain concatenations."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_causal_lm
from lm_helpers import QA, model_folder, single_thread, tiny_tokenizer, write_pairs
from tuneforge.data import chat
from tuneforge.data.batching import (collate, collate_packed, pack_rows, packed_layout, round_up,
                                     without_positions)
from tuneforge.methods import registry
from tuneforge.run import train
from tuneforge.tasks import Runtime, causal_lm, get

CPU = Runtime(device=torch.device("cpu"), bf16=False, pad_id=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def _examples(n=7):
    """One three-turn conversation, then ``n - 1`` single Q->A pairs: lengths vary, so rows are shared."""
    tok = tiny_tokenizer()
    turns = [m for q, a in QA[10:13] for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    convs = [turns] + [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA[:n - 1]]
    return chat.encode_conversations(convs, tok, tok.chat_template, 64, ["r"] * n)


def _in_packed_order(examples):
    """The examples in the order collate_packed lays them out (row by row), for a padded twin batch."""
    rows = packed_layout([len(e["input_ids"]) for e in examples])
    return [examples[i] for row in rows for i in row]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_rows_give_the_per_token_losses_and_gradients_of_padded_rows(family):
    model, examples = tiny_causal_lm(family), _in_packed_order(_examples())
    packed, padded = collate_packed(examples, 1), collate(examples, 1)
    assert packed["input_ids"].shape[0] < len(examples)  # several examples share a row
    assert packed["attention_mask"].sum() == padded["attention_mask"].sum()  # the same real tokens
    losses, grads = [], []
    for batch in (packed, padded):
        model.zero_grad()
        nll = causal_lm.token_nll(model, batch, reduction="none")  # (kept,) in row-major order
        nll.mean().backward()
        losses.append(nll.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_without_position_ids_the_packed_examples_would_attend_to_each_other():
    """The guard the check relies on: dropping the position ids (plain causal attention over the row)
    changes the losses, so equal losses above mean the examples were kept apart."""
    model, examples = tiny_causal_lm("llama"), _in_packed_order(_examples())
    packed = collate_packed(examples, 1)
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    with torch.no_grad():
        kept = causal_lm.token_nll(model, packed, reduction="none")
        crossed = causal_lm.token_nll(model, leaky, reduction="none")
    assert not torch.allclose(kept, crossed, atol=1e-3)


def test_collate_packed_layout():
    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]},
                {"input_ids": [4, 4, 4, 4], "labels": [-100, -100, 4, 4]}]
    batch = collate_packed(examples, pad_id=0)
    # lengths 3, 2, 4: capacity 5 gives the fewest computed tokens, rows [ex2] and [ex0 + ex1] (2 x 5 = 10;
    # capacity 7 would give [ex2 + ex0], [ex1]: 2 x 7 = 14)
    assert batch["input_ids"].tolist() == [[4, 4, 4, 4, 0], [5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 4, 4, -100], [-100, 6, 7, -100, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1] * 5]


def test_a_long_padding_tail_stays_inside_the_position_table():
    """A row of two full-length examples beside a short one: the short row's tail was numbered 0..width-1, past
    GPT-2's table when model.max_length is its size (an IndexError in training)."""
    examples = [{"input_ids": [5] * n, "labels": [5] * n} for n in (4, 4, 1)]
    batch = collate_packed(examples, pad_id=0, rows=[[0, 1], [2]])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3], [0, 0, 1, 2, 3, 0, 1, 2]]
    assert int(batch["position_ids"].max()) < 4


def test_packed_layout_computes_fewer_tokens_than_a_fixed_capacity():
    lengths = [30, 28, 27, 25, 22, 20, 18, 17, 15, 12, 11, 10, 9, 8, 40, 64]
    rows = packed_layout(lengths)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    assert width <= 2 * 64
    fixed = pack_rows(lengths, 128)
    assert len(rows) * width <= len(fixed) * max(sum(lengths[i] for i in row) for row in fixed)


def test_packed_layout_packs_for_the_rounded_width():
    lengths = [9, 9, 9, 9, 5]
    # unrounded, one example per row computes the fewest tokens (5 x 9 = 45), but rounded to 16 that is 5 x 16 = 80;
    # the 5 fits beside a 9 in a row of 16: 4 x 16 = 64
    rows = packed_layout(lengths, multiple=16)
    width = round_up(max(sum(lengths[i] for i in row) for row in rows), 16)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert len(rows) * width == 64
    assert len(rows) * width < 5 * 16 == len(packed_layout(lengths)) * 16


def test_pack_rows_best_fit_decreasing_within_capacity():
    lengths = [5, 9, 3, 7, 2, 6, 12]
    rows = pack_rows(lengths, 12)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)
    assert rows[0] == [6]  # the longest comes first, alone when it fills the capacity
    assert len(rows) == 4  # 44 tokens in rows of 12: the fewest rows possible


def _best_fit_one_sorted_list(lengths, capacity):
    """The packer as it was: one sorted list of (space left, row) for every row (a shift of it per item)."""
    import bisect
    rows, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k == len(free):
            rows.append([i])
            bisect.insort(free, (capacity - lengths[i], len(rows) - 1))
        else:
            space, r = free.pop(k)
            rows[r].append(i)
            bisect.insort(free, (space - lengths[i], r))
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_pack_rows_lays_out_exactly_as_the_one_list_packer_did(seed):
    """Kept by space in buckets (800k examples took 37 s in the one list): the same rows, in the same order, so a
    packed run trains on the same batches as before."""
    import random
    rng = random.Random(seed)
    lengths = [rng.choice([1, 2, 3, 5, 8, 13, 40, 64, 70]) if seed % 2 else rng.randint(1, 300) for _ in range(3000)]
    for capacity in (64, 100, 512):
        assert pack_rows(lengths, capacity) == _best_fit_one_sorted_list(lengths, capacity)


@pytest.mark.parametrize("method,ok", [("lora", True), ("full", True), ("adapter", True), ("ia3", True),
                                       ("prompt", False), ("p-tuning", False), ("prefix", False)])
def test_the_start_up_check_accepts_per_token_methods_and_refuses_virtual_tokens(method, ok):
    options = {"num_virtual_tokens": 3} if not ok else {}
    model = registry.apply(tiny_causal_lm("llama"), method, registry.make_config(method, options))
    assert get("causal_lm").packing_ok(model, _examples(), CPU) is ok
    assert get("classification").packing_ok(model, _examples(), CPU) is False


def test_a_run_trains_the_same_with_and_without_padding_free_batches(tmp_path):
    folder = model_folder(tmp_path / "llama", "llama")
    data = str(write_pairs(tmp_path / "pairs.jsonl"))
    runs = {free: train({"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
                         "data": {"dataset": data}, "method": {"name": "lora", "rank": 4},
                         "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "precision": "fp32",
                                   "padding_free": free},
                         "eval": {"generate_samples": 0}, "output_dir": str(tmp_path / f"run{free}")},
                        progress=False).metrics for free in (True, False)}
    assert runs[True]["padding_free"] is True and runs[False]["padding_free"] is False
    assert runs[True]["real_tokens"] == runs[False]["real_tokens"]
    assert runs[True]["padded_tokens"] < runs[False]["padded_tokens"]
    assert runs[True]["test_after"]["loss"] == pytest.approx(runs[False]["test_after"]["loss"], rel=1e-4)
    assert runs[True]["test_after"]["loss"] < runs[True]["test_before"]["loss"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_data_packing_rows_keep_their_examples_apart(family):
    """Rows of ``data.packing`` (examples concatenated up to max_length): each example's per-token losses equal
    those it gets alone, through padded batches (position ids, no attention mask) and padding-free ones."""
    model, examples = tiny_causal_lm(family), _examples()
    rows = chat.pack(examples, 64)
    assert len(rows) < len(examples)
    with torch.no_grad():
        alone = causal_lm.token_nll(model, collate(examples, 1), reduction="none")
        padded = causal_lm.token_nll(model, collate(rows, 1), reduction="none")
        packed = causal_lm.token_nll(model, collate_packed(rows, 1), reduction="none")
        leaky = causal_lm.token_nll(model, collate(without_positions(rows), 1), reduction="none")
    for nll in (padded, packed):  # the same tokens in another order: compare sorted
        torch.testing.assert_close(nll.sort().values, alone.sort().values, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(leaky.sort().values, alone.sort().values, atol=1e-3)  # without them, they would not


def test_collate_mixes_packed_rows_and_plain_examples():
    """A packed row and a plain example (e.g. a replayed one) share a batch; padding sits at position 0."""
    row = {"input_ids": [5, 6, 7, 8], "labels": [-100, 6, -100, 8], "position_ids": [0, 1, 0, 1]}
    plain = {"input_ids": [4, 4], "labels": [-100, 4]}
    batch = collate([row, plain], pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


@pytest.mark.parametrize("method,apart", [("lora", True), ("prompt", False)])
def test_data_packing_falls_back_to_plain_rows_where_examples_cannot_be_kept_apart(tmp_path, capsys, method,
                                                                                     apart):
    folder = model_folder(tmp_path / "llama", "llama")
    options = {"num_virtual_tokens": 3} if method == "prompt" else {"rank": 4}
    metrics = train({"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
                     "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl")), "packing": True},
                     "method": {"name": method, **options},
                     "train": {"epochs": 1, "batch_size": 4, "precision": "fp32"},
                     "eval": {"generate_samples": 0, "before": False}, "output_dir": str(tmp_path / "run")},
                    progress=False).metrics
    assert metrics["padding_free"] is apart
    warned = "cannot keep packed examples apart" in capsys.readouterr().err
    assert warned is not apart
    assert metrics["test_after"]["loss"] > 0


def _tiny(config_class, **extra):
    torch.manual_seed(0)
    config = config_class(vocab_size=len(tiny_tokenizer()), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          pad_token_id=1, **extra)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def test_models_without_sdpa_keep_eager_attention_on_packed_float32_rows():
    """Gemma 2 (soft-capped attention) and BLOOM (ALiBi: under an sdpa config it builds no causal mask) keep eager
    attention; Llama switches to SDPA. Gemma 2 trains a packed row under the switches fit makes."""
    from transformers import BloomConfig, Gemma2Config, LlamaConfig
    from tuneforge import fast

    cpu = torch.device("cpu")
    gemma2 = _tiny(Gemma2Config, intermediate_size=64, head_dim=8, num_key_value_heads=2)
    llama = _tiny(LlamaConfig, intermediate_size=64, num_key_value_heads=2)
    for model, switched in ((gemma2, 0), (_tiny(BloomConfig), 0), (llama, 1)):
        with fast.packed_attention(model, cpu, packed=True, bf16=False) as n:
            assert n == switched
            assert model.config._attn_implementation == ("sdpa" if switched else "eager")
    batch = collate_packed(_examples(3), 1, rows=[[0, 1, 2]])
    gemma2.train()
    with fast.packed_attention(gemma2, cpu, True, False), fast.fast_attention(gemma2, cpu):
        causal_lm.token_nll(gemma2, batch, reduction="sum").backward()


def test_the_start_up_check_refuses_a_model_whose_packed_examples_see_each_other():
    """BLOOM's attention mask ignores position ids, so two examples in one row attend to each other: its losses
    move by far more than rounding (a tiny random BLOOM's, by ~1e-3) and it trains on padded rows."""
    from transformers import BloomConfig

    model = _tiny(BloomConfig)
    packed = collate_packed(_examples(2), 1, rows=[[0, 1]])
    padded = collate(_examples(2), 1)
    a, b = (causal_lm.token_nll(model, batch, reduction="none") for batch in (packed, padded))
    assert (a - b).abs().max() > 1e-5  # the leak is there
    assert get("causal_lm").packing_ok(model, _examples(), CPU) is False
    assert get("causal_lm").packing_ok(tiny_causal_lm("llama"), _examples(), CPU) is True
