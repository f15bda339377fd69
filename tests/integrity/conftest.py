"""Fixtures of the integrity tests: 80 labelled reviews and a finished 2-step LoRA run (the tiny BERT
folder is tests/conftest.py's ``bert_dir``); each test runs in its own folder (a default ``runs/`` directory
would land there) on one thread."""
import pytest

from .cli_checks import main, train_argv
from lm_helpers import single_thread
from tiny import reviews_csv


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():  # tiny models: one thread is faster on a shared 2-core machine
        yield


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return reviews_csv(tmp_path_factory.mktemp("data") / "reviews.csv", 80)


@pytest.fixture(scope="module")
def lora_run(bert_dir, reviews, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    assert main(train_argv(bert_dir, reviews, out)) == 0
    return out
