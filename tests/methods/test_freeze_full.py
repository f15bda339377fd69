import pytest

from conftest import tiny_classifier
from tuneforge.config import ConfigError
from tuneforge.methods import registry
from tuneforge.methods.layers import find_layers

HEADS = ["classifier", "score"]


def _trainable(family, name, **options):
    model = registry.apply(tiny_classifier(family), name, registry.make_config(name, options), always_train=HEADS)
    return model, {n for n, p in model.named_parameters() if p.requires_grad}


def test_full_trains_everything(family):
    model, trainable = _trainable(family, "full")
    assert trainable == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("options, layers", [
    ({"num_layers": 1}, {1}), ({"num_layers": 1, "which": "first"}, {0}), ({"layer_indices": [0, -1]}, {0, 1}), ({"layer_indices": [0, 0]}, {0}),
    ({"num_layers": 0, "patterns": [r"\b(layers?|h)\.0\."]}, {0}),
])
def test_freeze_selects_exactly_the_chosen_layers(family, options, layers):
    model, trainable = _trainable(family, "freeze", **options)
    layers_name, blocks = find_layers(model)
    expected = {n for n, _ in model.named_parameters()
                if any(n.startswith(f"{layers_name}.{i}.") for i in layers) or n.split(".")[0] in HEADS}
    assert trainable == expected


def test_freeze_trains_the_last_two_layers_by_default_and_every_layer_of_a_smaller_model():
    """method.num_layers unset: 2 layers, or all of a model with fewer (ALBERT shares one layer; a 1-layer model
    stopped with an error about a setting never made); an explicit count beyond the model is still refused."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    def one_layer():
        return AutoModelForSequenceClassification.from_config(BertConfig(
            vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))

    model, trainable = _trainable("bert", "freeze")
    assert {n for n in trainable if ".layer." in n} == {n for n, _ in model.named_parameters() if ".layer." in n}
    one = registry.apply(one_layer(), "freeze", registry.make_config("freeze", {}), always_train=HEADS)
    assert any(p.requires_grad for n, p in one.named_parameters() if ".layer.0." in n)
    with pytest.raises(ConfigError, match="num_layers=2 but the model has only 1 layers"):
        registry.apply(one_layer(), "freeze", registry.make_config("freeze", {"num_layers": 2}), always_train=HEADS)


def test_freeze_extra_modules():
    model, trainable = _trainable("bert", "freeze", num_layers=0, extra=["embeddings"])
    assert {n for n in trainable if "embeddings" in n} == {n for n, _ in model.named_parameters() if "embeddings" in n}
    assert not any(".layer." in n for n in trainable)



def test_freeze_extra_names_a_tied_module_or_a_dotted_path_below_the_root(capsys):
    """GPT-2's lm_head shares wte's weight and BART's encoder.embed_tokens shares model.shared's: both were
    refused as 'no module named'; a tied one trains the shared weight, with a note."""
    from transformers import AutoModelForSeq2SeqLM, BartConfig

    from conftest import tiny_causal_lm

    def trainable(model, extra):
        registry.apply(model, "freeze", registry.make_config("freeze", {"num_layers": 0, "extra": extra}))
        return {n for n, p in model.named_parameters() if p.requires_grad}

    assert trainable(tiny_causal_lm("gpt2"), ["lm_head"]) == {"transformer.wte.weight"}
    assert capsys.readouterr().err == ("note: lm_head.weight is tied to transformer.wte.weight: training it trains "
                                       "both\n")
    bart = AutoModelForSeq2SeqLM.from_config(BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                                        encoder_attention_heads=2, decoder_attention_heads=2,
                                                        encoder_ffn_dim=32, decoder_ffn_dim=32))
    assert trainable(bart, ["encoder.layernorm_embedding"]) == {"model.encoder.layernorm_embedding.weight",
                                                                "model.encoder.layernorm_embedding.bias"}
    assert trainable(bart, ["encoder.embed_tokens"]) == {"model.shared.weight"}
    with pytest.raises(ConfigError, match="no module named 'coder.layernorm_embedding'"):  # whole name parts only
        trainable(bart, ["coder.layernorm_embedding"])


@pytest.mark.parametrize("options, message", [
    ({"num_layers": 5}, "has only 2 layers"), ({"layer_indices": [7]}, "out of range"),
    ({"extra": ["nosuch"]}, "no module named 'nosuch'"), ({"patterns": ["("]}, "invalid regex"),
    ({"num_layers": 0}, "selects no parameters"),
    ({"layer_indices": [-1, 1]}, r"name a layer twice: negative indices count from the end \(-1 is layer 1 of 2\)"),
    ({"patterns": [r"\.0\.", "zzzz"]}, r"method.patterns: 'zzzz' matches no frozen parameter of .* such as 'bert\."),
    ({"num_layers": 0, "patterns": ["classifier"]}, "'classifier' matches no frozen parameter .* the task head trains"),
])
def test_freeze_bad_settings(options, message):
    with pytest.raises(ConfigError, match=message):
        _trainable("bert", "freeze", **options)
