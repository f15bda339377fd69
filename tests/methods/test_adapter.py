import pytest
import torch

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from helpers import apply, bf16_step, lm_labels, loss_after_two_steps, method_params, randomise, saved, trainable
from tuneforge.config import ConfigError
from tuneforge.methods import adapter, registry

# Houlsby placement per family: (attention output projection, FFN output projection) inside a block.
WRAPPED = {
    "bert": ("attention.output.dense", "output.dense"),
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
}
LAYERS = {"bert": "bert.encoder.layer", "llama": "model.layers", "gpt2": "transformer.h"}


@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_wraps_the_sublayer_outputs_of_every_block(family, variant):
    model = apply(tiny_classifier(family), "adapter", variant=variant)
    wrapped = {n for n, m in model.named_modules() if isinstance(m, adapter.AdapterLayer)}
    attn, ffn = WRAPPED[family]
    per_block = [attn, ffn] if variant == "houlsby" else [ffn]
    assert wrapped == {f"{LAYERS[family]}.{i}.{name}" for i in range(2) for name in per_block}


def test_gpt_neox_attention_is_found_past_a_norm_named_after_it():
    """GPT-NeoX's block lists ``post_attention_layernorm`` (no linear layer) before ``attention``."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    model = apply(AutoModelForCausalLM.from_config(GPTNeoXConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)), "adapter")
    wrapped = {n for n, m in model.named_modules() if isinstance(m, adapter.AdapterLayer)}
    assert wrapped == {f"gpt_neox.layers.{i}.{n}" for i in range(2) for n in ("attention.dense", "mlp.dense_4h_to_h")}


def test_phi3_attention_output_is_o_proj_though_registered_before_the_fused_qkv():
    """Phi-3's attention lists ``o_proj`` first, then the fused ``qkv_proj`` (hidden -> 3 x hidden)."""
    from transformers import AutoModelForCausalLM, Phi3Config

    model = apply(AutoModelForCausalLM.from_config(Phi3Config(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, pad_token_id=0)), "adapter")
    wrapped = {n for n, m in model.named_modules() if isinstance(m, adapter.AdapterLayer)}
    assert wrapped == {f"model.layers.{i}.{n}" for i in range(2) for n in ("self_attn.o_proj", "mlp.down_proj")}


def test_albert_blocks_are_found_at_the_hidden_width_not_the_narrower_embedding():
    """ALBERT projects 16-wide embeddings up to a 32-wide residual stream and nests its layer in a group."""
    from transformers import AlbertConfig, AutoModelForSequenceClassification

    model = apply(AutoModelForSequenceClassification.from_config(AlbertConfig(
        vocab_size=128, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64)), "adapter")
    wrapped = {n for n, m in model.named_modules() if isinstance(m, adapter.AdapterLayer)}
    root = "albert.encoder.albert_layer_groups.0.albert_layers.0"
    assert wrapped == {f"{root}.attention.dense", f"{root}.ffn_output"}
    assert model(**tiny_batch()).logits.shape == (3, 2)


@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_exactly_the_adapters_train(family, variant):
    model = apply(tiny_classifier(family), "adapter", variant=variant, reduction_factor=8)
    names = method_params(model)
    n_adapters = 4 if variant == "houlsby" else 2  # 2 blocks
    assert len(names) == 4 * n_adapters  # down/up weight and bias
    assert all(".adapter.down." in n or ".adapter.up." in n for n in names)
    assert trainable(model) - names  # the fresh head trains too
    down = next(m for m in model.modules() if isinstance(m, adapter.Adapter)).down
    assert down.weight.shape == (4, 32)  # hidden 32 // reduction 8


def test_bottleneck_size_and_layernorms(family):
    model = apply(tiny_classifier(family), "adapter", bottleneck_size=3, train_layernorms=True)
    names = method_params(model)
    norms = {n for n in names if ".adapter." not in n}
    assert norms and all("norm" in n.lower() or "ln_" in n for n in norms)
    assert all(m.down.out_features == 3 for m in model.modules() if isinstance(m, adapter.Adapter))


def test_zero_init_reproduces_base_exactly(family):
    batch = tiny_batch()
    base = tiny_classifier(family)
    expected = base(**batch).logits
    assert torch.equal(apply(base, "adapter")(**batch).logits, expected)
    if family != "bert":
        lm = tiny_causal_lm(family)
        expected = lm(**batch).logits
        assert torch.equal(apply(lm, "adapter", variant="pfeiffer")(**batch).logits, expected)


def test_saved_adapters_reload_into_a_fresh_model(family):
    batch = tiny_batch()
    model = apply(tiny_classifier(family), "adapter")
    randomise(model)
    expected = model(**batch).logits
    assert not torch.equal(expected, tiny_classifier(family)(**batch).logits)  # adapters now matter
    fresh = apply(tiny_classifier(family), "adapter")
    result = fresh.load_state_dict(saved(model), strict=False)
    assert not result.unexpected_keys
    assert torch.equal(fresh(**batch).logits, expected)


def test_two_adamw_steps_lower_the_loss(family):
    batch = tiny_batch()
    model = apply(tiny_classifier(family), "adapter")
    before, after = loss_after_two_steps(model, batch, torch.tensor([0, 1, 1]), lr=1e-2)
    assert after < before
    if family != "bert":
        model = apply(tiny_causal_lm(family), "adapter")
        before, after = loss_after_two_steps(model, batch, lm_labels(batch), lr=1e-2)
        assert after < before


def test_bf16_frozen_weights_with_autocast(family):
    batch = tiny_batch()
    bf16_step(apply(tiny_classifier(family), "adapter", train_layernorms=True), batch, torch.tensor([0, 1, 1]))
    if family != "bert":
        bf16_step(apply(tiny_causal_lm(family), "adapter"), batch, lm_labels(batch))


@pytest.mark.parametrize("options, key", [
    ({"variant": "parallel"}, "method.variant"),
    ({"reduction_factor": 0}, "method.reduction_factor"),
    ({"bottleneck_size": -2}, "method.bottleneck_size"),
    ({"activation": "bogus"}, "method.activation"),
])
def test_bad_settings_are_config_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        registry.make_config("adapter", options)
    with pytest.raises(ConfigError, match=key):
        adapter.Config(**options)


def test_a_reduction_wider_than_the_model_is_refused():
    with pytest.raises(ConfigError, match=r"method.reduction_factor=100 leaves no bottleneck on a 32-wide model"):
        apply(tiny_classifier("bert"), "adapter", reduction_factor=100)
    model = apply(tiny_classifier("bert"), "adapter", reduction_factor=32)  # the widest that leaves one unit
    assert {m.adapter.down.out_features for m in model.modules() if isinstance(m, adapter.AdapterLayer)} == {1}


def test_applying_twice_is_refused():
    model = apply(tiny_classifier("bert"), "adapter")
    with pytest.raises(ConfigError, match="already has adapters"):
        apply(model, "adapter")


@pytest.mark.parametrize("shape, lr", [
    (None, 3e-3),  # model unknown: the rate measured on MiniLM
    ((384, 6), 3e-3),  # MiniLM itself
    ((32, 2), 3e-3),  # smaller models keep it: the rule only lowers the rate
    ((768, 6), 1.5e-3),  # twice as wide: half
    ((384, 24), 1.5e-3),  # four times as deep: half
    ((576, 30), 3e-3 * 384 / 576 * (6 / 30) ** 0.5),  # SmolLM2-135M: 8.9e-4
])
def test_the_default_rate_falls_with_the_models_width_and_depth(shape, lr):
    assert adapter.default_lr(shape) == pytest.approx(lr)
    assert registry.train_defaults("adapter", "classification")["lr"] == 3e-3  # no model named
