import pytest
import torch

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from helpers import apply, bf16_step, lm_labels, loss_after_two_steps, method_params, randomise, saved
from tuneforge.config import ConfigError


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_exactly_the_biases_train(family):
    model = apply(tiny_classifier(family), "bitfit")
    names = method_params(model)
    heads = ("classifier", "score")
    backbone_biases = {n for n, _ in model.named_parameters() if n.endswith(".bias") and n.split(".")[0] not in heads}
    assert names == backbone_biases and names
    assert any("LayerNorm.bias" in n or ".ln_" in n for n in names)  # the paper trains LayerNorm biases too
    without_norms = method_params(apply(tiny_classifier(family), "bitfit", layernorm=False))
    assert without_norms and not any("LayerNorm" in n or ".ln_" in n for n in without_norms)
    assert without_norms < names


def test_llama_has_no_biases():
    with pytest.raises(ConfigError, match="no bias terms.*another method"):
        apply(tiny_classifier("llama"), "bitfit")
    with pytest.raises(ConfigError, match="no bias terms"):
        apply(tiny_causal_lm("llama"), "bitfit")


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_two_adamw_steps_lower_the_loss(family):
    batch = tiny_batch()
    before, after = loss_after_two_steps(apply(tiny_classifier(family), "bitfit"), batch, torch.tensor([0, 1, 1]), 1e-2)
    assert after < before
    if family == "gpt2":
        before, after = loss_after_two_steps(apply(tiny_causal_lm(family), "bitfit"), batch, lm_labels(batch), 1e-2)
        assert after < before


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_saved_biases_reload_and_bf16(family):
    batch = tiny_batch()
    model = apply(tiny_classifier(family), "bitfit")
    randomise(model, scale=0.2)
    expected = model(**batch).logits
    fresh = apply(tiny_classifier(family), "bitfit")
    assert not fresh.load_state_dict(saved(model), strict=False).unexpected_keys
    assert torch.equal(fresh(**batch).logits, expected)
    bf16_step(fresh, batch, torch.tensor([0, 1, 1]))
