import math

import pytest
import torch

from conftest import tiny_classifier
from tuneforge.config import load_config
from tuneforge.optim import build_optimizer, lr_lambda


def test_optimizers_and_weight_decay_groups():
    model = tiny_classifier("bert")
    for name, cls in (("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)):
        cfg = load_config(None, {"train": {"optimizer": name, "weight_decay": 0.1, "lr": 1e-3}})
        opt, names = build_optimizer(model, cfg)
        assert isinstance(opt, cls)
        decay, no_decay = opt.param_groups
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        assert all(p.ndim < 2 for p in no_decay["params"]) and all(p.ndim >= 2 for p in decay["params"])
        params = dict(model.named_parameters())  # names follow the optimizer's parameter order
        assert [params[n] for n in names] == decay["params"] + no_decay["params"]


def test_a_fresh_head_trains_at_its_own_learning_rate():
    """train.head_lr puts the head's weights and biases in groups of their own (same weight-decay split); the
    schedule scales every group's own rate; without head_lr (or without heads) nothing changes."""
    model = tiny_classifier("bert")
    cfg = load_config(None, {"train": {"weight_decay": 0.1, "lr": 1e-4, "head_lr": 3e-3}})
    opt, names = build_optimizer(model, cfg, ("classifier",))
    groups = opt.param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-4, 0.1), (1e-4, 0.0), (3e-3, 0.1), (3e-3, 0.0)]
    params = dict(model.named_parameters())
    assert [params[n] for n in names] == [p for g in groups for p in g["params"]]
    head = {n for n in names if n.startswith("classifier.")}
    assert head and {n for n, p in params.items() if any(p is q for g in groups[2:] for q in g["params"])} == head
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert [g["lr"] for g in groups] == [5e-5, 5e-5, 1.5e-3, 1.5e-3] and scheduler.get_last_lr()[2] == 1.5e-3
    for heads, head_lr in ((("classifier",), None), ((), 3e-3)):
        plain = load_config(None, {"train": {"lr": 1e-4, "head_lr": head_lr}})
        assert [g["lr"] for g in build_optimizer(model, plain, heads)[0].param_groups] == [1e-4, 1e-4]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
    fn = lr_lambda(schedule, warmup=10, total=100)
    assert fn(0) < fn(5) < fn(9) <= 1.0
    end = fn(99)
    expected = {"constant": 1.0, "linear": 1 / 90, "cosine": 0.5 * (1 + math.cos(math.pi * 89 / 90))}[schedule]
    assert end == pytest.approx(expected, rel=1e-6)
