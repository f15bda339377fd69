"""benchmarks/memory_plan.py: parameter counts against real models, the activation estimate against the tensors
autograd saves, and the shape of the plan (FSDP shrinks with devices, LoRA below full)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tuneforge import assets
from tuneforge.methods import lora
from tuneforge.models import store_frozen_in_bf16
from tuneforge.tasks.causal_lm import token_nll

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "benchmarks" / "memory_plan.py")
mp = sys.modules["memory_plan"] = importlib.util.module_from_spec(_spec)  # dataclasses look the module up
_spec.loader.exec_module(mp)


@pytest.fixture(scope="module")
def smollm2():
    folder = assets.resolve_model("smollm2")
    return folder, AutoModelForCausalLM.from_pretrained(folder)


def test_parameter_count_equals_the_real_smollm2(smollm2):
    folder, model = smollm2
    shape = mp.shape_from_config(json.loads((folder / "config.json").read_text()))
    assert shape == mp.MODELS["smollm2-135m"]
    assert mp.count_parameters(shape) == sum(p.numel() for p in model.parameters()) == 134_515_008


def test_lora_count_equals_tuneforge_lora_on_smollm2(smollm2):
    _, model = smollm2
    model.requires_grad_(False)
    adapted = lora.apply(model, lora.Config(rank=mp.LORA_RANK))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert mp.lora_parameters(mp.MODELS["smollm2-135m"]) == trainable


@pytest.mark.parametrize("name", ["llama-3.2-1b", "llama-3.1-8b"])
def test_parameter_count_equals_transformers_llama(name):
    s = mp.MODELS[name]
    config = LlamaConfig(hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
                         num_key_value_heads=s.kv_heads, intermediate_size=s.intermediate, vocab_size=s.vocab,
                         tie_word_embeddings=s.tied)
    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(config)
    assert mp.count_parameters(s) == sum(p.numel() for p in model.parameters())
    assert mp.count_parameters(s) == {"llama-3.2-1b": 1_235_814_400, "llama-3.1-8b": 8_030_261_248}[name]


def _saved_bytes_per_token(layers: int, method: str, b: int = 2, s: int = 37) -> float:
    """Bytes of activations autograd keeps after a bf16-autocast forward of a tiny Llama through tuneforge's
    loss, per token: saved tensors that are not parameters and have a batch/sequence dimension."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=96, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=160, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if method == "lora":
        model.requires_grad_(False)
        model = lora.apply(model, lora.Config(rank=mp.LORA_RANK))
        store_frozen_in_bf16(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and (s in t.shape or b * s in t.shape):
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, 300, (b, s))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        token_nll(model, batch)
    return sum(saved.values()) / (b * s)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_activation_estimate_matches_saved_tensors(method):
    per_layer = (_saved_bytes_per_token(3, method) - _saved_bytes_per_token(1, method)) / 2
    shape = mp.Shape(hidden=96, layers=1, heads=4, kv_heads=2, intermediate=160, vocab=300, tied=False)
    assert mp.activation_bytes_per_token_layer(shape, method) == pytest.approx(per_layer, rel=0.02)


@pytest.mark.parametrize("name", list(mp.MODELS))
def test_fsdp_shrinks_with_devices_and_lora_is_below_full(name):
    s = mp.MODELS[name]
    for method in ("full", "lora"):
        totals = [mp.plan(s, method, "fsdp", n, 4, 2048)["total"] for n in mp.DEVICES]
        assert totals == sorted(totals, reverse=True) and totals[0] > totals[-1]
    for strategy in ("ddp", "fsdp"):
        for n in mp.DEVICES:
            assert mp.plan(s, "lora", strategy, n, 4, 2048)["total"] < mp.plan(s, "full", strategy, n, 4, 2048)["total"]
    # sharding: the 8-device FSDP2 state of full fine-tuning is an eighth of one device's (plus gathered units)
    one, eight = (mp.plan(s, "full", "fsdp", n, 1, 1) for n in (1, 8))
    assert eight["optimizer"] == pytest.approx(one["optimizer"] / 8)


def test_cli_prints_a_markdown_table(capsys):
    mp.main(["--markdown", "--batch", "1", "--seq", "512", "--models", "smollm2-135m"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| smollm2-135m |")]
    assert len(lines) == 1 + 2 * 2 * len(mp.DEVICES)  # parameter table + method x strategy x devices


def test_docs_table_is_the_scripts_output(capsys):
    """docs/scaling.md pastes the script's output: regenerate it there when the model or the script changes."""
    doc = (ROOT / "docs" / "scaling.md").read_text()
    mp.main(["--markdown"])
    table = capsys.readouterr().out.strip()
    assert table in doc
