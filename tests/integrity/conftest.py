"""Fixtures of the integrity tests: a tiny BERT folder, 80 labelled reviews, a finished 2-step LoRA run; each test
runs in its own folder (a default ``runs/`` directory would land there) on one thread."""
import pandas as pd
import pytest

from .cli_checks import main, train_argv
from lm_helpers import single_thread
from tiny import model_dir, sentiment_rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():  # tiny models: one thread is faster on a shared 2-core machine
        yield


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    pd.DataFrame(sentiment_rows(80)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def lora_run(bert, reviews, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    assert main(train_argv(bert, reviews, out)) == 0
    return out
