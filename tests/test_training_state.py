"""training_state: one safetensors checkpoint brings weights, optimizer, scheduler, RNG and loop counters back."""
import json

import pytest
import torch
import torch.nn as nn

from tuneforge import training_state
from tuneforge.checkpoint import RESUME
from tuneforge.config import ConfigError
from tuneforge.files import save_tensors


class Wrapped(nn.Module):
    """Like the training module: the model under ``model.``, one frozen weight that is not saved."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        self.model[0].weight.requires_grad_(False)


def _setup(seed: int):
    torch.manual_seed(seed)
    module = Wrapped()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 3e-3}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
    return module, names, optimizer, scheduler


def _step(module, optimizer, scheduler):
    loss = module.model(torch.randn(5, 4)).pow(2).mean()  # draws from the RNG, like dropout would
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


def test_round_trip_continues_to_the_same_result(tmp_path):
    cpu = torch.device("cpu")
    module, names, optimizer, scheduler = _setup(0)
    for _ in range(3):
        _step(module, optimizer, scheduler)
    training_state.save_training_state(tmp_path, module, optimizer, names, scheduler, {"steps": 3}, cpu)
    assert training_state.has_training_state(tmp_path) and (tmp_path / RESUME).is_file()
    for _ in range(2):  # the run goes on uninterrupted: the reference
        _step(module, optimizer, scheduler)
    expected = {n: p.detach().clone() for n, p in module.named_parameters()}

    other, names2, optimizer2, scheduler2 = _setup(1)  # a fresh process: other weights, other RNG
    other.model[0].weight.data.copy_(module.model[0].weight)  # frozen weights come from the pre-trained model
    loop = training_state.load_training_state(tmp_path, other, optimizer2, names2, scheduler2, cpu)
    assert loop["steps"] == 3 and loop["best_state"] is None  # the best weights are a file of their own
    assert scheduler2.last_epoch == 3 and [g["lr"] for g in optimizer2.param_groups] == pytest.approx([1e-2 / 4,
                                                                                                        3e-3 / 4])
    for _ in range(2):
        _step(other, optimizer2, scheduler2)
    for n, p in other.named_parameters():
        assert torch.equal(p, expected[n]), n


def test_no_checkpoint_and_a_checkpoint_from_another_world_size(tmp_path):
    module, names, optimizer, scheduler = _setup(0)
    assert not training_state.has_training_state(tmp_path)
    training_state.save_training_state(tmp_path, module, optimizer, names, scheduler, {"steps": 0},
                                       torch.device("cpu"))
    meta, tensors = training_state._read_state(tmp_path / RESUME)
    assert meta["world_size"] == 1 and not any(k.startswith("best.") for k in tensors)
    save_tensors(tensors, tmp_path / RESUME, {"state": json.dumps({**meta, "world_size": 2})})
    with pytest.raises(ConfigError, match="2 process"):
        training_state.load_training_state(tmp_path, module, optimizer, names, scheduler, torch.device("cpu"))


def test_a_checkpoint_keeps_the_config_the_run_started_with_not_one_edited_while_it_trains(tmp_path):
    """The checkpoint read config.yaml at each save: an edit made while the run trained became the 'started'
    config, and --resume then accepted it (and ignored it); a deleted config.yaml failed the save."""
    from tuneforge import resume_check

    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.001\n")
    resume_check.started(tmp_path, "train:\n  lr: 0.001\n")
    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.5\n")  # edited while training
    module, names, optimizer, scheduler = _setup(0)
    training_state.save_training_state(tmp_path, module, optimizer, names, scheduler, {"steps": 0},
                                       torch.device("cpu"))
    assert training_state._read_state(tmp_path / RESUME)[0]["config_yaml"] == "train:\n  lr: 0.001\n"
    resume_check.discarded()
