import pytest
import torch

from conftest import tiny_batch, tiny_classifier
from tuneforge.best_weights import BestWeights
from tuneforge.config import load_config
from tuneforge.methods import registry
from tuneforge.tasks import classification
from tuneforge.logs import Logger
from tuneforge.optim import build_optimizer
from tuneforge.train import TrainResult, _record_evaluation, improves

HEADS = ["classifier", "score"]


def _two_steps(model, batch, lr):
    task = classification.Task()
    cfg = load_config(None, {"train": {"lr": lr}})
    opt, _ = build_optimizer(model, cfg)
    with torch.no_grad():
        start = float(task.loss(model, batch))
    for step in range(2):
        opt.zero_grad()
        task.loss(model, batch).backward()
        if step == 0:  # the method's own parameters (not just the head) receive gradient
            own = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n.split(".")[0] not in HEADS]
            assert own and any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in own)
        opt.step()
    with torch.no_grad():
        return start, float(task.loss(model, batch))


@pytest.mark.parametrize("method", registry.names())
def test_two_steps_lower_the_loss_for_every_method(method, family):
    model = tiny_classifier(family)
    options = {}
    try:
        config = registry.make_config(method, options)
        model = registry.apply(model, method, config, always_train=HEADS)
    except Exception as exc:  # a method that cannot fit this family must say so clearly
        from tuneforge.config import ConfigError
        assert isinstance(exc, ConfigError), exc
        pytest.skip(f"{method} does not apply to {family}: {exc}")
    # 3:1 labels: on a tiny random BERT, prompt tuning's pooled first virtual token barely depends on the
    # input, so a balanced batch sits at ln 2 whatever the prompt; the head bias can still lower this loss.
    batch = {**tiny_batch(batch=4), "labels": torch.tensor([0, 1, 1, 1])}
    model.eval()  # no dropout: the loss before and after is measured on identical computations
    lr = registry.train_defaults(method).get("lr", 5e-5) * 4
    start, end = _two_steps(model, batch, lr)
    assert end < start, f"{method} on {family}: loss {start:.4f} -> {end:.4f}"


def test_length_grouping_defaults_to_the_task_and_a_setting_wins():
    from tuneforge import tasks
    from tuneforge.config import load_config
    from tuneforge.step_plan import group_by_length

    classification, causal_lm = tasks.get("classification"), tasks.get("causal_lm")
    cfg = load_config(None, {})
    assert group_by_length(cfg, classification) and not group_by_length(cfg, causal_lm)
    for value in (True, False):
        cfg = load_config(None, {"train": {"group_by_length": value}})
        assert group_by_length(cfg, classification) is value and group_by_length(cfg, causal_lm) is value


def test_an_equal_metric_is_better_only_at_a_clearly_lower_validation_loss():
    assert improves(0.5, 2.0, None, None, 1)  # the first evaluation
    assert improves(0.6, 9.0, 0.5, 1.0, 1) and not improves(0.4, 0.1, 0.5, 1.0, 1)  # the metric decides
    assert improves(0.5, 0.9, 0.5, 1.0, 1)  # a tie, 10 % lower loss
    assert not improves(0.5, 0.995, 0.5, 1.0, 1)  # a tie, loss only 0.5 % lower: a tiny step is no progress
    assert not improves(0.5, 1.1, 0.5, 1.0, 1) and not improves(0.5, None, 0.5, 1.0, 1)
    assert improves(8.0, 3.0, 9.0, 1.0, -1) and not improves(9.5, 0.1, 9.0, 1.0, -1)  # perplexity: lower is better


def test_early_stopping_waits_while_a_flat_metric_comes_with_a_falling_loss(tmp_path):
    """A tagger's entity F1 stays 0 while it still predicts only O; its falling validation loss keeps it going,
    and the best state is the last such step; a flat metric at a flat loss stops after ``patience``."""
    module, result = torch.nn.Linear(2, 2), TrainResult(best=BestWeights(tmp_path, True))
    evaluations = [(0.0, 2.0), (0.0, 1.5), (0.0, 1.2), (0.3, 1.0), (0.3, 1.0), (0.2, 0.9), (0.3, 0.995)]
    stops = []
    for step, (f1, loss) in enumerate(evaluations, 1):
        module.bias.data.fill_(step)  # the weights evaluated at this step
        stops.append(_record_evaluation(result, Logger(None, False), {"f1": f1, "loss": loss}, "f1", 1, step,
                                        module, 2))
    assert stops == [False] * 5 + [True, True]  # 4 improvements (3 of them ties of F1 0), then 2 bad ones
    assert (result.best_metric, result.best_step, result.best_loss) == (0.3, 4, 1.0)
    assert result.best_weights()["bias"].tolist() == [4.0, 4.0]  # step 4's weights, read back from their file
    assert [p.name for p in tmp_path.iterdir()] == [".best-4.safetensors"]  # the earlier bests were removed


@pytest.mark.parametrize("padding_free", [False, True])
def test_training_a_llama_runs_the_llama_style_paths(tmp_path, monkeypatch, padding_free):
    """fit switches in grouped eager attention, the hand-written RMSNorm and the fused rotation for a Llama
    model on a CPU (padded float32 rows: eager attention; packed float32 rows go through SDPA instead), and LoRA's
    stacked q/k/v and gate/up layers (the method's ``training`` context), and switches them out after: the model
    file's own rotation is back."""
    from lm_helpers import model_folder, write_pairs
    from transformers.models.llama import modeling_llama
    from tuneforge import grouped_attention, rms_norm, rotary
    from tuneforge.methods import lora_stack
    from tuneforge.run import train

    calls = {"attention": 0, "norm": 0, "rotation": 0, "stacked": 0}

    def counting(key, function):
        def counted(*args, **kwargs):
            calls[key] += 1
            return function(*args, **kwargs)
        return counted

    monkeypatch.setitem(grouped_attention.ALL_ATTENTION_FUNCTIONS, grouped_attention.GROUPED,
                        counting("attention", grouped_attention.attention))
    monkeypatch.setattr(rms_norm.RMSNormFunction, "apply", counting("norm", rms_norm.RMSNormFunction.apply))
    monkeypatch.setattr(rotary.Rotate, "apply", counting("rotation", rotary.Rotate.apply))
    monkeypatch.setattr(lora_stack.LoRAStack, "apply", counting("stacked", lora_stack.LoRAStack.apply))
    plain_rotation = modeling_llama.apply_rotary_pos_emb
    cfg = {"model": {"name": str(model_folder(tmp_path / "llama")), "task": "causal_lm"},
           "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))}, "method": {"name": "lora"},
           "train": {"max_steps": 2, "batch_size": 4, "precision": "fp32", "padding_free": padding_free},
           "eval": {"before": False, "generate_samples": 0}, "forgetting": {"probes": ["none"]},
           "output_dir": str(tmp_path / "run")}
    train(cfg, progress=False)
    assert calls["norm"] > 0 and calls["rotation"] > 0 and calls["stacked"] > 0
    assert (calls["attention"] > 0) == (not padding_free)
    assert modeling_llama.apply_rotary_pos_emb is plain_rotation


def test_every_training_step_runs_in_training_mode_after_evaluations(tmp_path, monkeypatch):
    """Evaluation switches the model to eval mode; the steps after it train with dropout on again."""
    from lm_helpers import model_folder, write_pairs
    from tuneforge.run import train
    from tuneforge.tasks import causal_lm

    modes = []
    plain_loss = causal_lm.Task.loss

    def recording(self, model, batch, *args, **kwargs):
        if torch.is_grad_enabled():  # a training step (evaluation runs without gradients)
            modes.append(model.training)
        return plain_loss(self, model, batch, *args, **kwargs)

    monkeypatch.setattr(causal_lm.Task, "loss", recording)
    cfg = {"model": {"name": str(model_folder(tmp_path / "llama")), "task": "causal_lm"},
           "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))}, "method": {"name": "lora"},
           "train": {"max_steps": 3, "batch_size": 4, "eval_every": 1, "precision": "fp32"},
           "eval": {"before": False, "generate_samples": 0}, "forgetting": {"probes": ["none"]},
           "output_dir": str(tmp_path / "run")}
    train(cfg, progress=False)
    assert modes == [True, True, True]


def test_the_learning_rate_logged_at_a_step_is_the_one_it_trained_at(tmp_path):
    """log.jsonl had the next step's rate: the peak never showed and the last step looked like lr 0."""
    import json

    import pandas as pd

    from lm_helpers import single_thread
    from tiny import model_dir, sentiment_rows
    from tuneforge.run import train

    pd.DataFrame(sentiment_rows(40)).to_csv(tmp_path / "d.csv", index=False)
    cfg = {"model": {"name": str(model_dir(tmp_path / "bert", "bert")), "max_length": 32},
           "data": {"dataset": str(tmp_path / "d.csv")}, "method": {"name": "lora", "rank": 2},
           "train": {"max_steps": 4, "batch_size": 8, "precision": "fp32", "lr": 1e-3, "schedule": "linear",
                     "warmup_ratio": 0.0, "log_every": 1}, "eval": {"before": False}, "output_dir": str(tmp_path / "r")}
    with single_thread():
        train(cfg, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [round(r["lr"], 8) for r in logged if "lr" in r] == [1e-3, 7.5e-4, 5e-4, 2.5e-4]
