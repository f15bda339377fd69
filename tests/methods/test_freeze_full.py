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
    ({"num_layers": 1}, {1}), ({"num_layers": 1, "which": "first"}, {0}), ({"layer_indices": [0, -1]}, {0, 1}),
    ({"num_layers": 0, "patterns": [r"\b(layers?|h)\.0\."]}, {0}),
])
def test_freeze_selects_exactly_the_chosen_layers(family, options, layers):
    model, trainable = _trainable(family, "freeze", **options)
    layers_name, blocks = find_layers(model)
    expected = {n for n, _ in model.named_parameters()
                if any(n.startswith(f"{layers_name}.{i}.") for i in layers) or n.split(".")[0] in HEADS}
    assert trainable == expected


def test_freeze_extra_modules():
    model, trainable = _trainable("bert", "freeze", num_layers=0, extra=["embeddings"])
    assert {n for n in trainable if "embeddings" in n} == {n for n, _ in model.named_parameters() if "embeddings" in n}
    assert not any(".layer." in n for n in trainable)


@pytest.mark.parametrize("options, message", [
    ({"num_layers": 5}, "has only 2 layers"), ({"layer_indices": [7]}, "out of range"),
    ({"extra": ["nosuch"]}, "no module named 'nosuch'"), ({"patterns": ["("]}, "invalid regex"),
    ({"num_layers": 0}, "selects no parameters"),
])
def test_freeze_bad_settings(options, message):
    with pytest.raises(ConfigError, match=message):
        _trainable("bert", "freeze", **options)
