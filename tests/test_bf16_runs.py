"""Whole runs in bf16 on a CPU, as a bf16 machine (CUDA, AMX) runs them: frozen weights stored in bf16, every
forward under autocast. CI's CPU has no native bf16, so `bf16_supported` is patched (autocast still runs, emulated).
A forward outside autocast on bf16-stored weights fails ("expected scalar type Float but found BFloat16"): the
forgetting probes once did, and only a GPU run showed it."""
import json
import math
import random

import pandas as pd
import pytest

from lm_helpers import QA, model_folder, single_thread, write_pairs
from tiny import model_dir, sentiment_rows
from tuneforge import loaded, models
from tuneforge.methods import registry
from tuneforge.forgetting import probes
from tuneforge.run import load, train


@pytest.fixture(autouse=True)
def bf16_machine(monkeypatch):
    monkeypatch.setattr(models, "bf16_supported", lambda device: True)
    monkeypatch.setattr(loaded, "bf16_supported", lambda device: True)
    with single_thread():
        yield


def _run(cfg: dict) -> dict:
    cfg["train"] = {"max_steps": 2, "batch_size": 8, "precision": "bf16", "device": "cpu", **cfg.get("train", {})}
    out = train(cfg, progress=False)
    assert out.metrics["precision"] == "bf16"
    return out


METHODS = registry.names()
CURES = {"replay": {"data": "self", "ratio": 0.5}, "regularize": {"kind": "ewc", "strength": 0.1}, "interpolate": 0.6}


CHAT_CASES = [*(("gpt2", m, {}) for m in METHODS), *(("llama", m, {}) for m in METHODS if m != "bitfit"),
              ("llama", "freeze", CURES)]  # Llama has no bias terms for BitFit


@pytest.mark.parametrize("family, method, cures", CHAT_CASES,
                         ids=[f"{f}-{m}{'-cures' if c else ''}" for f, m, c in CHAT_CASES])
def test_a_bf16_chat_run_measures_every_forgetting_probe(tmp_path, monkeypatch, family, method, cures):
    monkeypatch.setattr(probes, "SENTIMENT", ("rotten_tomatoes", "{text} :", ("negative", "positive"), ("no", "yes")))
    chats = tmp_path / "chats.jsonl"  # reference conversations, not trained on
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{q} {a}"},
                                                      {"role": "assistant", "content": a}]}) + "\n" for q, a in QA))
    folder = model_folder(tmp_path / family, family)
    out = _run({"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
                "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))}, "method": {"name": method},
                "forgetting": {"probes": ["own_answers", "sentiment", "reference"], "reference": str(chats),
                               "reference_examples": 6, "probe_prompts": 6, "probe_examples": 12, **cures},
                "eval": {"max_new_tokens": 4, "generate_samples": 2}, "output_dir": str(tmp_path / "run")})
    measured = out.metrics["forgetting"]["probes"]
    assert [p["metric"] for p in measured] == ["perplexity", "accuracy", "perplexity"]
    assert all(math.isfinite(p["before"]) and math.isfinite(p["after"]) for p in measured)
    assert math.isfinite(out.metrics["test_after"]["perplexity"])
    run = load(out.run_dir, "cpu")
    assert run.rt.bf16 and run.generate(["hello"], max_new_tokens=3)  # reloaded as trained: bf16


@pytest.mark.parametrize("method", METHODS)
def test_a_bf16_classifier_trains_evaluates_and_reloads(tmp_path, method):
    data = tmp_path / "sentiment.csv"
    pd.DataFrame(sentiment_rows(80)).to_csv(data, index=False)
    out = _run({"model": {"name": str(model_dir(tmp_path / "bert", "bert")), "max_length": 32},
                "data": {"dataset": str(data)}, "method": {"name": method}, "output_dir": str(tmp_path / "run")})
    assert 0 <= out.metrics["test_after"]["accuracy"] <= 1
    run = load(out.run_dir, "cpu")
    assert run.rt.bf16
    assert run.evaluate()["accuracy"] == pytest.approx(out.metrics["test_after"]["accuracy"])
    assert run.predict(["the movie was good"])[0]["label"] in {"positive", "negative"}


@pytest.mark.parametrize("method", METHODS)
def test_a_bf16_tagger_trains_and_evaluates(tmp_path, method):
    rng, rows = random.Random(0), []
    for _ in range(60):
        words = [rng.choice(["the", "movie", "was", "good", "bad", "w1", "w2"]) for _ in range(rng.randint(3, 8))]
        rows.append({"tokens": words, "tags": ["B-person" if w.startswith("w") else "O" for w in words]})
    data = tmp_path / "tagged.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _run({"model": {"name": str(model_dir(tmp_path / "bert", "bert")), "task": "token_classification",
                          "max_length": 16}, "data": {"dataset": str(data)}, "method": {"name": method},
                "output_dir": str(tmp_path / "run")})
    assert math.isfinite(out.metrics["test_after"]["f1"])
    run = load(out.run_dir, "cpu")
    assert run.rt.bf16 and run.evaluate()["f1"] == pytest.approx(out.metrics["test_after"]["f1"])
