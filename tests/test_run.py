"""End to end on tiny model folders: train -> run directory -> reload -> predict/evaluate/merge; bad input."""
import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import tuneforge
from tiny import model_dir, reviews_csv, sentiment_rows
from tuneforge.config import ConfigError
import tuneforge.run
from tuneforge.run import load, train
from tuneforge.train import fit


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return reviews_csv(tmp_path_factory.mktemp("data") / "reviews.csv", 160)


def _cfg(model, data, out, method="lora", **train):
    return {"model": {"name": str(model), "max_length": 32}, "data": {"dataset": str(data)},
            "method": {"name": method}, "train": {"epochs": 3, "batch_size": 16, "precision": "fp32", **train},
            "output_dir": str(out)}


@pytest.fixture(scope="module")
def lora_run(bert_dir, data_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    return train(_cfg(bert_dir, data_csv, out, lr=5e-3), progress=False)


def test_run_directory_holds_config_labels_metrics_and_only_trainable_weights(lora_run):
    files = {p.name for p in lora_run.run_dir.iterdir()}
    assert {"config.yaml", "meta.json", "metrics.json", "results.md", "log.jsonl", "loss_curve.png",
            "trainable.safetensors", "tensorboard"} <= files
    assert json.loads((lora_run.run_dir / "meta.json").read_text())["labels"] == ["negative", "positive"]
    import yaml
    stored = yaml.safe_load((lora_run.run_dir / "config.yaml").read_text())
    assert stored["method"]["alpha"] == 16.0 and stored["method"]["rslora"] is False  # defaults resolved too
    assert stored["train"]["lr"] is not None
    from safetensors.torch import load_file
    saved = load_file(lora_run.run_dir / "trainable.safetensors")
    assert saved and all(".lora_" in k or k.startswith("classifier.") for k in saved)
    m = lora_run.metrics
    assert m["parameters"]["trainable"] == sum(v.numel() for v in saved.values())
    assert m["test_after"]["accuracy"] > m["test_before"]["accuracy"]  # the toy task is learnable
    assert 0 < m["real_tokens"] <= m["padded_tokens"]
    text = (lora_run.run_dir / "split.json").read_text()
    split = json.loads(text)
    assert len(split["train"]) == m["examples"]["train"] and all(len(x) == 2 for x in split["train"])
    assert text.count("\n") == 1  # compact: ~7 bytes a row, not 34 (6.9 MB for 200k rows)


def test_reload_gives_identical_predictions(lora_run, bert_dir, data_csv):
    run = load(lora_run.run_dir, device="cpu")
    metrics = run.evaluate()
    assert metrics["accuracy"] == pytest.approx(lora_run.metrics["test_after"]["accuracy"])
    a = run.predict(["the movie was great fun", "the film was awful and boring"])
    b = load(lora_run.run_dir, device="cpu").predict(["the movie was great fun", "the film was awful and boring"])
    assert a == b and a[0]["label"] in ("positive", "negative")
    assert sum(a[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert run.evaluate(str(data_csv))["n"] == 160


def test_evaluating_on_rows_the_run_trained_on_warns(lora_run, data_csv, tmp_path, capsys):
    import pandas as pd

    run = load(lora_run.run_dir, device="cpu")
    capsys.readouterr()
    run.evaluate(str(data_csv))  # the run's own source: its training rows among the others
    train = lora_run.metrics["examples"]["train"]
    assert f"warning: {train} of 160 row(s) of {data_csv} are training examples of this run" in capsys.readouterr().err
    test_rows = [row for _, row in json.loads((lora_run.run_dir / "split.json").read_text())["test"]]  # (source, row)
    pd.read_csv(data_csv).iloc[test_rows].to_csv(tmp_path / "held.csv", index=False)
    run.evaluate(str(tmp_path / "held.csv"))  # only the test rows: nothing to warn about
    assert "training examples" not in capsys.readouterr().err


def test_merge_writes_a_plain_hf_model_with_the_same_outputs(lora_run, tmp_path):
    run = load(lora_run.run_dir, device="cpu")
    enc = run.tokenizer(["the movie was great fun", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = run.model(**enc).logits
    out = run.merge(tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(plain(**enc).logits, expected, atol=1e-5)  # stated tolerance: 1e-5
    assert plain.config.id2label == {0: "negative", 1: "positive"}
    with pytest.raises(ConfigError, match="already exists"):
        load(lora_run.run_dir, device="cpu").merge(out)


def test_full_run_saves_a_whole_model_and_reloads(bert_dir, data_csv, tmp_path):
    result = train(_cfg(bert_dir, data_csv, tmp_path / "full", method="full", lr=1e-3, epochs=1), progress=False)
    assert (result.run_dir / "model" / "config.json").is_file()
    assert not (result.run_dir / "trainable.safetensors").exists()
    run = load(result.run_dir, device="cpu")
    assert run.evaluate()["accuracy"] == pytest.approx(result.metrics["test_after"]["accuracy"])


def test_api_accepts_yaml_and_overrides(bert_dir, data_csv, tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(f"model: {{name: '{bert_dir}', max_length: 16}}\ndata: {{dataset: '{data_csv}'}}\n"
                 "method: {name: freeze, num_layers: 1}\ntrain: {max_steps: 2, precision: fp32}\n")
    result = tuneforge.finetune(f, [f"output_dir={tmp_path / 'r'}", "train.batch_size=8"], progress=False)
    assert result.metrics["steps"] == 2 and result.metrics["method"] == "freeze"


def test_separate_split_files_and_text_pairs(bert_dir, tmp_path, capsys):
    rows = [{"a": r["text"], "b": "so it is", "y": r["label"]} for r in sentiment_rows(60)]
    rows.append(dict(rows[45], a=rows[45]["a"] + " "))  # a test row repeating a validation row
    for name, part in (("train", rows[:40]), ("val", rows[40:50]), ("test", rows[50:])):
        pd.DataFrame(part).to_json(tmp_path / f"{name}.jsonl", orient="records", lines=True)
    cfg = {"model": {"name": str(bert_dir), "max_length": 32}, "data": {"train_file": str(tmp_path / "train.jsonl"),
           "validation_file": str(tmp_path / "val.jsonl"), "test_file": str(tmp_path / "test.jsonl"),
           "text_column": "a", "text_pair_column": "b", "label_column": "y"},
           "train": {"max_steps": 2, "precision": "fp32"}, "output_dir": str(tmp_path / "r")}
    out = train(cfg, progress=False)
    seen = {(r["a"], r["b"]) for r in rows[:40]}
    val = [r for r in rows[40:50] if (r["a"], r["b"]) not in seen]  # rows repeating training rows are dropped
    seen |= {(r["a"], r["b"]) for r in val}
    test = [r for r in rows[50:] if (r["a"].strip(), r["b"]) not in seen]
    examples = out.metrics["examples"]
    assert (examples["train"], examples["validation"], examples["test"]) == (40, len(val), len(test))
    assert examples["dropped_overlap"] == 21 - len(val) - len(test) > 0
    assert (f"warning: {examples['dropped_overlap']} validation/test row(s) repeat an example of an earlier split "
            "(training; validation, for test rows) and were left out") in capsys.readouterr().err
    run = load(out.run_dir, "cpu")
    texts = [r["a"] for r in rows[50:53]]
    rows_so, rows_not = run.predict(texts, ["so it is"] * 3), run.predict(texts, ["not at all"] * 3)
    assert [r["pair"] for r in rows_so] == ["so it is"] * 3
    assert rows_so[0]["probabilities"] != rows_not[0]["probabilities"]  # the second text is used
    with pytest.raises(ConfigError, match="trained on text pairs \\('a' \\+ 'b'\\)"):
        run.predict(texts)
    with pytest.raises(ConfigError, match="3 texts but 1 second texts"):
        run.predict(texts, ["so it is"])


def test_a_common_text_pair_layout_trains_as_pairs_without_settings(bert_dir, tmp_path):
    rows = [{"premise": r["text"], "hypothesis": "so it is", "label": r["label"]} for r in sentiment_rows(40)]
    pd.DataFrame(rows).to_json(tmp_path / "nli.jsonl", orient="records", lines=True)
    cfg = {"model": {"name": str(bert_dir), "max_length": 32}, "data": {"dataset": str(tmp_path / "nli.jsonl")},
           "train": {"max_steps": 2, "precision": "fp32"}, "output_dir": str(tmp_path / "r")}
    run = load(train(cfg, progress=False).run_dir, "cpu")
    assert (run.cfg.data.text_column, run.cfg.data.text_pair_column) == ("text", "hypothesis")
    with pytest.raises(ConfigError, match="trained on text pairs"):
        run.predict(["a fine film"])
    assert len(run.predict(["a fine film"], ["so it is"])) == 1


def test_seeded_training_is_reproducible(bert_dir, data_csv, tmp_path):
    runs = [train(_cfg(bert_dir, data_csv, tmp_path / f"r{i}", max_steps=4), progress=False) for i in range(2)]
    from safetensors.torch import load_file
    a, b = (load_file(r.run_dir / "trainable.safetensors") for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_and_eval_every(bert_dir, data_csv, tmp_path):
    m = train(_cfg(bert_dir, data_csv, tmp_path / "es", epochs=50, eval_every=1, early_stopping=2, lr=1e-6),
              progress=False).metrics
    assert m["steps"] < 50 * 8  # stopped long before 50 epochs
    log = [json.loads(line) for line in (tmp_path / "es" / "log.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in log if "train_loss" in r]
    assert logged and logged[-1] == m["steps"]  # the steps after the last periodic log are logged too
    assert [r["step"] for r in log if "val_accuracy" in r] == list(range(1, m["steps"] + 1))  # eval_every=1


@pytest.mark.parametrize("change, message", [
    ({"data": {"label_column": "stars"}}, "column 'stars' not found"),
    ({"model": {"name": "/no/such/model"}}, "neither an embedded model"),
    ({"method": {"name": "lora", "target_modules": ["nope"]}}, "matches no linear layer"),
    ({"method": {"name": "lora", "rank": 0}}, "method.rank must be positive"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be positive"),
    ({"train": {"lr": -1}}, "train.lr must be >= 0"),
    ({"train": {"head_lr": -1}}, "train.head_lr must be >= 0"),
])
def test_bad_input_gives_one_clear_error(bert_dir, data_csv, tmp_path, change, message):
    cfg = _cfg(bert_dir, data_csv, tmp_path / "bad")
    for section, values in change.items():
        cfg[section] = {**cfg[section], **values} if section != "method" else values
    with pytest.raises(ConfigError, match=message):
        train(cfg, progress=False)
    assert not (tmp_path / "bad").exists()  # a run that never trained leaves no directory behind


def test_unseen_label_in_a_split_file_names_file_and_row(bert_dir, tmp_path):
    pd.DataFrame(sentiment_rows(40)).to_csv(tmp_path / "train.csv", index=False)
    test = sentiment_rows(4, seed=7)
    test[2]["label"] = "neutral"
    pd.DataFrame(test).to_csv(tmp_path / "test.csv", index=False)
    cfg = {"model": {"name": str(bert_dir), "max_length": 32}, "data": {"train_file": str(tmp_path / "train.csv"),
           "test_file": str(tmp_path / "test.csv")}, "output_dir": str(tmp_path / "r")}
    with pytest.raises(ConfigError, match=r"test\.csv, row 3: label 'neutral' \(column 'label'\) was not seen in training"):
        train(cfg, progress=False)


def test_existing_run_directory_is_never_overwritten_silently(bert_dir, data_csv, tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists.*--overwrite"):
        train(_cfg(bert_dir, data_csv, out, max_steps=1), progress=False)
    with pytest.raises(ConfigError, match="not made by tuneforge"):  # --overwrite only replaces tuneforge's folders
        train(_cfg(bert_dir, data_csv, out, max_steps=1), overwrite=True, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"
    run = tmp_path / "run"
    train(_cfg(bert_dir, data_csv, run, max_steps=1), progress=False)
    with pytest.raises(ConfigError, match="already exists.*--overwrite"):
        train(_cfg(bert_dir, data_csv, run, max_steps=1), progress=False)
    train(_cfg(bert_dir, data_csv, run, max_steps=2), overwrite=True, progress=False)  # its own run: replaced
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


def test_decoder_models_classify_too(tmp_path, data_csv):
    for family in ("llama", "gpt2"):
        folder = model_dir(tmp_path / family, family, pad=False)  # no pad token: falls back to EOS
        m = train(_cfg(folder, data_csv, tmp_path / f"run-{family}", lr=5e-3), progress=False).metrics
        assert m["test_after"]["accuracy"] >= m["test_before"]["accuracy"] + 0.2, (family, m["test_before"],
                                                                                 m["test_after"])


def test_interrupted_run_resumes_to_the_same_result(bert_dir, data_csv, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from tuneforge import checkpoint, training_state

    cfg = lambda out: _cfg(bert_dir, data_csv, out, max_steps=6, save_every=2, eval_every=3)  # noqa: E731
    straight = train(cfg(tmp_path / "straight"), progress=False)
    original = training_state.save_training_state

    def save_then_crash(run_dir, module, optimizer, names, scheduler, loop, device):
        original(run_dir, module, optimizer, names, scheduler, loop, device)
        if loop["steps"] == 4:
            raise KeyboardInterrupt  # the machine went down right after the step-4 checkpoint

    monkeypatch.setattr(training_state, "save_training_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "crashed"), progress=False)
    monkeypatch.setattr(training_state, "save_training_state", original)
    assert (tmp_path / "crashed" / checkpoint.RESUME).is_file()
    with pytest.raises(ConfigError, match="resume continues a run with its own config; give no other config or overrides"):
        train({}, ["train.lr=0.5"], resume=tmp_path / "crashed", progress=False)  # was applied, yet not to the optimizer
    with pytest.raises(ConfigError, match="resume continues a run with its own config"):
        train({"train": {"lr": 0.5}}, resume=tmp_path / "crashed", progress=False)  # was ignored in silence
    resumed = train({}, resume=tmp_path / "crashed", progress=False)
    a, b = load_file(straight.run_dir / "trainable.safetensors"), load_file(resumed.run_dir / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["steps"] == 6 and resumed.metrics["real_tokens"] == straight.metrics["real_tokens"]
    assert not (tmp_path / "crashed" / checkpoint.RESUME).exists()
    with pytest.raises(ConfigError, match="cannot resume.*finished"):
        train({}, resume=tmp_path / "crashed", progress=False)


@pytest.mark.parametrize("method", __import__("tuneforge.methods.registry", fromlist=["names"]).names())
def test_every_method_saves_only_what_trained_and_reloads_to_identical_predictions(method, bert_dir, data_csv, tmp_path):
    from safetensors.torch import load_file

    from tuneforge.methods import registry
    from tuneforge.models import apply_method
    from tuneforge.run import resolve_config

    result = train(_cfg(bert_dir, data_csv, tmp_path / method, method=method, max_steps=2), progress=False)
    fresh = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    fresh, _ = apply_method(fresh, resolve_config(_cfg(bert_dir, data_csv, tmp_path, method=method)), ["classifier"])
    registry.call_optional(method, "fold", fresh)
    trained = {n for n, p in fresh.named_parameters() if p.requires_grad}
    if method == "full":
        assert (result.run_dir / "model" / "model.safetensors").is_file()
    else:
        assert set(load_file(result.run_dir / "trainable.safetensors")) == trained  # exactly what trained
    texts = ["the movie was great fun", "the film was awful and boring"]
    run = load(result.run_dir, device="cpu")
    assert run.evaluate()["accuracy"] == pytest.approx(result.metrics["test_after"]["accuracy"])
    before = load(result.run_dir, device="cpu")  # reloaded weights differ from the untrained method's
    untrained = fresh.eval()
    enc = run.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(before.model(**enc).logits, untrained(**enc).logits)


def test_with_validation_the_best_weights_wait_in_a_file_not_in_memory(bert_dir, data_csv, tmp_path, monkeypatch):
    # kept in memory they were a second copy of every trained weight beside the optimizer's state, all run long
    from safetensors.torch import load_file
    from tuneforge.best_weights import BestWeights

    kept, shared, spies = {}, [], {}
    keep, record = BestWeights.keep, tuneforge.train._record_evaluation

    def spy(self, state, step):
        live = {n.removeprefix("model."): p.data_ptr() for n, p in spies["module"].named_parameters()}
        shared.append(all(live[n] == t.data_ptr() for n, t in state.items()))
        kept[step] = {n: t.clone() for n, t in state.items()}
        keep(self, state, step)
        on_disk = sorted(p.name for p in self.folder.glob(".best-*"))
        assert on_disk == [f".best-{step}.safetensors"], on_disk  # no checkpoint names an earlier best

    def with_module(result, logger, metrics, metric, sign, step, module, patience):
        spies["module"] = module
        return record(result, logger, metrics, metric, sign, step, module, patience)

    monkeypatch.setattr(BestWeights, "keep", spy)
    monkeypatch.setattr(tuneforge.train, "_record_evaluation", with_module)
    cfg = _cfg(bert_dir, data_csv, tmp_path / "val", method="full", lr=1e-2, max_steps=10, eval_every=2,
               save_every=0)
    result = train(cfg, progress=False)
    best = result.metrics["best_validation"]["step"]
    assert best in kept and best < 10, (best, sorted(kept))  # an earlier evaluation than the last one was best
    assert shared and all(shared)  # written straight from the trained parameters: no copy
    saved = load_file(result.run_dir / "model" / "model.safetensors")
    for name, weight in kept[best].items():
        assert torch.equal(saved[name], weight), name
    assert not list(result.run_dir.glob(".best-*"))  # a finished run keeps none of them


def test_without_validation_the_final_weights_are_the_result_without_a_copy(bert_dir, data_csv, tmp_path,
                                                                             monkeypatch):
    # a copy of every trained weight while the optimizer still lives was the peak memory of a full run
    seen = {}

    def spy(model, *args, **kwargs):
        result = fit(model, *args, **kwargs)
        live = {n: p.data_ptr() for n, p in model.named_parameters() if p.requires_grad}
        seen["shared"] = {n: live.get(n) == t.data_ptr() for n, t in result.best_state.items()}
        return result

    monkeypatch.setattr(tuneforge.run, "fit", spy)
    cfg = _cfg(bert_dir, data_csv, tmp_path / "noval", method="full", lr=1e-3, epochs=1)
    cfg["data"]["split"] = [0.9, 0.0, 0.1]
    result = train(cfg, progress=False)
    assert seen["shared"] and all(seen["shared"].values())
    run = load(result.run_dir, device="cpu")  # the saved weights are the trained ones
    assert run.evaluate()["accuracy"] == pytest.approx(result.metrics["test_after"]["accuracy"])


def test_every_evaluation_shows_its_progress_and_a_quiet_run_none(bert_dir, data_csv, tmp_path, capsys,
                                                                    monkeypatch):
    """Before training, at each validation and after training a bar counts the batches (a 20k-row test split took
    two silent minutes); evaluating a saved run shows one too (on a terminal; tests/test_progress.py: log files)."""
    from tuneforge import progress

    monkeypatch.setattr(progress, "_terminal", lambda: True)
    monkeypatch.setattr(tuneforge.run, "LARGE_DATA", data_csv.stat().st_size)  # a line before a large file
    out = train(_cfg(bert_dir, data_csv, tmp_path / "loud", epochs=1), progress=True)
    err = capsys.readouterr().err
    assert err.startswith(f"reading, checking and tokenising {data_csv} ...")
    assert "evaluating the trained model ..." in err and err.count("evaluate:   0%") >= 3
    load(out.run_dir).evaluate(progress=True)
    assert "evaluate:   0%" in capsys.readouterr().err
    train(_cfg(bert_dir, data_csv, tmp_path / "quiet", epochs=1), progress=False)
    err = capsys.readouterr().err
    assert "evaluate" not in err and "reading" not in err


def test_packing_a_classification_run_is_a_note_not_a_false_warning(bert_dir, data_csv, tmp_path, capsys):
    cfg = _cfg(bert_dir, data_csv, tmp_path / "packed", epochs=1)
    train({**cfg, "data": {**cfg["data"], "packing": True}}, progress=False)
    err = capsys.readouterr().err
    assert "note: data.packing does not apply to classification runs: each example keeps a row of its own" in err
    assert "cannot keep packed examples apart" not in err
