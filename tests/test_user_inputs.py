"""What a caller hands the Python API (tuneforge.user_inputs and its uses in tuneforge.load / Run): a wrong type,
a blank text or one that is not UTF-8 is one ConfigError naming the argument, not a traceback from a tokenizer,
pathlib or pandas; a path object goes wherever a path does."""
from pathlib import Path

import pandas as pd
import pytest

from lm_helpers import single_thread
from tiny import model_dir, sentiment_rows
from tuneforge.config import ConfigError
from tuneforge.run import load, train
from tuneforge.user_inputs import path_arg, prompt_list, text_list, text_problem


def test_texts_are_checked_one_by_one():
    assert text_list(("good", "bad"), "texts") == ["good", "bad"]
    assert text_list(pd.Series(["good"]), "texts") == ["good"]
    assert text_problem("fine") is None and text_problem(" \n") == "is empty"
    for values, message in ((["good", "  "], r"texts\[1\] is empty"),
                            (["good", "caf\udce9"], r"texts\[1\] is not UTF-8 text"),  # latin-1 read as UTF-8
                            (["good", 3], r"texts\[1\] is int, not a text"),
                            ("good", "not one string"), (None, "got NoneType"), (12, "got int")):
        with pytest.raises(ConfigError, match=message):
            text_list(values, "texts")


def test_prompts_are_texts_or_message_lists_with_text():
    chat = [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]  # a blank system message is fine
    assert prompt_list(("hi", chat)) == ["hi", chat]
    for values, message in ((["hi", ""], r"prompts\[1\] is empty"), ([[{"role": "user", "content": " "}]], "is empty"),
                            ([[{"role": "user", "content": "caf\udce9"}]], r"prompts\[0\] is not UTF-8 text"),
                            (["caf\udce9"], "is not UTF-8"), ([[{"role": "user", "content": 3}]], "with text contents"),
                            ([[]], "with text contents"), ([3], "with text contents"), ("hi", "not one string"),
                            (None, "got NoneType")):
        with pytest.raises(ConfigError, match=message):
            prompt_list(values)


def test_paths_are_texts_or_path_objects():
    assert path_arg(Path("runs/a"), "run_dir") == Path("runs/a") == path_arg("runs/a", "run_dir")
    for value in (None, 123, "", "  ", ["runs/a"]):
        with pytest.raises(ConfigError, match="run_dir must be a folder or file path"):
            path_arg(value, "run_dir")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    pd.DataFrame(sentiment_rows(40)).to_csv(root / "d.csv", index=False)
    cfg = {"model": {"name": model_dir(root / "bert", "bert"), "max_length": 32},  # path objects in a dict
           "data": {"dataset": root / "d.csv"}, "method": {"name": "lora", "rank": 2},
           "train": {"max_steps": 1, "batch_size": 8, "precision": "fp32"}, "output_dir": root / "run"}
    with single_thread():
        out = train(cfg, progress=False)
    return load(out.run_dir, "cpu"), root


def test_the_api_refuses_bad_arguments_in_one_line(run):
    loaded, root = run
    for call, message in ((lambda: loaded.predict(["good film", ""]), r"^texts\[1\] is empty"),
                          (lambda: loaded.predict(["ok"], pairs=[None]), r"^pairs\[0\] is NoneType"),
                          (lambda: loaded.evaluate(""), "^data_file must be a folder or file path"),
                          (lambda: loaded.evaluate([]), "^data_file must be"),  # had evaluated the run's test split
                          (lambda: loaded.evaluate(pd.DataFrame(sentiment_rows(4))), "^data_file must be"),
                          (lambda: loaded.merge(None), "^out must be"),
                          (lambda: load(None), "^run_dir must be"),
                          (lambda: train({}, "train.lr=1e-3"), r"^overrides must be a list of 'section.key=value'"),
                          (lambda: train({}, {"train.lr": 1e-3}), "^overrides must be a list")):
        with pytest.raises(ConfigError, match=message):
            call()
    assert loaded.evaluate(root / "d.csv")["accuracy"] == loaded.evaluate(str(root / "d.csv"))["accuracy"]
