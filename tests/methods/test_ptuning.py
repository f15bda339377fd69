import pytest
import torch
from peft import PromptEncoderConfig, get_peft_model

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from helpers import (apply, bf16_step, generate, greedy_reference, lm_labels, loss_after_two_steps, method_params,
                     randomise, saved)
from tuneforge.config import ConfigError
from tuneforge.methods import ptuning, registry

N = 4
BACKBONE = {"bert": "bert", "llama": "model", "gpt2": "transformer"}
ENCODERS = ["mlp", "lstm"]


def _model(family, encoder, causal=False, **options):
    base = tiny_causal_lm(family) if causal else tiny_classifier(family)
    return apply(base, "p-tuning", num_virtual_tokens=N, encoder=encoder, encoder_hidden=16, **options)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_exactly_the_prompt_encoder_trains(family, encoder):
    model = _model(family, encoder)
    names = method_params(model)
    root = f"{BACKBONE[family]}.prompt_encoder."
    assert all(n.startswith(root) for n in names)
    expected = {"embedding", "mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.2.weight", "mlp_head.2.bias"}
    if encoder == "mlp":
        expected |= {"mlp_head.4.weight", "mlp_head.4.bias"}
    else:  # 2 bidirectional layers: 4 tensors per direction and layer
        assert sum(".lstm_head." in n for n in names) == 16
    assert {n[len(root):] for n in names if ".lstm_head." not in n} == expected


@pytest.mark.parametrize("encoder", ENCODERS)
def test_fold_then_save_and_reload(family, encoder):
    batch = tiny_batch()
    model = _model(family, encoder, lstm_layers=2, dropout=0.1)
    randomise(model, scale=0.1)
    model.eval()
    expected = model(**batch).logits
    model.train()  # fold evaluates the encoder in eval mode (no LSTM dropout) whatever the model's mode
    ptuning.fold(model)
    model.eval()
    root = f"{BACKBONE[family]}.prompt_encoder"
    assert method_params(model) == {f"{root}.embedding"}
    assert model.base_model.prompt_encoder.embedding.shape == (N, 32)
    assert torch.equal(model(**batch).logits, expected)
    fresh = _model(family, encoder)  # apply with the same config, then load what a run saves
    assert set(saved(model)) <= {n for n, _ in fresh.named_parameters()}  # same names as the unfolded model
    assert not fresh.load_state_dict(saved(model), strict=False).unexpected_keys
    assert fresh.base_model.prompt_encoder.folded
    assert torch.equal(fresh(**batch).logits, expected)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_unfolded_save_and_reload(encoder):
    batch = tiny_batch()
    model = _model("gpt2", encoder)
    randomise(model, scale=0.1)
    expected = model(**batch).logits
    fresh = _model("gpt2", encoder)
    assert not fresh.load_state_dict(saved(model), strict=False).unexpected_keys
    assert not fresh.base_model.prompt_encoder.folded  # the encoder's tensors came along: nothing folded
    assert torch.equal(fresh(**batch).logits, expected)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@pytest.mark.parametrize("encoder", ENCODERS)
def test_matches_peft(family, encoder):
    """PEFT's PromptEncoder has the same modules (embedding, lstm_head, mlp_head): with its weights copied
    into ours, the virtual tokens are equal and the logits agree to 1e-6 (float32) -- causal LM logits after
    dropping PEFT's N leading positions, BERT classification (both pool the first virtual token)."""
    batch = tiny_batch()
    causal = family != "bert"
    base = tiny_causal_lm(family) if causal else tiny_classifier(family)
    twin = get_peft_model(base, PromptEncoderConfig(
        task_type="CAUSAL_LM" if causal else "SEQ_CLS", num_virtual_tokens=N, encoder_hidden_size=16,
        encoder_reparameterization_type=encoder.upper(), encoder_num_layers=2)).eval()
    ours = _model(family, encoder, causal=causal).eval()
    state = twin.prompt_encoder["default"].state_dict()
    state["embedding"] = state.pop("embedding.weight")
    ours.base_model.prompt_encoder.load_state_dict(state)
    virtual = twin.prompt_encoder["default"](torch.arange(N).unsqueeze(0))[0]
    assert torch.allclose(ours.base_model.prompt_encoder(), virtual, atol=1e-6)
    theirs, mine = twin(**batch).logits, ours(**batch).logits
    assert torch.allclose(theirs[:, N:] if causal else theirs, mine, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_matches_greedy_full_forwards_before_and_after_fold(family):
    model = _model(family, "lstm", causal=True)
    randomise(model, scale=0.1)
    ids = tiny_batch(batch=2, seq=6, seed=4)["input_ids"]
    out = generate(model, ids, 5)
    assert torch.equal(out, greedy_reference(model, ids, 5))
    ptuning.fold(model)
    assert torch.equal(generate(model, ids, 5), out)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_two_adamw_steps_lower_the_loss(family, encoder):
    batch = tiny_batch()
    before, after = loss_after_two_steps(_model(family, encoder), batch, torch.tensor([0, 1, 1]), 1e-2)
    assert after < before
    if family != "bert":
        before, after = loss_after_two_steps(_model(family, encoder, causal=True), batch, lm_labels(batch), 1e-2)
        assert after < before


def test_bf16_frozen_weights_with_autocast(family):
    batch = tiny_batch()
    bf16_step(_model(family, "lstm"), batch, torch.tensor([0, 1, 1]))
    if family != "bert":
        bf16_step(_model(family, "mlp", causal=True), batch, lm_labels(batch))


@pytest.mark.parametrize("options, key", [
    ({"num_virtual_tokens": 0}, "method.num_virtual_tokens"),
    ({"encoder": "gru"}, "method.encoder"),
    ({"encoder_hidden": 0}, "method.encoder_hidden"),
    ({"lstm_layers": 0}, "method.lstm_layers"),
    ({"dropout": 1.0}, "method.dropout"),
])
def test_bad_settings_are_config_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        registry.make_config("p-tuning", options)
    with pytest.raises(ConfigError, match=key):
        ptuning.Config(**options)


def test_too_many_virtual_tokens():
    with pytest.raises(ConfigError, match="max_position_embeddings=64"):
        apply(tiny_classifier("bert"), "p-tuning", num_virtual_tokens=100)
