import pytest
import torch
import torch.nn as nn

from conftest import tiny_batch, tiny_classifier
from tuneforge.config import ConfigError
from tuneforge.forgetting.regularize import EWC, L2SP, Regularizer, anchor_names, estimate_fisher

HEAD = ["classifier"]


def _perturb(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _distance(model, anchor, weights=None):
    params = dict(model.named_parameters())
    return sum(float(((weights[n] if weights else 1) * (params[n].detach() - a).pow(2)).sum()) for n, a in anchor.items())


def _loss_fn(model, batch):
    return nn.functional.cross_entropy(model(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                                       batch["labels"])


def _batches(n=4):
    out = []
    for i in range(n):
        b = tiny_batch(batch=2, seq=8, seed=10 + i)
        b["labels"] = torch.tensor([i % 2, (i + 1) % 2])
        out.append(b)
    return out


def _fisher(model):
    return estimate_fisher(model, _loss_fn, _batches(), n_batches=3)


@pytest.mark.parametrize("kind", ["l2sp", "ewc"])
def test_zero_at_anchor_and_a_gradient_step_moves_back(kind):
    model = tiny_classifier("bert")
    reg = L2SP(model, strength=2.0, exclude=HEAD) if kind == "l2sp" else EWC(model, _fisher(model), 2.0, exclude=HEAD)
    assert isinstance(reg, Regularizer)
    assert "classifier.weight" not in reg.anchor and "bert.embeddings.word_embeddings.weight" in reg.anchor
    assert float(reg.penalty(model).detach()) == 0.0
    _perturb(model)
    weights = reg.fisher if kind == "ewc" else None
    before = _distance(model, reg.anchor, weights)
    penalty = reg.penalty(model)
    assert float(penalty.detach()) == pytest.approx(0.5 * 2.0 * before, rel=1e-4) and float(penalty.detach()) > 0
    penalty.backward()
    params = dict(model.named_parameters())
    for name, a in reg.anchor.items():  # gradient = strength * F * (theta - theta0): points away from the anchor
        f = reg.fisher[name] if kind == "ewc" else 1.0
        torch.testing.assert_close(params[name].grad, 2.0 * f * (params[name].detach() - a), rtol=1e-4, atol=1e-7)
    assert params["classifier.weight"].grad is None  # the fresh head is not pulled anywhere
    with torch.no_grad():
        for name in reg.anchor:
            params[name].sub_(0.1 * params[name].grad)
    assert _distance(model, reg.anchor, weights) < before  # a small step against the gradient reduces the distance


def test_ewc_weights_by_fisher():
    model = tiny_classifier("bert")
    names = anchor_names(model, HEAD)
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
    target, other = names[0], names[1]
    fisher[target] = torch.full_like(fisher[target], 3.0)
    reg = EWC(model, fisher, strength=1.0, exclude=HEAD)
    params = dict(model.named_parameters())
    with torch.no_grad():
        params[target].add_(0.1)
        params[other].add_(0.1)  # moved as far, but with zero Fisher: free
    assert float(reg.penalty(model).detach()) == pytest.approx(0.5 * 3.0 * 0.01 * params[target].numel(), rel=1e-4)
    reg.penalty(model).backward()
    assert float(params[other].grad.abs().max()) == 0.0 and float(params[target].grad.abs().min()) > 0


def test_fisher_is_the_mean_squared_gradient_and_leaves_the_model_alone():
    model = tiny_classifier("bert").train()
    batches = _batches()
    fisher = estimate_fisher(model, _loss_fn, batches, n_batches=2)
    assert model.training and all(p.grad is None for p in model.parameters())
    name = "classifier.weight"
    expected = 0
    model.eval()
    for b in batches[:2]:
        model.zero_grad()
        _loss_fn(model, b).backward()
        expected = expected + dict(model.named_parameters())[name].grad.pow(2) / 2
    torch.testing.assert_close(fisher[name], expected)
    assert all(float(f.min()) >= 0 for f in fisher.values())


def test_l2sp_head_decay_pretrained_filter_and_errors():
    model = tiny_classifier("bert")
    reg = L2SP(model, strength=1.0, exclude=HEAD, head_strength=0.5)
    head = dict(model.named_parameters())["classifier.weight"]
    expected = 0.5 * 0.5 * sum(float(p.detach().pow(2).sum()) for n, p in model.named_parameters()
                               if n.startswith("classifier"))
    assert float(reg.penalty(model).detach()) == pytest.approx(expected, rel=1e-5) and head.requires_grad
    only = ["bert.pooler.dense.weight"]  # e.g. the names of the model before a method injected parameters
    assert list(L2SP(model, 1.0, exclude=HEAD, pretrained=only).anchor) == only
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable pre-trained"):
        L2SP(model, 1.0)
    model = tiny_classifier("bert")
    with pytest.raises(ConfigError, match="Fisher information has no entry"):
        EWC(model, {}, 1.0, exclude=HEAD)
    with pytest.raises(ConfigError, match=">= 0"):
        L2SP(model, -1.0)
