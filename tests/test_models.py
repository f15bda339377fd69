"""models.apply_method: a pre-trained pooler that the method leaves frozen trains with the head."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from tiny import model_dir
from tuneforge.config import load_config
from tuneforge.methods import registry
from tuneforge.models import apply_method, frozen_pooler
from tuneforge.optim import build_optimizer


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("models") / "bert", "bert")


def _pooler_grads(model):
    return [p.requires_grad for n, p in model.named_parameters() if n.startswith("bert.pooler.")]


def _applied(bert, method, pooler_with_head):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2)
    cfg = load_config(None, {"method": {"name": method}, "train": {"pooler_with_head": pooler_with_head}})
    return apply_method(model, cfg, ["classifier"])


@pytest.mark.parametrize("method", registry.names())
def test_a_frozen_pooler_trains_with_the_head_and_a_trained_one_is_left_to_the_method(bert, method):
    plain, heads = _applied(bert, method, False)
    assert heads == ["classifier"]
    left_frozen = not any(_pooler_grads(plain))
    model, heads = _applied(bert, method, True)
    if left_frozen:  # e.g. adapters, prompt tuning: the pooler trains in full, named with the heads
        assert heads == ["classifier", "bert.pooler"] and all(_pooler_grads(model))
    else:  # full (all of it), LoRA (pooler.dense wrapped), BitFit (its bias): the method's own choice stands
        assert heads == ["classifier"] and _pooler_grads(model) == _pooler_grads(plain)
    other = {n: p.requires_grad for n, p in plain.named_parameters() if not n.startswith("bert.pooler.")}
    assert other == {n: p.requires_grad for n, p in model.named_parameters() if not n.startswith("bert.pooler.")}


def test_the_methods_that_leave_the_pooler_frozen(bert):
    frozen = {m for m in registry.names() if not any(_pooler_grads(_applied(bert, m, False)[0]))}
    assert {"adapter", "prompt", "p-tuning", "prefix", "ia3"} <= frozen and not {"full", "lora", "bitfit"} & frozen


def test_models_without_a_pooler_add_nothing(bert):
    tagger = AutoModelForTokenClassification.from_pretrained(bert, num_labels=3)  # built without a pooler
    assert frozen_pooler(registry.apply(tagger, "adapter", registry.make_config("adapter", {}))) == []


def test_the_pooler_learns_at_the_heads_rate(bert):
    model, heads = _applied(bert, "adapter", True)
    cfg = load_config(None, {"train": {"lr": 1e-4, "head_lr": 3e-3}})
    optimizer, names = build_optimizer(model, cfg, tuple(heads))
    order = iter(names)  # parameter names in the optimizer's order
    rate = {next(order): g["lr"] for g in optimizer.param_groups for _ in g["params"]}
    assert rate["bert.pooler.dense.weight"] == rate["classifier.weight"] == 3e-3
    assert {r for n, r in rate.items() if not n.startswith(("bert.pooler.", "classifier."))} == {1e-4}
