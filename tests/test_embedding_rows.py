"""The optimizer's stand-in for the trainable embedding rows (tuneforge.embedding_rows) trains as the whole
embedding does, and its checkpoints are those of the plain path."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import VOCAB, tiny_classifier
from tuneforge import fast
from tuneforge.embedding_rows import TrainedRows, training_ids

CPU = torch.device("cpu")
IDS = torch.arange(4, 40)  # the rows training can reach: every id the batches below draw (VOCAB is larger)


def _models():
    plain = tiny_classifier("bert").train()
    for m in plain.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return plain, copy.deepcopy(plain)


def _optimizer(model, rows=None, optimizer="adamw"):
    params = [rows.param if rows is not None and p is rows.weight else p for p in model.parameters()]
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-1, momentum=0.9)
    decay = 0.1 if optimizer == "adamw-decay" else 0.0  # large: the other rows shrink 0.1 % a step
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=decay, fused=True)


def _step(model, optimizer, micro_batches, step, clip=1e-3):
    """One optimizer step of ``micro_batches`` backward passes (ids seeded by step; some repeat within a batch);
    clipping small enough that every step is rescaled."""
    for m in range(micro_batches):
        g = torch.Generator().manual_seed(10 * step + m)
        ids = torch.randint(4, 40, (4, 9), generator=g)
        labels = torch.randint(0, 2, (4,), generator=g)
        nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    fast.clip_gradients(params, clip, optimizer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-decay", "sgd"])
@pytest.mark.parametrize("micro_batches", [1, 2])  # 2: the later micro-batch adds into the step's gradient
def test_trained_rows_train_as_the_whole_embedding(micro_batches, optimizer):
    plain, ours = _models()
    start = plain.get_input_embeddings().weight.detach().clone()
    opt_plain = _optimizer(plain, optimizer=optimizer)
    with fast.sparse_embedding_gradient(ours, CPU, 1, lambda w: TrainedRows(w, IDS)) as rows:
        assert isinstance(rows, TrainedRows) and rows.param.shape == (len(IDS), start.shape[1])
        opt_ours = _optimizer(ours, rows, optimizer)
        rows.attach(opt_ours)
        for step in range(4):  # different rows each step: the previous step's rows must be cleared
            _step(plain, opt_plain, micro_batches, step)
            _step(ours, opt_ours, micro_batches, step)
    for (name, a), b in zip(plain.named_parameters(), ours.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name  # the clipping norm differs by rounding only
    weight = ours.get_input_embeddings().weight
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[IDS] = False
    assert torch.equal(weight[outside], plain.get_input_embeddings().weight[outside])  # as the plain path left them
    assert torch.equal(weight[outside], start[outside]) == (optimizer != "adamw-decay")  # decay alone moved them
    assert not torch.equal(weight[IDS], start[IDS])
    state = opt_ours.state[rows.param]
    assert all(v.shape == rows.param.shape for v in state.values() if v.dim())  # moments only for those rows
    assert not ours.get_input_embeddings().sparse and not weight._post_accumulate_grad_hooks  # restored


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-decay"])
def test_checkpoints_hold_the_full_shape_and_resume_either_way(optimizer):
    plain, ours = _models()
    opt_plain = _optimizer(plain, optimizer=optimizer)
    with fast.sparse_embedding_gradient(ours, CPU, 1, lambda w: TrainedRows(w, IDS)) as rows:
        opt_ours = _optimizer(ours, rows, optimizer)
        rows.attach(opt_ours)
        for step in range(3):
            _step(plain, opt_plain, 1, step)
            _step(ours, opt_ours, 1, step)
        saved_plain, saved_ours = opt_plain.state_dict(), opt_ours.state_dict()
        for i, state in saved_plain["state"].items():  # the stand-in's state at the embedding's shape
            for key, value in state.items():
                assert value.shape == saved_ours["state"][i][key].shape, key
                assert torch.allclose(value, saved_ours["state"][i][key], rtol=1e-5, atol=1e-7), key
        assert opt_ours.state[rows.param]["exp_avg"].shape == rows.param.shape  # the live state stays compact
    # a fresh stand-in resumes from the plain path's checkpoint (weights first, as training_state loads them)
    resumed = _models()[0]  # the initial weights, as a resumed run builds its model
    with fast.sparse_embedding_gradient(resumed, CPU, 1, lambda w: TrainedRows(w, IDS)) as rows:
        opt_resumed = _optimizer(resumed, rows, optimizer)
        rows.attach(opt_resumed)
        resumed.load_state_dict(plain.state_dict())
        opt_resumed.load_state_dict(copy.deepcopy(saved_plain))  # as read from a file: no tensor shared
        assert torch.equal(rows.param, resumed.get_input_embeddings().weight[IDS])  # pulled from the loaded weight
        assert opt_resumed.state[rows.param]["exp_avg"].shape == rows.param.shape
        _step(plain, opt_plain, 1, 3)
        _step(resumed, opt_resumed, 1, 3)
    for (name, a), b in zip(plain.named_parameters(), resumed.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name


def test_a_row_outside_the_training_ids_is_an_error():
    _, ours = _models()
    with fast.sparse_embedding_gradient(ours, CPU, 1, lambda w: TrainedRows(w, IDS[:-1])):
        ids = torch.full((1, 3), int(IDS[-1]))
        with pytest.raises(RuntimeError, match="no training example holds"):
            ours(input_ids=ids).logits.sum().backward()


def test_training_ids_cover_every_example_and_padding():
    ids = training_ids([{"input_ids": [5, 3, 5]}, {"input_ids": [9]}], pad_id=0)
    assert ids.tolist() == [0, 3, 5, 9]


def test_weight_decay_or_a_regulariser_keeps_the_whole_embedding(tmp_path, monkeypatch):
    """SGD's and RMSprop's decay enter the gradient, and a regulariser adds a dense gradient: then the kept dense
    buffer is used. AdamW's decoupled decay shrinks the rows without gradient by one factor: the stand-in."""
    from types import SimpleNamespace

    from tuneforge.train import embedding_hook

    data = SimpleNamespace(train=[{"input_ids": [1, 2]}])
    rt = SimpleNamespace(pad_id=0)

    def cfg(decay, optimizer="adamw"):
        return SimpleNamespace(train=SimpleNamespace(weight_decay=decay, optimizer=optimizer))

    weight = nn.Parameter(torch.zeros(8, 2))
    for decay in (0.0, 0.01):
        rows = embedding_hook(data, cfg(decay), rt, ())(weight)
        assert isinstance(rows, TrainedRows) and rows.ids.tolist() == [0, 1, 2]
        rows.remove()
    assert isinstance(embedding_hook(data, cfg(0.0, "sgd"), rt, ())(weight), TrainedRows)
    assert embedding_hook(data, cfg(0.01, "sgd"), rt, ()) is fast.KeptGradient
    assert embedding_hook(data, cfg(0.01, "rmsprop"), rt, ()) is fast.KeptGradient
    assert embedding_hook(data, cfg(0.0), rt, (object(),)) is fast.KeptGradient
