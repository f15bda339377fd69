"""Forgetting inside runs: sequential task-1 measurement, EWC / L2-SP in the loop, replay and augmentation."""
import pandas as pd
import pytest

from tiny import model_dir, sentiment_rows
from tuneforge.config import ConfigError
from tuneforge.run import load, train

TOPICS = {"sport": "ball game team score", "food": "bread soup cook taste", "tech": "code computer data disk"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fz")
    folder = model_dir(root / "bert", "bert")
    pd.DataFrame(sentiment_rows(120)).to_csv(root / "sentiment.csv", index=False)
    topics = [{"text": f"the {TOPICS[t].split()[i % 4]} story {i}", "label": t} for i in range(90) for t in [list(TOPICS)[i % 3]]]
    pd.DataFrame(topics).to_csv(root / "topics.csv", index=False)
    base = {"model": {"name": str(folder), "max_length": 32}, "train": {"precision": "fp32", "batch_size": 16}}
    task1 = train({**base, "data": {"dataset": str(root / "sentiment.csv")}, "method": {"name": "full"},
                   "train": {**base["train"], "epochs": 2, "lr": 1e-3}, "output_dir": str(root / "task1")}, progress=False)
    return root, base, task1


def _task2(root, base, task1, name, method="full", **forgetting):
    cfg = {**base, "data": {"dataset": str(root / "topics.csv")}, "method": {"name": method},
           "train": {**base["train"], "max_steps": 4, "lr": 1e-3}, "output_dir": str(root / name),
           "forgetting": {"previous_run": str(task1.run_dir), **forgetting}}
    return train(cfg, progress=False).metrics


def test_sequential_run_measures_task1_with_its_own_head(setup):
    root, base, task1 = setup
    m = _task2(root, base, task1, "seq")
    f = m["forgetting"]
    assert f["metric"] == "accuracy" and f["before"] == pytest.approx(task1.metrics["test_after"]["accuracy"], abs=0.02)
    assert f["change"] == pytest.approx(f["after"] - f["before"])
    assert m["test_after"]["n"] > 0 and len(m["test_after"]["per_class"]) == 3  # task 2 has its own 3-label head


def test_validation_side_task1_probe_measures_task1_validation_split(setup):
    root, base, task1 = setup
    f = _task2(root, base, task1, "seq-val", probe_split="validation")["forgetting"]
    run = load(task1.run_dir, device="cpu")
    direct = run.task.evaluate(run.model, run.prepared().validation, run.rt, run.cfg, run.meta)["accuracy"]
    assert "validation" in f["reference"] and f["before"] == pytest.approx(direct, abs=1e-6)
    from tuneforge.forgetting.probes import task1_probe
    ids = lambda examples: [e["input_ids"] for e in examples]  # noqa: E731
    for split, rows in (("validation", run.prepared().validation), ("test", run.prepared().test)):
        assert ids(task1_probe(run, run.heads, run.rt, split).examples) == ids(rows)


def _moved(run_dir, task1_dir, weights=None):
    """Squared distance of a full run's backbone weights to task 1's (heads excluded), optionally weighted
    per weight (EWC: by the Fisher information of task 1)."""
    from safetensors.torch import load_file

    a, b = load_file(run_dir / "model" / "model.safetensors"), load_file(task1_dir / "model" / "model.safetensors")
    keys = [k for k in a if k in b and not k.startswith("classifier")]
    return sum(float(((a[k] - b[k]).pow(2) * (weights[k] if weights else 1)).sum()) for k in keys)


def _task1_fisher(task1):
    """Task 1's diagonal Fisher on its training split (what EWC weights its penalty with)."""
    from tuneforge.data.batching import collate
    from tuneforge.forgetting.probes import mean_loss
    from tuneforge.forgetting.regularize import estimate_fisher

    run = load(task1.run_dir, device="cpu")
    for p in run.model.parameters():
        p.requires_grad_(True)
    batches = [collate([e], run.rt.pad_id) for e in run.prepared().train[:16]]
    return estimate_fisher(run.model, lambda m, b: mean_loss(run.task, m, b), batches)


@pytest.mark.parametrize("kind", ["l2sp", "ewc"])
def test_regularised_sequential_runs_stay_closer_to_task1(setup, kind):
    root, base, task1 = setup
    free = _task2(root, base, task1, f"free-{kind}")
    reg = _task2(root, base, task1, f"reg-{kind}", regularize={"kind": kind, "strength": 1e4, "fisher_batches": 8})
    assert reg["forgetting"]["after"] is not None and free["steps"] == reg["steps"]
    weights = _task1_fisher(task1) if kind == "ewc" else None  # the distance each penalty measures
    moved_free = _moved(root / f"free-{kind}", task1.run_dir, weights)
    moved_reg = _moved(root / f"reg-{kind}", task1.run_dir, weights)
    assert moved_reg < 0.7 * moved_free, (kind, moved_reg, moved_free)  # the penalty pulls toward the anchor


def test_sequential_lora_run_reloads_on_task1_weights_and_leaves_no_temporary_model(setup, tmp_path, monkeypatch):
    root, base, task1 = setup
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the merged task-1 model is written
    monkeypatch.chdir(root)  # a relative previous_run is stored absolute: the run reloads from anywhere
    cfg = {**base, "data": {"dataset": str(root / "topics.csv")}, "method": {"name": "lora"},
           "train": {**base["train"], "max_steps": 4, "lr": 1e-2}, "output_dir": str(root / "seq-lora"),
           "forgetting": {"previous_run": task1.run_dir.name}}
    result = train(cfg, progress=False)
    monkeypatch.chdir(tmp_path)
    run = load(result.run_dir)
    assert run.cfg.forgetting.previous_run == str(task1.run_dir.resolve())
    # LoRA's saved weights sit on task 1's merged backbone, not on the original model
    assert run.evaluate()["loss"] == pytest.approx(result.metrics["test_after"]["loss"], abs=1e-5)
    assert list(tmp_path.iterdir()) == []  # the merged task-1 folders were removed
    from tuneforge.export import export_peft  # PEFT would load the adapter on the original model, not task 1's
    with pytest.raises(ConfigError, match=r"started from the merged model of .*task1 \(forgetting.previous_run\).*"
                                          r"use `tuneforge merge RUN OUT`"):
        export_peft(run, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_ewc_fisher_uses_task1_training_data_not_its_test_split(setup, monkeypatch):
    root, base, task1 = setup
    seen = {}
    from tuneforge.forgetting import pipeline
    probe_fn = pipeline.task1_probe

    def spy(*args, **kwargs):
        probe = probe_fn(*args, **kwargs)
        seen["test"] = {tuple(e["input_ids"]) for e in probe.examples}
        seen["fisher"] = {tuple(e["input_ids"]) for e in probe.fisher_examples}
        return probe

    monkeypatch.setattr(pipeline, "task1_probe", spy)
    _task2(root, base, task1, "ewc-data", regularize={"kind": "ewc", "strength": 1.0, "fisher_batches": 4})
    assert len(seen["fisher"]) > len(seen["test"]) > 0 and not seen["fisher"] & seen["test"]


def test_regularisation_refuses_methods_that_train_no_pretrained_weight(setup):
    root, base, task1 = setup
    with pytest.raises(ConfigError, match="no trainable pre-trained parameter"):
        _task2(root, base, task1, "reg-lora", method="lora", regularize={"kind": "l2sp"})


def test_replay_and_augmentation_grow_the_training_split(setup, capsys):
    root, base, _ = setup
    cfg = {**base, "data": {"dataset": str(root / "sentiment.csv")}, "train": {**base["train"], "max_steps": 1}}
    plain = train({**cfg, "output_dir": str(root / "plain")}, progress=False).metrics["examples"]["trained_per_epoch"]
    replay = train({**cfg, "output_dir": str(root / "replay"),
                    "forgetting": {"replay": {"data": str(root / "sentiment.csv"), "ratio": 0.5}}}, progress=False)
    assert replay.metrics["examples"]["trained_per_epoch"] == 2 * plain  # ratio 0.5: as many replay as task examples
    capsys.readouterr()
    named = train({**cfg, "output_dir": str(root / "named"),  # replay data without a ratio: said, not silent
                   "forgetting": {"replay": {"data": str(root / "sentiment.csv")}}}, progress=False)
    assert named.metrics["examples"]["trained_per_epoch"] == plain
    assert "forgetting.replay.ratio is 0, so nothing is replayed" in capsys.readouterr().err
    aug = train({**cfg, "output_dir": str(root / "aug"), "forgetting": {"augment": {"copies": 2}}}, progress=False)
    assert aug.metrics["examples"]["trained_per_epoch"] == 3 * plain
    assert aug.metrics["examples"]["train"] == replay.metrics["examples"]["train"] == plain  # the split itself


def test_interpolation_moves_the_trained_backbone_back_toward_its_start(setup):
    from safetensors.torch import load_file

    root, base, task1 = setup
    trained = _task2(root, base, task1, "keep-all")
    half = _task2(root, base, task1, "keep-half", interpolate=0.5)
    a, t, s = (load_file(d / "model" / "model.safetensors") for d in (root / "keep-half", root / "keep-all",
                                                                        task1.run_dir))
    backbone = [k for k in a if k in s and not k.startswith("classifier")]
    assert backbone and any(not (t[k] == s[k]).all() for k in backbone)
    for k in backbone:  # WiSE-FT: start + 0.5 * (trained - start), the start being task 1's weights
        assert (a[k] - (s[k] + 0.5 * (t[k] - s[k]))).abs().max() < 1e-5, k
    for k in (k for k in a if k.startswith("classifier")):  # the fresh head is left as trained
        assert (a[k] - t[k]).abs().max() < 1e-6, k
    # the reported validation metric is the interpolated model's; the trained one's is kept beside it
    best = half["best_validation"]
    assert best["trained"] == pytest.approx(trained["best_validation"]["accuracy"]) and best["interpolate"] == 0.5
    run = load(root / "keep-half", device="cpu")
    direct = run.task.evaluate(run.model, run.prepared().validation, run.rt, run.cfg, run.meta)["accuracy"]
    assert best["accuracy"] == pytest.approx(direct, abs=1e-6)
    assert half["test_after"]["accuracy"] == pytest.approx(run.evaluate()["accuracy"], abs=1e-6)
    assert "| validation accuracy: trained / interpolated (keep 0.5) |" in (root / "keep-half" / "results.md").read_text()


def test_a_sequential_run_names_task1s_model_and_refuses_another(setup, tmp_path):
    from tuneforge.run import resolve_config

    root, base, task1 = setup
    cfg = {"data": {"dataset": str(root / "topics.csv")}, "forgetting": {"previous_run": str(task1.run_dir)}}
    assert resolve_config(cfg).model.name == base["model"]["name"]  # left at its default: task 1's model
    with pytest.raises(ConfigError, match=r"model.name=smollm2, but forgetting.previous_run .* was trained from .*bert "
                                          r"and this run starts from its model; leave model.name out"):
        resolve_config({**cfg, "model": {"name": "smollm2"}})


def test_a_previous_run_that_is_missing_or_of_another_task_is_named(setup, tmp_path):
    from tuneforge.loaded import start_model
    from tuneforge.run import resolve_config

    root, base, task1 = setup
    cfg = {"data": {"dataset": str(root / "topics.csv")}, "forgetting": {"previous_run": str(tmp_path / "nowhere")}}
    with pytest.raises(ConfigError, match=r"^forgetting.previous_run: run directory .*nowhere does not exist"):
        with start_model(resolve_config(cfg)):
            pass
    other = {**cfg, "model": {"task": "token_classification"}, "forgetting": {"previous_run": str(task1.run_dir)}}
    with pytest.raises(ConfigError, match=r"same task \(model.task\): it is a classification run, this one "
                                          r"token_classification$"):
        with start_model(resolve_config(other)):
            pass


def test_a_task1_run_that_cannot_merge_is_named_as_the_previous_run(setup):
    root, base, _ = setup
    task1 = train({**base, "data": {"dataset": str(root / "sentiment.csv")}, "method": {"name": "adapter"},
                   "train": {**base["train"], "max_steps": 2}, "output_dir": str(root / "task1-adapter")},
                  progress=False)
    with pytest.raises(ConfigError, match=r"^forgetting.previous_run: a sequential run starts from task 1's merged "
                                          r"model, and method 'adapter' cannot be merged into the base weights .*; "
                                          r"train task 1 with a method that merges"):
        _task2(root, base, task1, "after-adapter")


def test_replaying_an_earlier_tasks_labels_is_named_as_replay(setup):
    root, base, task1 = setup  # task 2's head knows the topics, not task 1's sentiment labels
    with pytest.raises(ConfigError, match=r"^forgetting.replay.data: .*sentiment.csv, row 1: label '.*' .*was not seen "
                                          r"in training.*; replayed examples train this run's head, so they need its "
                                          r"labels$"):
        _task2(root, base, task1, "replay-task1", replay={"data": str(root / "sentiment.csv"), "ratio": 0.5})


@pytest.mark.parametrize("probes", [["none"], ["own_answers"]])
def test_probes_beside_a_previous_run_are_refused(setup, probes):
    root, base, task1 = setup  # task 1's own test data is what a sequential run measures
    with pytest.raises(ConfigError, match=r"^forgetting.probes=\[.*\]: a sequential run \(forgetting.previous_run\) "
                                          r"measures forgetting on task 1's own test data; leave forgetting.probes out"):
        _task2(root, base, task1, f"probes-{probes[0]}", probes=probes)


@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
def test_a_sequential_text_task_measures_task1s_perplexity(task, tmp_path):
    """Task 1's test perplexity before and after task 2 (a task whose metric is its loss): it had looked up an
    accuracy and stopped with a KeyError once task 1 was merged."""
    import json

    from lm_helpers import model_folder, seq2seq_folder, write_pairs, write_sources

    folder = seq2seq_folder(tmp_path / "m", "t5") if task == "seq2seq" else model_folder(tmp_path / "m")
    data = (write_sources if task == "seq2seq" else write_pairs)(tmp_path / "task1.jsonl")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    answer = "target" if task == "seq2seq" else "output"
    (tmp_path / "task2.jsonl").write_text("".join(json.dumps({**r, answer: "yes ."}) + "\n" for r in rows))
    base = {"model": {"name": str(folder), "task": task, "max_length": 32}, "method": {"name": "lora", "rank": 4},
            "train": {"epochs": 3, "batch_size": 8, "lr": 1e-2, "precision": "fp32"},
            "eval": {"generate_samples": 0}}
    task1 = train({**base, "data": {"dataset": str(data)}, "output_dir": str(tmp_path / "task1")}, progress=False)
    task2 = train({**base, "data": {"dataset": str(tmp_path / "task2.jsonl")}, "output_dir": str(tmp_path / "task2"),
                   "forgetting": {"previous_run": str(task1.run_dir)}}, progress=False)
    f = task2.metrics["forgetting"]
    assert f["metric"] == "perplexity" and f["unit"] == "%" and f["reference"].endswith("test perplexity")
    assert f["before"] == pytest.approx(task1.metrics["test_after"]["perplexity"], rel=1e-4)  # task 1's merged model
    run = load(task2.run_dir, device="cpu")  # after: task 2's model on task 1's test rows
    after = run.task.evaluate(run.model, load(task1.run_dir, device="cpu").prepared().test, run.rt, run.cfg, run.meta)
    assert f["after"] == pytest.approx(after["perplexity"], rel=1e-4) and f["after"] != f["before"]


def test_a_sequential_tagger_measures_task1s_entity_f1(tmp_path):
    """Task 1's entity F1 (points) with its own head: it had looked up an accuracy (KeyError) as well."""
    import random

    def conll(path, kinds):
        rng, lines = random.Random(str(path)), []
        for _ in range(90):
            words = [rng.choice(["the", "a", "film", "is", "w1", "w2", "w3"]) for _ in range(6)]
            lines += [f"{w}\t{'B-' + kinds[w] if w in kinds else 'O'}" for w in words] + [""]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    folder = model_dir(tmp_path / "bert", "bert", dropout=0.0)
    base = {"model": {"name": str(folder), "task": "token_classification", "max_length": 16},
            "method": {"name": "lora", "rank": 4}, "train": {"epochs": 3, "batch_size": 16, "lr": 1e-2,
                                                             "precision": "fp32"}}
    task1 = train({**base, "data": {"dataset": conll(tmp_path / "a.conll", {"w1": "per", "w2": "loc"})},
                   "output_dir": str(tmp_path / "task1")}, progress=False)
    task2 = train({**base, "data": {"dataset": conll(tmp_path / "b.conll", {"w3": "org"})},
                   "forgetting": {"previous_run": str(task1.run_dir)}, "output_dir": str(tmp_path / "task2")},
                  progress=False)
    f = task2.metrics["forgetting"]
    assert f["metric"] == "f1" and f["unit"] == "points" and f["reference"].endswith("test f1")
    assert f["before"] == pytest.approx(task1.metrics["test_after"]["f1"], abs=1e-9) and f["before"] > 0.5


@pytest.mark.parametrize("task, overrides, message", [
    ("classification", ["forgetting.probes=[sentiment]"],
     r"forgetting.probes: sentiment needs a causal LM; a classification run measures forgetting with "
     r"forgetting.previous_run \(a sequential run\)$"),  # it used to advise forgetting.reference too
    ("seq2seq", ["forgetting.probes=[own_answers]"],
     r"own_answers needs a causal LM; a seq2seq run measures forgetting with forgetting.previous_run \(a sequential "
     r"run\) or forgetting.reference$"),
    ("classification", ["forgetting.reference=rotten_tomatoes"],  # read, then silently unused
     r"forgetting.reference measures perplexity, which a classification run does not report"),
    ("token_classification", ["forgetting.probes=[reference]"], "which a token_classification run does not report"),
    ("causal_lm", ["forgetting.reference=chitchat", "forgetting.probes=[own_answers]"],
     r"forgetting.reference is set, but forgetting.probes=\['own_answers'\] leaves the reference probe out"),
    ("causal_lm", ["forgetting.probes=[reference,none]"], "'none' turns the probes off, so it cannot go with reference"),
    ("classification", ["forgetting.previous_run=/nowhere", "forgetting.reference=chitchat"],
     r"forgetting.reference: a sequential run .* leave forgetting.reference out$"),
    ("token_classification", ["forgetting.regularize.kind=ewc", "forgetting.regularize.strength=10"],
     r"ewc estimates its Fisher .* set forgetting.previous_run \(a sequential run\)$"),
    ("causal_lm", ["model.name=/some/llama", "forgetting.regularize.kind=ewc", "forgetting.regularize.strength=1"],
     r"ewc estimates its Fisher on reference data or on task 1's, and this run has neither"),  # own answers: none
    ("causal_lm", ["model.name=/some/llama", "forgetting.probes=[reference]"],  # silently measured nothing
     "forgetting.probes names reference, but this run has no reference data: set forgetting.reference"),
    ("causal_lm", ["forgetting.probes=[auto,reference]"], "'auto' stands for the task's own probes, so it cannot go"),
])
def test_probe_settings_a_task_cannot_measure_are_refused_before_anything_loads(task, overrides, message):
    from tuneforge import tasks
    from tuneforge.config import load_config
    from tuneforge.forgetting.pipeline import check_probes
    with pytest.raises(ConfigError, match=message):
        check_probes(load_config(None, [f"model.task={task}", *overrides]), tasks.get(task))


@pytest.mark.parametrize("task, overrides", [
    ("causal_lm", ["forgetting.reference=chitchat"]), ("seq2seq", ["forgetting.reference=chitchat"]),
    ("causal_lm", ["forgetting.reference=chitchat", "forgetting.probes=[reference,own_answers]"]),
    ("classification", []), ("classification", ["forgetting.reference=none"]),
    ("token_classification", ["forgetting.previous_run=/nowhere"]),
    ("causal_lm", ["forgetting.reference=chitchat", "forgetting.probes=[none]"]),  # quick runs: no probe at all
    ("causal_lm", ["forgetting.reference=chitchat", "forgetting.probes=[]"]),
    ("causal_lm", ["forgetting.reference=chitchat", "forgetting.regularize.kind=ewc", "forgetting.regularize.strength=1"]),
    ("causal_lm", ["model.name=/some/llama", "forgetting.reference=none"]),  # auto: the reference probe is off
    ("seq2seq", ["forgetting.reference=none"]), ("causal_lm", ["forgetting.reference=none"]),
])
def test_probe_settings_a_task_measures_pass(task, overrides):
    from tuneforge import tasks
    from tuneforge.config import load_config
    from tuneforge.forgetting.pipeline import check_probes
    check_probes(load_config(None, [f"model.task={task}", *overrides]), tasks.get(task))


@pytest.mark.parametrize("key", ["forgetting.replay.data", "forgetting.reference"])
def test_replay_and_reference_data_errors_name_their_setting(tmp_path, key):
    from tuneforge import tasks
    from tuneforge.config import load_config
    from tuneforge.forgetting.pipeline import check_sources
    (tmp_path / "other.csv").write_text("review,stars\ngood,5\n")
    extra = ["forgetting.replay.ratio=0.2"] if key.startswith("forgetting.replay") else []
    for name, problem in (("nope.csv", "does not exist"), ("other.csv", "column 'text' not found")):
        cfg = load_config(None, ["model.task=causal_lm", "data.format=text", f"{key}={tmp_path / name}", *extra])
        with pytest.raises(ConfigError, match=f"^{key}: .*{problem}"):
            check_sources(cfg, tasks.get("causal_lm"))


def test_a_probed_sentence_is_matched_in_any_text_field_of_a_replay_row():
    """An Alpaca row holds the sentence in ``input``, and its rendered user turn wraps it in the instruction."""
    from tuneforge import tasks
    from tuneforge.config import load_config
    from tuneforge.data.dataset import normalise
    from tuneforge.forgetting.pipeline import keys_of
    cfg = load_config(None, ["model.task=causal_lm"])
    alpaca = {"instruction": "Classify the sentiment.", "input": "A  fine film.", "output": "positive"}
    chat = {"messages": [{"role": "user", "content": "A fine film."}, {"role": "assistant", "content": "yes"}]}
    for row in (alpaca, chat):
        assert normalise("A fine film.") in keys_of(tasks.get("causal_lm"), row, cfg)
