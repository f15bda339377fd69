"""What tuneforge changes in a calling Python process is put back (tuneforge/scope.py), and the reloaded run's
methods refuse input they would misread (tuneforge/loaded.py)."""
import shutil

import pytest
import torch
import transformers
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

import tuneforge
from tiny import reviews_csv
from tuneforge import scope
from tuneforge.config import ConfigError
from tuneforge.run import load, train

hf_logging = transformers.utils.logging


def _cfg(model, data, out, **train):
    return {"model": {"name": str(model), "max_length": 32}, "data": {"dataset": str(data)},
            "train": {"max_steps": 3, "batch_size": 16, **train}, "eval": {"before": False}, "output_dir": str(out)}


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return reviews_csv(tmp_path_factory.mktemp("data") / "reviews.csv", 80)


def test_training_scope_turns_gradients_on_and_puts_threads_and_logging_back():
    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        with torch.inference_mode(), scope.training():
            torch.set_num_threads(1)
            assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            assert hf_logging.get_verbosity() == hf_logging.ERROR and are_progress_bars_disabled()
        assert torch.get_num_threads() == threads and hf_logging.get_verbosity() == hf_logging.WARNING
    finally:
        hf_logging.set_verbosity(verbosity)
        torch.set_num_threads(threads)


def test_a_run_called_under_no_grad_trains_and_leaves_the_callers_state(bert_dir, data_csv, tmp_path):
    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        with torch.no_grad():
            out = train(_cfg(bert_dir, data_csv, tmp_path / "run", num_threads=1), progress=False)
            assert not torch.is_grad_enabled()
        assert out.metrics["steps"] == 3
        assert torch.get_num_threads() == threads and hf_logging.get_verbosity() == hf_logging.WARNING
    finally:
        hf_logging.set_verbosity(verbosity)


@pytest.mark.parametrize("config", [None, [1], 5])
def test_a_config_of_another_type_is_a_config_error(config):
    with pytest.raises(ConfigError, match="the config must be a dict of sections, a YAML file's path or a RunConfig"):
        tuneforge.finetune(config)


@pytest.fixture(scope="module")
def bf16_run(bert_dir, data_csv, tmp_path_factory):  # precision auto: bf16 where the CPU has it
    return train(_cfg(bert_dir, data_csv, tmp_path_factory.mktemp("runs") / "run", lr=5e-3), progress=False)


def test_predict_refuses_a_string_and_missing_texts_and_takes_an_empty_list(bf16_run):
    run = load(bf16_run.run_dir, "cpu")
    with pytest.raises(ConfigError, match="texts must be a list of texts, not one string"):
        run.predict("a good movie")
    with pytest.raises(ConfigError, match=r"texts\[1\] is NoneType, not a text"):
        run.predict(["a good movie", None])
    assert run.predict([]) == []
    with pytest.raises(ConfigError, match="generate takes a list of prompts, not one string"):
        run.generate("say hello")


def test_merging_leaves_the_loaded_run_as_it_was(bf16_run, tmp_path):
    run = load(bf16_run.run_dir, "cpu")
    texts = ["the movie was w1 w2", "the movie was w9 w10"]
    before, metrics = run.predict(texts), run.evaluate()
    run.merge(tmp_path / "merged")
    assert any(".lora_A" in n for n, _ in run.model.named_parameters())  # the run's own model, not the merged one
    assert run.predict(texts) == before and run.evaluate() == metrics  # the same object, the same numbers
    with pytest.raises(ConfigError, match="exists"):  # a merge whose folder is refused leaves the run as it was
        run.merge(tmp_path / "merged")
    assert run.predict(texts) == before
    assert run.predict(t for t in texts) == before  # any iterable of texts


def test_a_moved_run_directory_is_named_when_its_files_are_needed(bf16_run, tmp_path):
    moved = shutil.copytree(bf16_run.run_dir, tmp_path / "a")
    run = load(moved, "cpu")
    moved.rename(tmp_path / "b")
    assert run.predict(["the movie was w1"])  # the model is in memory
    for call in (run.evaluate, lambda: run.merge(tmp_path / "merged")):
        with pytest.raises(ConfigError, match=r"run directory .*/a no longer exists \(moved or deleted"):
            call()
    assert load(tmp_path / "b", "cpu").evaluate()["n"] > 0


def test_a_saved_run_loads_with_options_new_runs_refuse(bert_dir, data_csv, tmp_path):
    """Options refused since (here a freeze pattern that matches nothing) stay loadable in runs saved before."""
    import yaml
    out = train(_cfg(bert_dir, data_csv, tmp_path / "freeze", num_threads=1) | {"method": {"name": "freeze"}},
                progress=False)
    config = out.run_dir / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    saved["method"]["patterns"] = ["zzzz"]  # as a run trained before the refusal would have stored it
    config.write_text(yaml.safe_dump(saved))
    assert load(out.run_dir, "cpu").predict(["the movie was w1"])
    saved["output_dir"] = str(tmp_path / "new")
    with pytest.raises(ConfigError, match="method.patterns: 'zzzz' matches no frozen parameter"):
        train(saved, progress=False)


def test_nested_and_overlapping_quiet_blocks_restore_logging_once_the_last_ends():
    verbosity, bars_off = hf_logging.get_verbosity(), are_progress_bars_disabled()
    hf_logging.set_verbosity_warning()
    enable_progress_bars()  # (a CLI test in this process may have silenced them for good)
    try:
        outer = scope.quiet()
        outer.__enter__()
        with scope.quiet():  # nested (a run's load inside a run), or another thread's
            assert hf_logging.get_verbosity() == hf_logging.ERROR
        assert hf_logging.get_verbosity() == hf_logging.ERROR  # the outer block still works quietly
        inner = scope.quiet()
        inner.__enter__()
        outer.__exit__(None, None, None)  # overlapping: the first to start ends first
        assert hf_logging.get_verbosity() == hf_logging.ERROR
        inner.__exit__(None, None, None)
        assert hf_logging.get_verbosity() == hf_logging.WARNING and not are_progress_bars_disabled()
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_off:
            disable_progress_bars()
