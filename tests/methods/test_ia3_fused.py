"""IA3 on fused query/key/value projections that interleave q, k and v: GPT-NeoX and BLOOM (per head), Falcon
(per head; all queries then one key/value head; per key/value group), CodeGen (four blocks of queries, values,
keys)."""
import json

import pytest
import torch
import transformers as T

from conftest import tiny_batch
from helpers import apply, randomise
from tuneforge.methods import ia3, registry

SHAPE = {"vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
MODELS = {  # config, the attention output projection inside a block, key/value width (heads x 8)
    "gpt_neox": (lambda: T.GPTNeoXConfig(intermediate_size=64, **SHAPE), "attention.dense", 32),
    "bloom": (lambda: T.BloomConfig(vocab_size=128, hidden_size=32, n_layer=2, n_head=4), "self_attention.dense", 32),
    "falcon": (lambda: T.FalconConfig(multi_query=False, bias=True, **SHAPE), "self_attention.dense", 32),
    "falcon-7b": (lambda: T.FalconConfig(multi_query=True, **SHAPE), "self_attention.dense", 8),
    "falcon-40b": (lambda: T.FalconConfig(new_decoder_architecture=True, num_kv_heads=2, **SHAPE),
                   "self_attention.dense", 16),
    "codegen": (lambda: T.CodeGenConfig(vocab_size=128, n_embd=32, n_layer=2, n_head=8, rotary_dim=4, n_positions=64),
                "attn.out_proj", 32),  # qkv_proj: four blocks of [q | v | k], not GPT-2's [q | k | v]
}


def build(name):
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(MODELS[name][0]()).eval()


def blocks(model):
    return model.gpt_neox.layers if hasattr(model, "gpt_neox") else model.transformer.h


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_scaling_the_values_by_c_equals_scaling_the_attention_output_projections_input(name):
    """softmax(q k) (c v) = c softmax(q k) v: the vector lands on the values (not on queries or keys) exactly
    when the logits equal those of the base model with its attention output weights times c."""
    model = apply(build(name), "ia3", targets=["values"])
    sizes = {m.ia3.numel() for m in model.modules() if isinstance(m, ia3.IA3Layer)}
    assert sizes == {MODELS[name][2]}
    for m in model.modules():
        if isinstance(m, ia3.IA3Layer):
            m.ia3.fill_(0.5)
    reference = build(name)
    for block in blocks(reference):
        block.get_submodule(MODELS[name][1]).weight.mul_(0.5)
    batch = tiny_batch()
    expected = reference(**batch).logits
    assert not torch.allclose(expected, build(name)(**batch).logits, atol=1e-4)
    torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_keys_and_values_take_disjoint_parts_and_leave_the_queries(name):
    model = apply(build(name), "ia3", targets=["keys"])
    keys = next(m for m in model.modules() if isinstance(m, ia3.IA3Layer) and not m.on_input).index
    model = apply(build(name), "ia3", targets=["values"])
    values = next(m for m in model.modules() if isinstance(m, ia3.IA3Layer) and not m.on_input).index
    width = MODELS[name][2]
    assert keys.numel() == values.numel() == width and not set(keys.tolist()) & set(values.tolist())
    out = next(m for m in model.modules() if isinstance(m, ia3.IA3Layer) and not m.on_input).base.out_features
    assert out - 2 * width == 32  # the rest: 4 query heads of 8


@pytest.mark.parametrize("name", ["gpt_neox", "falcon-40b"])
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@torch.no_grad()
def test_merge_and_the_peft_export_give_the_same_logits(name, tmp_path):
    from peft import PeftModel
    from safetensors.torch import save_file

    build(name).save_pretrained(tmp_path / "base")
    model = apply(build(name), "ia3")
    randomise(model, scale=0.3)
    batch = tiny_batch()
    expected = model(**batch).logits
    adapter_config, tensors = ia3.to_peft(model, registry.make_config("ia3", {}), "CAUSAL_LM", [])
    adapter_config["base_model_name_or_path"] = str(tmp_path / "base")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "adapter" / "adapter_model.safetensors")
    theirs = PeftModel.from_pretrained(T.AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(theirs.eval()(**batch).logits, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ia3.merge(model)(**batch).logits, expected, rtol=0, atol=1e-5)


def test_minimax_lightning_attention_keys_are_the_middle_of_each_heads_q_k_v():
    """MiniMax's linear-attention ``qkv_proj`` splits each head's 3 x 8 outputs into q, k, v (its softmax layers
    have k_proj)."""
    model = apply(T.AutoModelForCausalLM.from_config(T.MiniMaxConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=64, num_local_experts=2, num_experts_per_tok=1,
        layer_types=["linear_attention", "full_attention"])), "ia3", targets=["keys"])
    fused = model.get_submodule("model.layers.0.self_attn.qkv_proj")
    assert fused.index.tolist() == [24 * head + 8 + i for head in range(4) for i in range(8)]
