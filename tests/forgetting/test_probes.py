"""Capability probes compute what a direct computation computes; self-replay never uses a probe's prompts."""
import copy
import dataclasses
import math

import pytest
import torch

from lm_helpers import model_folder, write_pairs
from tuneforge import tasks
from tuneforge.data import chat, templates
from tuneforge.data.dataset import normalise, prepare
from tuneforge.forgetting import pipeline, probes
from tuneforge.models import autocast, load_pretrained, load_tokenizer, store_frozen_in_bf16
from tuneforge.run import resolve_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probes")
    folder = model_folder(root / "llama", "llama")
    cfg = resolve_config({"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
                          "data": {"dataset": str(write_pairs(root / "pairs.jsonl"))},
                          "forgetting": {"probe_prompts": 12, "probe_examples": 40},
                          "eval": {"max_new_tokens": 8}})
    task, tok = tasks.get("causal_lm"), load_tokenizer(folder)
    from transformers import AutoModelForCausalLM
    model, _ = load_pretrained(AutoModelForCausalLM, folder)
    rt = tasks.Runtime(device=torch.device("cpu"), bf16=False, pad_id=tok.pad_token_id)
    splits, data = prepare(cfg, task, tok)
    return cfg, task, tok, model.eval(), rt, splits, data


def test_own_answers_probe_is_the_perplexity_of_the_models_greedy_answers(setup):
    """Most answers of the tiny model hit max_new_tokens=8: their end of turn, never said, is not scored."""
    cfg, task, tok, model, rt, _, data = setup
    cfg = resolve_config({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "max_length": 64}})  # no truncation
    probe = probes.own_answers_probe(model, cfg, task, tok, rt, data.meta)
    prompts = probes.general_prompts(12, cfg.data.seed)
    template = templates.resolve_template(tok, None)
    total, count, cut = 0.0, 0, 0
    with torch.no_grad():
        for p in prompts:  # direct: greedy answer with generate, then the HF loss of the answer tokens
            ids = chat.prompt_ids(tok, template, [{"role": "user", "content": p}], 64)
            out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
            answer = tok.decode(out[:out.index(tok.eos_token_id)] if tok.eos_token_id in out else out,
                                skip_special_tokens=True).strip()
            if not answer:
                continue
            if len(out) == 8 and tok.eos_token_id not in out:  # cut: the answer's own tokens, no end of turn
                content = tok(answer, add_special_tokens=False)["input_ids"]
                ex, cut = {"input_ids": ids + content, "labels": [-100] * len(ids) + content}, cut + 1
            else:
                (ex,) = chat.encode_conversations([[{"role": "user", "content": p},
                                                    {"role": "assistant", "content": answer}]], tok, template, 64, ["r"])
            labels = torch.tensor([ex["labels"]])
            loss = model(input_ids=torch.tensor([ex["input_ids"]]), labels=labels).loss
            n = int((labels[:, 1:] != -100).sum())
            total, count = total + float(loss) * n, count + n
    assert len(probe.examples) > cut > 0 and probe.measure(model) == pytest.approx(math.exp(total / count), rel=1e-4)


def test_a_model_that_answers_nothing_has_no_own_answers_probe(setup, monkeypatch, capsys):
    """Answers that all end at once leave nothing to measure: named when asked for, left out under auto."""
    cfg, task, tok, model, rt, _, data = setup
    monkeypatch.setattr(probes, "own_answers", lambda *a, **k: ([], []))
    with pytest.raises(probes.ConfigError, match="answered none of the 12 .*forgetting.probes: \\[reference\\]"):
        probes.own_answers_probe(model, cfg, task, tok, rt, data.meta)
    assert probes.own_answers_probe(model, cfg, task, tok, rt, data.meta, required=False) is None
    assert "warning: the untrained model answered none" in capsys.readouterr().err
    auto = pipeline.probes_for(cfg, task, None, [], tok, rt, data.meta, model)
    assert auto == []  # and no error (the tiny tokenizer cannot spell the sentiment probe's label words either)
    assert "warning: the sentiment probe scores the label words 'negative', 'positive'" in capsys.readouterr().err


def test_a_sentiment_probe_asked_for_whose_words_the_tokenizer_cannot_spell_names_the_setting(setup):
    cfg, task, tok, model, rt, _, data = setup
    with pytest.raises(probes.ConfigError, match=r"^forgetting.probes: the sentiment_calibrated probe scores the label "
                                                 r"words 'negative', 'positive' .*; leave sentiment_calibrated out of "
                                                 r"forgetting.probes$"):
        probes.sentiment_probe(model, cfg, tok, rt, calibrated=True)


def test_validation_side_own_answers_use_other_prompts(setup):
    cfg, task, tok, model, rt, _, data = setup
    val = resolve_config({**cfg.to_dict(), "forgetting": {**cfg.to_dict()["forgetting"], "probe_split": "validation"}})
    test_side = probes.own_answers_probe(model, cfg, task, tok, rt, data.meta)
    val_side = probes.own_answers_probe(model, val, task, tok, rt, data.meta)
    both = probes.general_prompts(24, cfg.data.seed)
    assert val_side.examples and "validation" in val_side.name
    assert not {tuple(e["input_ids"]) for e in val_side.examples} & {tuple(e["input_ids"]) for e in test_side.examples}
    assert val_side.keys == test_side.keys == {normalise(p) for p in both}  # self-replay avoids both sides


@pytest.mark.parametrize("split, bf16", [("test", False), ("validation", False), ("test", True)])
def test_sentiment_probe_is_the_zero_shot_accuracy_of_the_label_words(setup, monkeypatch, split, bf16):
    """Also as a bf16 run measures it: frozen weights stored in bf16, scored under bf16 autocast (the probe
    once ran without autocast and failed on such a model: found on a CUDA GPU)."""
    cfg, task, tok, model, rt, _, data = setup
    if bf16:
        model = copy.deepcopy(model).requires_grad_(False)
        assert store_frozen_in_bf16(model) > 0
        rt = dataclasses.replace(rt, bf16=True)
    cfg = resolve_config({**cfg.to_dict(), "forgetting": {**cfg.to_dict()["forgetting"], "probe_split": split}})
    monkeypatch.setattr(probes, "SENTIMENT", ("rotten_tomatoes", "{text} :", ("negative", "positive"), ("no", "yes")))
    probe = probes.sentiment_probe(model, cfg, tok, rt, calibrated=False)
    from tuneforge.config import load_config
    from tuneforge.data.dataset import load_splits
    from tuneforge.tasks.classification import Task as Classification
    rows = probes.sample(load_splits(load_config(None, {"data": {"dataset": "rotten_tomatoes"}}), Classification())
                         .records[split], 40, cfg.data.seed)
    word_ids = [tok(" no", add_special_tokens=False)["input_ids"][0], tok(" yes", add_special_tokens=False)["input_ids"][0]]
    right = 0
    with torch.no_grad(), autocast(rt.device, rt.bf16):
        for r in rows:  # direct: the next-token logits of the two label words after the prompt
            ids = tok(f"{r['text']} :", add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            right += int(int(logits[word_ids].argmax()) == ["negative", "positive"].index(r["label"]))
    assert probe.measure(model) == pytest.approx(right / len(rows))


def test_replay_never_trains_on_the_sentences_the_sentiment_probe_measures(setup, monkeypatch, tmp_path):
    """Replaying Rotten Tomatoes beside the sentiment probe trained on the probe's own test sentences (its keys
    were empty); neither side's sample is replayed now."""
    import pandas as pd
    cfg, task, tok, model, rt, splits, data = setup
    monkeypatch.setattr(probes, "SENTIMENT", ("rotten_tomatoes", "{text} :", ("negative", "positive"), ("no", "yes")))
    probe = probes.sentiment_probe(model, cfg, tok, rt, calibrated=False)
    from tuneforge.config import load_config
    from tuneforge.data.dataset import load_splits
    from tuneforge.tasks.classification import Task as Classification
    rt_splits = load_splits(load_config(None, {"data": {"dataset": "rotten_tomatoes"}}), Classification())
    sides = [probes.sample(rt_splits.records[side], 40, cfg.data.seed) for side in ("test", "validation")]
    assert probe.keys == {normalise(r["text"]) for side in sides for r in side} and len(probe.keys) == 80
    other = [r for r in rt_splits.records["train"][:40]]
    rows = [{"prompt": r["text"], "response": r["label"]} for side in sides for r in side[:10]] + \
        [{"prompt": r["text"], "response": r["label"]} for r in other]
    pd.DataFrame(rows).to_json(tmp_path / "replay.jsonl", orient="records", lines=True)
    cfg = resolve_config({**cfg.to_dict(), "forgetting": {**cfg.to_dict()["forgetting"], "replay": {
        "data": str(tmp_path / "replay.jsonl"), "ratio": 0.5}}})
    replayed = []
    monkeypatch.setattr(pipeline, "mix", lambda train, pool, ratio, seed: replayed.extend(pool) or train)
    pipeline.mix_replay(cfg, task, tok, dataclasses.replace(data), splits.held_out, [probe], model, rt)
    prompts = {normalise(tok.decode(e["input_ids"])) for e in replayed}
    assert len(replayed) == len(other)  # the 20 probed sentences left out, the 40 others kept
    assert not any(k in p for k in probe.keys for p in prompts)


def test_self_replay_never_uses_the_probes_prompts(setup, monkeypatch):
    cfg, task, tok, model, rt, splits, data = setup
    cfg = resolve_config({**cfg.to_dict(), "forgetting": {**cfg.to_dict()["forgetting"],
                                                         "replay": {"data": "self", "ratio": 0.5}}})
    probe = probes.own_answers_probe(model, cfg, task, tok, rt, data.meta)
    asked = []
    answer = pipeline.own_answers

    def spy(model, task, cfg, tok, rt, meta, prompts):
        asked.extend(prompts)
        return answer(model, task, cfg, tok, rt, meta, prompts)

    monkeypatch.setattr(pipeline, "own_answers", spy)
    n = len(data.train)
    mixed = pipeline.mix_replay(cfg, task, tok, data, splits.held_out, [probe], model, rt)
    assert len(mixed.train) > n and len(asked) == round(0.5 / 0.5 * n)  # ratio 0.5: as many replayed as trained
    assert probe.keys and not probe.keys & {normalise(p) for p in asked}


def test_default_probes_lead_with_a_capability_probe(setup):
    cfg, task, *_ = setup
    assert task.default_probes(cfg) == ["own_answers", "sentiment"]  # no reference data for this model
    smol = resolve_config({"model": {"name": "smollm2", "task": "causal_lm"}, "data": {"dataset": "chatterbot"}})
    assert task.default_probes(smol) == ["own_answers", "sentiment", "reference"]  # chitchat perplexity last


def test_without_end_masks_only_what_follows_the_answers_own_tokens():
    ex = {"input_ids": [1, 2, 7, 8, 9, 3], "labels": [-100, -100, 7, 8, 9, 3]}  # 9, 3: end of turn
    assert probes.without_end(ex, [7, 8])["labels"] == [-100, -100, 7, 8, -100, -100]
    assert probes.without_end(ex, [7, 5]) is None  # the template rewrote the answer: no safe cut
    assert probes.without_end(ex, [7, 8, 9, 3, 4])["labels"] == ex["labels"]  # max_length cut the answer: no end left


def test_each_probe_is_named_before_it_measures_and_quiet_runs_print_nothing(capsys):
    """A chat model's probes generate and score for minutes on a CPU; that passed with no line at all."""
    seen = []
    made = [probes.Probe(name, "perplexity", lambda m, v=v: seen.append(v) or v, [{}] * n, None, [], set())
            for name, v, n in (("own answers perplexity", 3.0, 64), ("chitchat perplexity", 9.0, 200))]
    from tuneforge.config import load_config
    cfg = load_config(None, {})
    assert pipeline.measure(made, None, "before training", print, cfg) == [3.0, 9.0] and seen == [3.0, 9.0]
    err = capsys.readouterr().err.splitlines()
    assert err == ["measuring what the model knew before training (1/2): own answers perplexity on 64 examples "
                   "(forgetting.probes=none skips this) ...",
                   "measuring what the model knew before training (2/2): chitchat perplexity on 200 examples "
                   "(forgetting.probes=none skips this) ..."]
    assert pipeline.measure(made, None, "after training", lambda *a, **k: None, cfg) == [3.0, 9.0]
    assert capsys.readouterr().err == ""
    sequential = load_config(None, {"forgetting": {"previous_run": "task1"}})  # refuses probes=none: not offered
    pipeline.measure(made[:1], None, "after training", print, sequential)
    assert capsys.readouterr().err == ("measuring what the model knew after training (1/1): own answers perplexity on "
                                       "64 examples ...\n")
