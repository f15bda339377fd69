"""Defaults that work on a first small data set: the automatic training length, per-task learning rates, and the
warning when nothing was learned."""
import json

import pandas as pd
import pytest

from tiny import model_dir, sentiment_rows
from tuneforge import distributed
from tuneforge.config import load_config
from tuneforge.methods import adapter, registry
from tuneforge.run import resolve_config, train
from tuneforge.step_plan import StepPlan
from tuneforge.train import improves


def _plan(n: int, **train_opts) -> StepPlan:
    cfg = load_config(None, {"train": {"batch_size": 32, **train_opts}})
    return StepPlan([10] * n, cfg, True, distributed.Dist())


@pytest.mark.parametrize("n, epochs, steps", [
    (1_200, 7, 7 * 38),  # small: 38 steps per epoch -> enough epochs for 250 steps
    (400, 20, 20 * 13),  # smaller: 13 steps per epoch -> 20 epochs
    (200, 30, 30 * 7),  # tiny: capped at auto_max_epochs
    (8_000, 1, 250),  # large: one epoch already holds 250 steps
    (20_000, 1, 625),  # larger: still one whole epoch, no wasted passes
])
def test_automatic_length_gives_the_documented_steps(n, epochs, steps):
    plan = _plan(n)
    assert plan.auto and plan.total == steps and plan.total == epochs * plan.per_epoch
    assert plan.describe() == f"training {epochs} epoch{'s' if epochs > 1 else ''} = {steps:,} steps (auto: {n:,} examples)"


def test_explicit_epochs_or_steps_win_over_the_automatic_length():
    assert _plan(1_200, epochs=1).total == 38 and not _plan(1_200, epochs=1).auto
    assert _plan(1_200, max_steps=5).total == 5
    assert _plan(1_200, epochs=1, max_steps=5).total == 5  # max_steps overrides epochs
    assert _plan(1_200, auto_min_steps=76).total == 76  # the automatic rule's own knobs
    assert _plan(100, auto_max_epochs=2).total == 2 * 4


def test_learning_rates_are_declared_per_method_and_task():
    for method in registry.names():
        for task in ("classification", "causal_lm", "token_classification"):
            lr = registry.train_defaults(method, task)["lr"]
            assert 0 < lr < 1
            cfg = resolve_config({"model": {"task": task}, "method": {"name": method}})
            assert cfg.train.lr == lr  # what a run without train.lr uses
    assert resolve_config({"method": {"name": "lora"}, "train": {"lr": 0.123}}).train.lr == 0.123  # explicit wins


@pytest.mark.parametrize("config", [
    {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12},
    {"model_type": "gpt2", "n_embd": 768, "n_layer": 12},  # each family spells width and depth its own way
    {"model_type": "distilbert", "dim": 768, "n_layers": 12},
    {"model_type": "t5", "d_model": 768, "num_layers": 12},
    {"model_type": "llava", "text_config": {"hidden_size": 768, "num_hidden_layers": 12}},  # the text model's
    {"model_type": "custom", "auto_map": {"AutoConfig": "x.Config"}, "hidden_size": 768, "num_hidden_layers": 12},
])
def test_a_rate_declared_per_model_shape_reads_the_runs_model(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))  # config.json is all the rule reads
    run = {"model": {"name": str(tmp_path)}, "method": {"name": "adapter"}}
    assert resolve_config(run).train.lr == adapter.default_lr((768, 12)) < 3e-3
    assert resolve_config({**run, "train": {"lr": 3e-3}}).train.lr == 3e-3  # an explicit rate wins
    assert resolve_config({**run, "method": {"name": "lora"}}).train.lr == registry.train_defaults("lora")["lr"]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"hidden_size": 768}', '{"hidden_size": "768", "n_layer": 2}'])
def test_a_model_of_unknown_shape_gets_the_reference_rate(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    assert registry.train_defaults("adapter", "classification", str(tmp_path))["lr"] == 3e-3
    assert registry.train_defaults("adapter", "classification", str(tmp_path / "missing"))["lr"] == 3e-3


@pytest.mark.parametrize("train_opts, head_lr", [
    ({"lr": 5e-5}, 3e-3),  # a fresh head at the 3e-3 floor, the body at its own rate
    ({"lr": 1e-2}, 1e-2),  # a rate above the floor takes the head with it
    ({"lr": 0.0}, 0.0),  # lr 0 trains nothing, the head included
    ({"lr": 5e-5, "head_lr": 1e-4}, 1e-4),  # an explicit head rate wins
    ({"lr": 5e-5, "head_lr": 0}, 0.0),
])
def test_a_fresh_head_defaults_to_its_own_floor_rate(train_opts, head_lr):
    cfg = resolve_config({"method": {"name": "full"}, "train": train_opts})
    assert cfg.train.head_lr == head_lr and cfg.train.lr == train_opts["lr"]
    assert resolve_config({"method": {"name": "full"}}).train.head_lr == max(registry.train_defaults("full")["lr"], 3e-3)


def test_a_method_may_declare_its_own_head_floor_per_task(monkeypatch):
    module = registry.get("bitfit")
    monkeypatch.setattr(module, "TRAIN_DEFAULTS", {"lr": 3e-3, "head_lr": {"classification": 9e-3}})

    def head(task: str, **train) -> float:
        return resolve_config({"model": {"task": task}, "method": {"name": "bitfit"}, "train": train}).train.head_lr

    assert head("classification") == 9e-3  # the declared floor, above the method's rate
    assert head("classification", lr=2e-2) == 2e-2  # a higher rate takes the head with it
    assert head("classification", head_lr=1e-3) == 1e-3  # an explicit head rate wins
    assert head("classification", lr=0.0) == 0.0  # lr 0 trains nothing
    assert head("token_classification") == 3e-3  # a task the method declares nothing for: the common floor


def test_the_pooler_default_is_declared_per_method_and_an_explicit_setting_wins():
    on = {m for m in registry.names() if resolve_config({"method": {"name": m}}).train.pooler_with_head}
    assert on == {m for m in registry.names() if registry.train_defaults(m).get("pooler_with_head")}
    assert {"adapter", "p-tuning"} <= on and "prompt" not in on  # measured: docs/benchmarks.md
    assert resolve_config({"method": {"name": "adapter"}, "train": {"pooler_with_head": False}}).train.pooler_with_head \
        is False


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    pd.DataFrame(sentiment_rows(200)).to_csv(root / "d.csv", index=False)
    return root, model_dir(root / "bert", "bert")


def _run(root, bert, name, **train_opts):
    cfg = {"model": {"name": str(bert), "max_length": 32}, "data": {"dataset": str(root / "d.csv")},
           "method": {"name": "lora"}, "train": {"precision": "fp32", "batch_size": 16, **train_opts},
           "output_dir": str(root / name)}
    return train(cfg, progress=False)


def test_nothing_learned_is_said_in_one_line_and_a_learning_run_is_quiet(setup, capsys):
    root, bert = setup
    frozen = _run(root, bert, "lr0", lr=0.0, epochs=2)
    warning = frozen.metrics["warning"]
    assert warning and ("learned little" in warning or "did not clearly fall" in warning)
    assert f"warning: {frozen.metrics['warning']}" in frozen.table
    assert "train.lr" in frozen.metrics["warning"] and "\n" not in frozen.metrics["warning"]
    assert f"warning: {frozen.metrics['warning']}" in capsys.readouterr().err
    learned = _run(root, bert, "learned", lr=5e-3, epochs=3)
    assert learned.metrics["test_after"]["accuracy"] > 0.8 and learned.metrics["warning"] is None
    assert "warning" not in learned.table


def _evaluations(run_dir):
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in log if "val_accuracy" in r]


def _best(evals):
    """Index of the last evaluation better than every earlier one (equal accuracy: a clearly lower loss)."""
    best = 0
    for i in range(1, len(evals)):
        e, b = evals[i], evals[best]
        best = i if improves(e["val_accuracy"], e["val_loss"], b["val_accuracy"], b["val_loss"], 1) else best
    return best


def test_the_automatic_length_validates_each_epoch_and_keeps_the_best(setup):
    root, bert = setup
    out = _run(root, bert, "auto", lr=5e-3, auto_min_steps=100, auto_max_epochs=20)
    m = out.metrics
    per_epoch = -(-m["examples"]["train"] // 16)
    planned = -(-100 // per_epoch) * per_epoch
    evals = _evaluations(root / "auto")
    assert [r["step"] for r in evals] == [per_epoch * (i + 1) for i in range(planned // per_epoch)]  # each epoch
    assert m["steps"] == planned  # the whole plan: no early stop on a plateau it might still leave
    assert m["best_validation"]["step"] == evals[_best(evals)]["step"]  # the best evaluation's weights are kept


def test_early_stopping_when_asked_ends_the_automatic_length(setup):
    root, bert = setup
    # lr 0: no evaluation improves on the first, whatever the dropout masks (a learning run's stopping point
    # depends on them: at near-zero validation loss each evaluation may still be 1 % lower)
    out = _run(root, bert, "auto-es", lr=0.0, auto_min_steps=100, auto_max_epochs=20, early_stopping=2)
    m = out.metrics
    per_epoch = -(-m["examples"]["train"] // 16)
    evals = _evaluations(root / "auto-es")
    assert m["steps"] == 3 * per_epoch < -(-100 // per_epoch) * per_epoch  # the plan is 10 epochs ...
    assert len(evals) - 1 - _best(evals) == 2 and _best(evals) == 0  # ... 2 evaluations without improvement end it
    assert m["best_validation"]["step"] == evals[_best(evals)]["step"]


def test_the_plan_line_names_early_stopping_when_it_applies():
    assert _plan(1_200).describe(3) == "training 7 epochs = 266 steps (auto: 1,200 examples; stops after 3 " \
        "evaluations without improvement)"


def test_the_plan_line_counts_the_training_examples_once_under_torchrun():
    """Every rank holds the whole training split (each takes its batch of a step): 1,200 examples, not 2,400."""
    cfg = load_config(None, {"train": {"batch_size": 32}})
    two = StepPlan([10] * 1_200, cfg, True, distributed.Dist(rank=0, world=2))
    assert two.describe() == "training 14 epochs = 266 steps (auto: 1,200 examples)"  # 2 x 32 examples a step


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from lm_helpers import model_folder, write_pairs

    root = tmp_path_factory.mktemp("defaults-lm")
    return root, model_folder(root / "llama", "llama"), write_pairs(root / "pairs.jsonl")


def _lm_run(lm, name, progress=False, split=(0.8, 0.1, 0.1), **train_opts):
    root, folder, pairs = lm
    cfg = {"model": {"name": str(folder), "task": "causal_lm", "max_length": 32}, "data": {"dataset": str(pairs),
                                                                                       "split": list(split)},
           "method": {"name": "lora", "rank": 4}, "eval": {"generate_samples": 0},
           "forgetting": {"probes": ["none"]},
           "train": {"precision": "fp32", "batch_size": 8, "lr": 0.0, "auto_min_steps": 80, "auto_max_epochs": 20,
                     **train_opts}, "output_dir": str(root / name)}
    out = train(cfg, progress=progress)
    log = [json.loads(line) for line in (root / name / "log.jsonl").read_text().splitlines()]
    return out.metrics, -(-out.metrics["examples"]["train"] // 8), [r for r in log if "val_loss" in r]


def test_causal_lm_stops_early_under_the_automatic_length_only(lm):
    # lr 0: the validation loss never falls below the first evaluation's
    m, per_epoch, evals = _lm_run(lm, "auto")
    assert -(-80 // per_epoch) > 4  # the plan is longer than 1 + 3 evaluations ...
    assert m["steps"] == 4 * per_epoch and len(evals) == 4  # ... 3 epochs without a lower loss end it
    m, per_epoch, evals = _lm_run(lm, "explicit-patience", early_stopping=1)  # an explicit setting wins
    assert m["steps"] == 2 * per_epoch and len(evals) == 2
    m, per_epoch, evals = _lm_run(lm, "epochs", epochs=6)  # explicit epochs: the whole length
    assert m["steps"] == 6 * per_epoch and len(evals) == 6
    m, per_epoch, evals = _lm_run(lm, "never", early_stopping=0)  # off: the automatic plan, whole (0 was refused
    assert m["steps"] == -(-80 // per_epoch) * per_epoch  # and null meant the default of 3)


def test_early_stopping_says_where_it_ended_the_run(lm, capsys):
    m, per_epoch, _ = _lm_run(lm, "said", progress=True)
    assert f"early stopping at step {4 * per_epoch} of {-(-80 // per_epoch) * per_epoch}: validation loss did not " \
        f"improve for 3 evaluations; the best, step {per_epoch}, is kept" in capsys.readouterr().err


def test_a_fractional_epoch_count_is_not_rounded_up_past_its_steps():
    """0.28 x 25 steps is 7.000000000000001 in floating point: 8 steps were planned."""
    cfg = load_config(None, {"train": {"batch_size": 4, "epochs": 0.28}})
    assert StepPlan([10] * 100, cfg, True, distributed.Dist(rank=0, world=1)).total == 7


def test_the_plan_line_promises_early_stopping_only_where_validation_can_stop_the_run(lm, capsys):
    _lm_run(lm, "plan-explicit", progress=True, max_steps=2, early_stopping=2)
    assert "; stops after 2 evaluations without improvement)" in capsys.readouterr().err
    _lm_run(lm, "plan-auto", progress=True, auto_min_steps=1, auto_max_epochs=1)
    assert "; stops after 3 evaluations without improvement)" in capsys.readouterr().err
    _lm_run(lm, "plan-no-validation", progress=True, split=(0.9, 0.0, 0.1), auto_min_steps=1, auto_max_epochs=1)
    assert "stops after" not in capsys.readouterr().err
