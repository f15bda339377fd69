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
