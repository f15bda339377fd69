"""forgetting.interpolate: WiSE-FT's move back toward the starting weights, on a tiny module."""
import pytest
import torch
import torch.nn as nn

from tuneforge.config import ConfigError, load_config
from tuneforge.forgetting.interpolate import interpolate, start_weights


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    m[0].bias.requires_grad_(False)  # frozen: never copied, never moved
    return m


def test_start_weights_copies_trainable_parameters_outside_the_heads_and_is_off_at_keep_1():
    m = _model()
    assert start_weights(m, 1.0) is None
    start = start_weights(m, 0.5, exclude=["1"])
    assert sorted(start) == ["0.weight"] and start["0.weight"].dtype == torch.float32
    with torch.no_grad():
        m[0].weight.add_(1.0)
    assert not torch.equal(start["0.weight"], m[0].weight)  # a copy, not a view


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9])
def test_interpolate_sets_start_plus_keep_times_the_change(keep):
    m = _model()
    start = start_weights(m, keep)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():  # "training"
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    trained = {n: p.detach().clone() for n, p in m.named_parameters()}
    assert interpolate(m, start, keep) == 3
    for n, p in m.named_parameters():
        want = before[n] + keep * (trained[n] - before[n]) if n in start else trained[n]
        assert torch.allclose(p, want, atol=1e-6), n


def test_interpolate_keeps_each_parameter_dtype():
    m = _model().to(torch.bfloat16)
    start = start_weights(m, 0.5)
    with torch.no_grad():
        m[1].weight.add_(2.0)
    interpolate(m, start, 0.5)
    assert m[1].weight.dtype == torch.bfloat16
    assert torch.allclose(m[1].weight.float(), start["1.weight"] + 1.0, atol=1e-2)


@pytest.mark.parametrize("value", [0, -0.5, 1.5])
def test_interpolate_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match="forgetting.interpolate"):
        load_config(None, {"forgetting": {"interpolate": value}})
