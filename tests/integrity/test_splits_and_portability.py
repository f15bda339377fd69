"""The split belongs to the run (stored with it; duplicates never cross splits; replay never draws held-out rows)
and runs are portable: a CUDA bf16 run evaluates on a CPU-only machine and ``evaluate RUN_DIR`` reproduces the
run's own test metrics."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .cli_checks import jsonl, main, one_error, train_argv
from lm_helpers import model_folder, write_pairs
from tiny import sentiment_rows


# ---- 1. the split belongs to the run -----------------------------------------------------------------------

def test_evaluate_refuses_when_the_source_changed_and_uses_data_given(bert_dir, tmp_path, capsys):
    data = tmp_path / "d.csv"
    pd.DataFrame(sentiment_rows(60)).to_csv(data, index=False)
    run = tmp_path / "run"
    assert main(train_argv(bert_dir, data, run)) == 0
    capsys.readouterr()
    assert main(["evaluate", run]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(json.loads((run / "split.json").read_text())["test"])
    pd.DataFrame(sentiment_rows(5, seed=3)).to_csv(data, mode="a", header=False, index=False)
    one_error(capsys, ["evaluate", run], str(data), "changed since training", "--data FILE")
    assert main(["evaluate", run, "--data", data]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 65
    data.rename(tmp_path / "moved.csv")
    one_error(capsys, ["evaluate", run], f"data file {data} does not exist", "--data FILE")


def test_duplicates_never_end_up_in_two_splits(bert_dir, tmp_path, capsys):
    rows = sentiment_rows(60)
    copies = [{"text": "  " + r["text"].replace(" ", "   ") + " ", "label": r["label"]} for r in rows[:20]]
    copies += [{"text": r["text"].replace(" ", "\t"), "label": r["label"]} for r in rows[:10]]
    data = tmp_path / "d.csv"
    pd.DataFrame(rows + copies).to_csv(data, index=False)
    texts = [" ".join(r["text"].split()) for r in rows + copies]
    expected = len(texts) - len(set(texts))
    run = tmp_path / "run"
    assert main(train_argv(bert_dir, data, run)) == 0
    captured = capsys.readouterr()
    assert f"note: the data holds {expected} duplicate example(s)" in captured.err
    assert f"| duplicate examples (kept in one split) |  | {expected} |" in captured.out
    stored = json.loads((run / "split.json").read_text())
    assert stored["duplicates"] == expected >= 30
    where = {k: {texts[r] for _, r in stored[k]} for k in ("train", "validation", "test")}
    assert not where["train"] & where["validation"] and not where["train"] & where["test"]
    assert not where["validation"] & where["test"]
    assert sum(len(stored[k]) for k in ("train", "validation", "test")) == len(texts)  # every copy kept


def test_sentence_pairs_are_duplicates_only_when_both_texts_match(bert_dir, tmp_path, capsys):
    rows = [{"premise": r["text"], "hypothesis": "good film", "label": r["label"]} for r in sentiment_rows(60)]
    rows += [{"premise": "the plot was", "hypothesis": "good", "label": "negative"},  # same words, other split
             {"premise": "the plot", "hypothesis": "was good", "label": "positive"},
             {"premise": "the  plot", "hypothesis": " was good ", "label": "positive"},  # a true copy
             {"premise": "a dull mess", "hypothesis": "", "label": "negative"}]  # a second text left blank
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(train_argv(bert_dir, data, tmp_path / "run")) == 0
    err = capsys.readouterr().err
    assert "note: the data holds 1 duplicate example(s)" in err and "different labels" not in err
    assert "warning: 1 example(s) have an empty text" in err


def test_copies_of_a_text_with_different_labels_are_warned_about(bert_dir, tmp_path, capsys):
    rows = sentiment_rows(60)
    flipped = {"positive": "negative", "negative": "positive"}
    data = tmp_path / "d.csv"
    pd.DataFrame(rows + [{"text": r["text"] + " ", "label": flipped[r["label"]]} for r in rows[:3]]).to_csv(
        data, index=False)
    assert main(train_argv(bert_dir, data, tmp_path / "run")) == 0
    assert (f"warning: 3 text(s) occur with different labels (e.g. {rows[0]['text']!r}: negative, positive); each "
            "copy trains with its own label: fix them if that is a mistake") in capsys.readouterr().err
    pd.DataFrame(rows + rows[:3]).to_csv(data, index=False)  # copies that agree: no warning
    assert main(train_argv(bert_dir, data, tmp_path / "run2")) == 0
    assert "different labels" not in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(8))
def test_a_class_found_only_on_a_copy_of_a_text_labelled_otherwise_is_trained_on(tmp_path, seed):
    from tuneforge.config import load_config
    from tuneforge.data.dataset import load_splits
    from tuneforge.tasks.classification import Task

    rows = sentiment_rows(40) + [{"text": sentiment_rows(40)[0]["text"], "label": "neutral"}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_splits(load_config(None, {"data": {"dataset": str(data), "seed": seed}}), Task())
    assert "neutral" in {r["label"] for r in splits.records["train"]}


def test_replay_of_the_tasks_own_data_never_draws_its_validation_or_test_rows(bert_dir, reviews, tmp_path, monkeypatch):
    from tuneforge.forgetting import pipeline
    from tuneforge.run import Run

    drawn = {}

    def spy(train_examples, pool, ratio, seed=0):
        drawn.update(train=list(train_examples), pool=list(pool))
        return original(train_examples, pool, ratio, seed)

    original = pipeline.mix
    monkeypatch.setattr(pipeline, "mix", spy)
    run = tmp_path / "run"
    assert main(train_argv(bert_dir, reviews, run, f"forgetting.replay.data={reviews}",
                           "forgetting.replay.ratio=0.5")) == 0
    held = Run(run, "cpu").prepared()
    held = {tuple(e["input_ids"]) for e in held.validation + held.test}
    assert held and drawn["pool"] and len(drawn["pool"]) == 80 - len(held)  # the rest of the file: replayable
    assert not any(tuple(e["input_ids"]) in held for e in drawn["pool"])
    examples = json.loads((run / "metrics.json").read_text())["examples"]
    assert examples["trained_per_epoch"] == 2 * examples["train"]  # ratio 0.5: as many replayed as own examples


def test_stratified_split_keeps_every_class_of_three_and_names_the_smaller_ones(capsys):
    from tuneforge import tasks
    from tuneforge.data.dataset import load_splits
    from tuneforge.run import resolve_config

    words = "good great fine love best fun happy nice bad awful boring hate".split()
    pairs = [f"{a} {b}" for a in words for b in words][:120]
    rows = [{"text": text, "label": "big" if i < 60 else "mid"} for i, text in enumerate(pairs)]
    rows += [{"text": f"three {i}", "label": "three"} for i in range(3)]
    rows += [{"text": f"pair {i}", "label": "pair"} for i in range(2)]
    rows += [{"text": "single", "label": "single"}]
    path = Path("strata.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    for fractions in ([0.8, 0.1, 0.1], [0.4, 0.3, 0.3]):
        cfg = resolve_config({"data": {"dataset": str(path), "split": fractions}})
        capsys.readouterr()
        splits = load_splits(cfg, tasks.get("classification"))
        err = capsys.readouterr().err
        labels = {k: {r["label"] for r in splits.records[k]} for k in ("train", "validation", "test")}
        assert all({"big", "mid", "three"} <= labels[k] for k in labels), (fractions, labels)
        assert {"pair", "single"} <= labels["train"]  # a class too small for every split is trained on
        assert "warning:" in err and "pair" in err and "single" in err and "three" not in err


# ---- 5. portable runs, metrics reproduced ----------------------------------------------------------------

def test_a_cuda_bf16_run_loads_and_evaluates_on_a_cpu_only_machine(lora_run, tmp_path, capsys):
    import torch

    from tuneforge.run import Run

    if torch.cuda.is_available():
        pytest.skip("checks a CPU-only machine")
    moved = tmp_path / "from-gpu"
    shutil.copytree(lora_run, moved)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["train"].update(device="cuda", precision="bf16")
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = Run(moved, device="cpu")
    assert run.device.type == "cpu" and run.predict(["the movie was great"])[0]["label"] in ("positive", "negative")
    expected = json.loads((lora_run / "metrics.json").read_text())["test_after"]["accuracy"]
    assert run.evaluate()["accuracy"] == pytest.approx(expected, abs=0.002)
    for device in ("cpu", "auto"):
        capsys.readouterr()
        assert main(["evaluate", str(moved), "--device", device]) == 0
        assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(expected, abs=0.002)
        assert main(["predict", str(moved), "--device", device, "a dull film"]) == 0
    one_error(capsys, ["train", "--resume", moved], "finished")


def test_evaluate_reproduces_the_classification_metrics_of_the_run(bert_dir, reviews, tmp_path, capsys):
    run = tmp_path / "run"  # default precision (auto): the same precision path as training
    assert main(["train", "--model", bert_dir, "--data", reviews, "-o", run, "-q", "train.max_steps=4",
                 "model.max_length=32", "train.lr=5e-3", "eval.before=false"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    got = json.loads(capsys.readouterr().out)
    stored = json.loads((run / "metrics.json").read_text())["test_after"]
    assert got["accuracy"] == stored["accuracy"] and got["n"] == stored["n"]
    assert got["loss"] == pytest.approx(stored["loss"], rel=1e-5)


def test_evaluate_reproduces_the_perplexity_of_a_causal_lm_run(tmp_path, capsys):
    folder = model_folder(tmp_path / "llama", "llama")
    run = tmp_path / "run"
    assert main(["train", "--model", folder, "--task", "causal_lm", "--data", write_pairs(tmp_path / "p.jsonl", 2),
                 "-o", run, "-q", "train.max_steps=3", "train.batch_size=8", "train.lr=1e-2", "model.max_length=32",
                 "method.rank=4", "eval.before=false", "eval.generate_samples=0"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    got = json.loads(capsys.readouterr().out)
    stored = json.loads((run / "metrics.json").read_text())["test_after"]
    assert got["perplexity"] == pytest.approx(stored["perplexity"], rel=0.005)
    assert got["tokens"] == stored["tokens"]
    long = tmp_path / "long.jsonl"  # evaluate --data says what it cut, as training does
    long.write_text(json.dumps({"instruction": "say yes", "output": " ".join(["yes"] * 40)}) + "\n")
    assert main(["evaluate", str(run), "--data", str(long)]) == 0
    assert "note: 1 of 1 examples are longer than model.max_length=32 tokens" in capsys.readouterr().err


def test_a_split_left_empty_is_named_before_training(tmp_path):
    """Two examples (one per label) at the default 80/10/10 split leave validation and test empty: both are said;
    a data set large enough for every split says nothing of the kind."""
    from tiny import word_tokenizer
    from tuneforge.config import load_config
    from tuneforge.data.dataset import prepare, warnings
    from tuneforge.tasks import get

    def said(n, max_length=128):
        path = jsonl(tmp_path / f"d{n}.jsonl", sentiment_rows(n))
        cfg = load_config(None, {"data": {"dataset": str(path)}, "model": {"max_length": max_length}})
        splits, data = prepare(cfg, get("classification"), word_tokenizer())
        return " ".join(warnings(splits, data, max_length))

    assert "no validation examples" in said(2) and "no test examples: nothing will be evaluated" in said(2)
    assert "no validation" not in said(40) and "no test" not in said(40)
    assert "cut" not in said(40)
    long = sum(len(r["text"].split()) > 8 for r in sentiment_rows(40))  # one token per word, no special tokens
    assert 0 < long < 40
    assert f"note: {long} of 40 examples are longer than model.max_length=8 tokens and were cut" in said(40, 8)


def test_max_examples_of_a_separate_training_file_is_a_seeded_sample_not_its_head(tmp_path):
    from tuneforge.config import load_config
    from tuneforge.data.dataset import load_splits
    from tuneforge.tasks import get

    rows = sorted(sentiment_rows(60), key=lambda r: r["label"])  # sorted by label, as exports often are
    others = sentiment_rows(80)[60:]
    files = {k: str(jsonl(tmp_path / f"{k}.jsonl", part)) for k, part in
             (("train", rows), ("validation", others[:10]), ("test", others[10:]))}
    cfg = load_config(None, {"data": {f"{k}_file": v for k, v in files.items()} | {"max_examples": 20}})
    train = load_splits(cfg, get("classification")).records["train"]
    assert len(train) == 20 and {r["label"] for r in train} == {r["label"] for r in rows}  # the head: one label
    assert [r for r in rows if r in train] == train  # in file order
    again = load_splits(cfg, get("classification")).records["train"]
    assert again == train  # seeded (data.seed)


def test_relative_model_and_data_paths_are_stored_absolute(bert_dir, reviews, tmp_path, monkeypatch):
    """A run started with paths relative to its working directory is resumed and reloaded from any other."""
    from tuneforge import training_state
    from tuneforge.config import load_config
    from tuneforge.run import load, resolve_config, train

    work = tmp_path / "work"
    shutil.copytree(bert_dir, work / "models" / "bert")
    shutil.copy(reviews, work / "reviews.csv")
    monkeypatch.chdir(work)
    original = training_state.save_training_state

    def save_then_crash(run_dir, module, optimizer, names, scheduler, loop, device):
        original(run_dir, module, optimizer, names, scheduler, loop, device)
        raise KeyboardInterrupt

    monkeypatch.setattr(training_state, "save_training_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train({"model": {"name": "models/bert", "max_length": 32}, "data": {"dataset": "reviews.csv"},
               "train": {"max_steps": 4, "save_every": 2, "batch_size": 16, "precision": "fp32"}, "output_dir": "run"},
              progress=False)
    monkeypatch.setattr(training_state, "save_training_state", original)
    stored = load_config(work / "run" / "config.yaml")
    assert (stored.model.name, stored.data.dataset) == (str(work / "models" / "bert"), str(work / "reviews.csv"))
    monkeypatch.chdir(tmp_path)  # elsewhere: "models/bert" and "reviews.csv" are not here
    assert train({}, resume=work / "run", progress=False).metrics["steps"] == 4
    assert load(work / "run").predict(["a fine film"])[0]["label"] in ("negative", "positive")
    cfg = resolve_config({"model": {"name": "minilm"}, "data": {"dataset": "rotten_tomatoes"}})
    assert (cfg.model.name, cfg.data.dataset) == ("minilm", "rotten_tomatoes")  # embedded names stay names
