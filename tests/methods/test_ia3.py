import re

import pytest
import torch
from peft import IA3Config, get_peft_model

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from helpers import apply, bf16_step, lm_labels, loss_after_two_steps, method_params, randomise, saved
from tuneforge.config import ConfigError
from tuneforge.methods import ia3, registry

# (name inside a block, vector length, start of the scaled output slice, scales the input?)
EXPECTED = {
    "bert": {("attention.self.key", 32, 0, False), ("attention.self.value", 32, 0, False),
             ("output.dense", 64, 0, True)},
    "llama": {("self_attn.k_proj", 16, 0, False), ("self_attn.v_proj", 16, 0, False),  # 2 kv heads x 8
              ("mlp.down_proj", 64, 0, True)},
    "gpt2": {("attn.c_attn", 64, 32, False),  # fused [q | k | v]: only k and v are scaled
             ("mlp.c_proj", 128, 0, True)},
}
LAYERS = {"bert": "bert.encoder.layer", "llama": "model.layers", "gpt2": "transformer.h"}


def _in_block(name):
    return re.sub(r"^.*?\.\d+\.", "", name)  # "model.layers.0.mlp.down_proj" -> "mlp.down_proj"


def _layers(model):
    return {(n, m.ia3.shape[0], m.start, m.on_input) for n, m in model.named_modules() if isinstance(m, ia3.IA3Layer)}


def test_scales_keys_values_and_ffn_input(family):
    model = apply(tiny_classifier(family), "ia3")
    expected = {(f"{LAYERS[family]}.{i}.{n}", size, start, inp) for i in range(2) for n, size, start, inp in
                EXPECTED[family]}
    assert _layers(model) == expected
    assert method_params(model) == {f"{n}.ia3" for n, *_ in expected}


def test_distilbert_names_its_projections_k_lin_and_v_lin():
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    model = apply(AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=128, dim=32, n_layers=2, n_heads=4, hidden_dim=64)), "ia3")
    assert _layers(model) == {(f"distilbert.transformer.layer.{i}.{n}", size, 0, inp) for i in range(2) for n, size, inp
                              in (("attention.k_lin", 32, False), ("attention.v_lin", 32, False),
                                  ("ffn.lin2", 64, True))}


def test_albert_ffn_is_found_at_the_hidden_width_not_the_narrower_embedding():
    from transformers import AlbertConfig, AutoModelForSequenceClassification

    model = apply(AutoModelForSequenceClassification.from_config(AlbertConfig(
        vocab_size=128, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64)), "ia3")
    root = "albert.encoder.albert_layer_groups.0.albert_layers.0"
    assert _layers(model) == {(f"{root}.attention.key", 32, 0, False), (f"{root}.attention.value", 32, 0, False),
                              (f"{root}.ffn_output", 64, 0, True)}


def test_targets_subset():
    model = apply(tiny_causal_lm("gpt2"), "ia3", targets=["values"])
    assert {(_in_block(n), size, start) for n, size, start, _ in _layers(model)} == {("attn.c_attn", 32, 64)}
    model = apply(tiny_causal_lm("llama"), "ia3", targets=["ffn"])
    assert {_in_block(n) for n, *_ in _layers(model)} == {"mlp.down_proj"}


def test_identity_at_init_reproduces_base_exactly(family):
    batch = tiny_batch()
    base = tiny_classifier(family)
    expected = base(**batch).logits
    assert torch.equal(apply(base, "ia3")(**batch).logits, expected)


def test_merge_matches_and_unwraps(family):
    batch = tiny_batch()
    model = apply(tiny_classifier(family), "ia3")
    randomise(model, scale=0.3)
    expected = model(**batch).logits
    base_keys = set(tiny_classifier(family).state_dict())
    plain = ia3.merge(model)
    assert not any(isinstance(m, ia3.IA3Layer) for m in plain.modules())
    assert set(plain.state_dict()) == base_keys  # a plain Hugging Face model again
    assert torch.allclose(plain(**batch).logits, expected, atol=1e-5)  # stated tolerance: 1e-5 (float32)


def test_saved_vectors_reload_into_a_fresh_model(family):
    batch = tiny_batch()
    model = apply(tiny_classifier(family), "ia3")
    randomise(model, scale=0.3)
    expected = model(**batch).logits
    fresh = apply(tiny_classifier(family), "ia3")
    assert not fresh.load_state_dict(saved(model), strict=False).unexpected_keys
    assert torch.equal(fresh(**batch).logits, expected)


def test_two_adamw_steps_lower_the_loss(family):
    batch = tiny_batch()
    before, after = loss_after_two_steps(apply(tiny_classifier(family), "ia3"), batch, torch.tensor([0, 1, 1]), 1e-2)
    assert after < before
    if family != "bert":
        before, after = loss_after_two_steps(apply(tiny_causal_lm(family), "ia3"), batch, lm_labels(batch), 1e-2)
        assert after < before


def test_bf16_frozen_weights_with_autocast(family):
    batch = tiny_batch()
    bf16_step(apply(tiny_classifier(family), "ia3"), batch, torch.tensor([0, 1, 1]))


def _peft_twin(family, ours):
    """A PEFT IA3 model of the same base whose vectors are set from ``ours`` wherever the designs match."""
    torch.manual_seed(0)
    if family == "bert":
        base = tiny_classifier("bert")
        task = "SEQ_CLS"
    else:
        base = tiny_causal_lm(family)
        task = "CAUSAL_LM"
    twin = get_peft_model(base, IA3Config(task_type=task)).eval()
    model = twin.base_model.model
    mine = {n: m for n, m in ours.named_modules() if isinstance(m, ia3.IA3Layer)}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not hasattr(module, "ia3_l"):
                continue
            vec = module.ia3_l["default"]
            if name in mine:
                ours_vec = mine[name].ia3.detach()
                start = mine[name].start
                full = torch.ones(vec.numel())
                full[start:start + ours_vec.numel()] = ours_vec  # GPT-2 c_attn: PEFT also scales q; keep q at 1
                vec.copy_(full.view_as(vec))
            else:  # BERT attention.output.dense: targeted by PEFT only; identity there
                vec.fill_(1.0)
    return twin


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning", "ignore:fan_in_fan_out:UserWarning")
def test_matches_peft_where_the_designs_agree(family):
    """PEFT's default IA3 targets: Llama k_proj, v_proj, down_proj (input) -- the same as ours; GPT-2
    the whole fused c_attn output (queries too) and mlp.c_proj; BERT key, value and every module ending in
    output.dense (input), i.e. also attention.output.dense. With PEFT's extra vectors fixed at 1 and ours
    copied in, the logits agree to 1e-6 (float32)."""
    batch = tiny_batch()
    ours = apply(tiny_classifier("bert") if family == "bert" else tiny_causal_lm(family), "ia3")
    randomise(ours, scale=0.3)
    twin = _peft_twin(family, ours)
    peft_targets = {_in_block(n) for n, m in twin.base_model.model.named_modules() if hasattr(m, "ia3_l")}
    ours_targets = {_in_block(n) for n, *_ in _layers(ours)}
    extra = {"bert": {"attention.output.dense"}, "llama": set(), "gpt2": set()}[family]
    assert peft_targets == ours_targets | extra
    if family == "bert":  # the classifier head is fresh in both: copy ours
        twin.base_model.model.classifier.modules_to_save["default"].load_state_dict(ours.classifier.state_dict())
    expected = ours(**batch).logits
    assert torch.allclose(twin(**batch).logits, expected, atol=1e-6)


@pytest.mark.parametrize("targets", [["queries"], []])
def test_bad_targets_are_config_errors(targets):
    with pytest.raises(ConfigError, match="method.targets"):
        registry.make_config("ia3", {"targets": targets})


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@torch.no_grad()
def test_phi3_fused_qkv_scales_only_its_narrower_key_and_value_slices(tmp_path):
    """Phi-3's ``qkv_proj`` is ``[q | k | v]`` with k and v narrower than q under grouped-query attention
    (4 heads, 2 key/value heads of 8: 32 | 16 | 16). Random vectors: merging gives the same logits, and the
    PEFT export (a full-width vector, ones on the query slice) loads in PEFT with the same logits."""
    import json

    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Phi3Config

    def build():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(Phi3Config(
            vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, pad_token_id=0)).eval()

    build().save_pretrained(tmp_path / "base")
    model = apply(build(), "ia3")
    assert _layers(model) == {(f"model.layers.{i}.{n}", size, start, inp) for i in range(2) for n, size, start, inp
                              in (("self_attn.qkv_proj", 32, 32, False), ("mlp.down_proj", 64, 0, True))}
    randomise(model, scale=0.3)
    batch = tiny_batch()
    expected = model(**batch).logits
    assert not torch.allclose(expected, build()(**batch).logits, atol=1e-3)
    config = registry.make_config("ia3", {})
    adapter_config, tensors = ia3.to_peft(model, config, "CAUSAL_LM", [])
    adapter_config["base_model_name_or_path"] = str(tmp_path / "base")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "adapter" / "adapter_model.safetensors")
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    torch.testing.assert_close(theirs.eval()(**batch).logits, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ia3.merge(model)(**batch).logits, expected, rtol=0, atol=1e-5)
