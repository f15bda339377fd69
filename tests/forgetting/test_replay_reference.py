"""Causal-LM replay never trains on the reference examples that measure forgetting, even when the replay
data and the reference data are the same set (as with the embedded chat model's `chitchat`)."""
import json

import torch

from lm_helpers import QA, model_folder, write_pairs
from tuneforge import tasks
from tuneforge.data.dataset import prepare
from tuneforge.forgetting.pipeline import mix_replay, probe_overlap, reference_probe
from tuneforge.forgetting.replay import replay_count
from tuneforge.models import load_tokenizer
from tuneforge.run import resolve_config


def test_replay_pool_excludes_the_reference_examples(tmp_path):
    folder = model_folder(tmp_path / "llama", "llama")
    chats = tmp_path / "chats.jsonl"  # 36 distinct two-turn conversations
    rows = [{"messages": [{"role": "user", "content": f"{q} {a} {a2}"}, {"role": "assistant", "content": a2}]}
            for q, a in QA for _, a2 in QA[:2]]
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = resolve_config({"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
                          "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))},
                          "forgetting": {"reference": str(chats), "reference_examples": 12,
                                         "replay": {"data": str(chats), "ratio": 0.3}}})
    task, tokenizer = tasks.get("causal_lm"), load_tokenizer(folder)
    splits, data = prepare(cfg, task, tokenizer)
    rt = tasks.Runtime(device=torch.device("cpu"), bf16=False, pad_id=tokenizer.pad_token_id)
    probe = reference_probe(cfg, task, tokenizer, rt, data.meta)
    assert len(probe.examples) == 12
    fisher = {tuple(e["input_ids"]) for e in probe.fisher_examples}  # EWC's data: never the measured examples
    assert len(fisher) == 12 and not fisher & {tuple(e["input_ids"]) for e in probe.examples}
    own = {id(e) for e in data.train}
    n_train = len(data.train)
    replayed = [e for e in mix_replay(cfg, task, tokenizer, data, splits.held_out, [probe]).train if id(e) not in own]
    assert len(replayed) == replay_count(n_train, 0.3) > 0
    held_out = {tuple(e["input_ids"]) for e in probe.examples}
    assert not held_out & {tuple(e["input_ids"]) for e in replayed}
    assert len({tuple(e["input_ids"]) for e in replayed}) == min(len(replayed), len(rows) - 24)  # both sides kept out
    val_cfg = resolve_config({**cfg.to_dict(), "forgetting": {**cfg.to_dict()["forgetting"], "probe_split": "validation"}})
    val = {tuple(e["input_ids"]) for e in reference_probe(val_cfg, task, tokenizer, rt, data.meta).examples}
    assert len(val) == 12 and not val & held_out and not val & fisher  # a third, disjoint sample
    assert not val & {tuple(e["input_ids"]) for e in replayed}


def test_reference_none_turns_the_default_probe_off(tmp_path):
    folder = model_folder(tmp_path / "llama", "llama")
    task, tokenizer = tasks.get("causal_lm"), load_tokenizer(folder)
    rt = tasks.Runtime(device=torch.device("cpu"), bf16=False, pad_id=tokenizer.pad_token_id)
    for reference, expected in (("none", None), (str(write_pairs(tmp_path / "ref.jsonl")), 8)):
        cfg = resolve_config({"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
                              "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))},
                              "forgetting": {"reference": reference, "reference_examples": 8}})
        probe = reference_probe(cfg, task, tokenizer, rt, {"format": "pairs"})
        assert (probe if expected is None else len(probe.examples)) == expected


def test_a_missing_reference_file_is_named_as_the_reference(tmp_path):
    import pytest

    from tuneforge.config import ConfigError

    folder = model_folder(tmp_path / "llama", "llama")
    task, tokenizer = tasks.get("causal_lm"), load_tokenizer(folder)
    rt = tasks.Runtime(device=torch.device("cpu"), bf16=False, pad_id=tokenizer.pad_token_id)
    cfg = resolve_config({"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
                          "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))},
                          "forgetting": {"reference": str(tmp_path / "nofile.jsonl")}})
    with pytest.raises(ConfigError, match=r"^forgetting.reference: data file .*nofile.jsonl does not exist"):
        reference_probe(cfg, task, tokenizer, rt, {"format": "pairs"})


def test_a_reference_that_is_the_training_data_is_warned_about(tmp_path):
    folder = model_folder(tmp_path / "llama", "llama")
    task, tokenizer = tasks.get("causal_lm"), load_tokenizer(folder)
    rt = tasks.Runtime(device=torch.device("cpu"), bf16=False, pad_id=tokenizer.pad_token_id)
    pairs, other = write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"instruction": f"{q} {q}", "output": a}) + "\n" for q, a in QA))
    for reference, warned in ((pairs, True), (other, False)):
        cfg = resolve_config({"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
                              "data": {"dataset": str(pairs)},
                              "forgetting": {"reference": str(reference), "reference_examples": 4}})
        splits, data = prepare(cfg, task, tokenizer)
        probe = reference_probe(cfg, task, tokenizer, rt, data.meta)
        lines = probe_overlap([probe], task, cfg, splits.records)
        assert bool(lines) == warned
        if warned:  # every reference text is one of the run's examples, in whichever split
            assert lines == [f"warning: 8 of the 8 texts the forgetting probe '{probe.name}' draws on are examples "
                             "of this run's own data, so its change shows learning, not forgetting; measure "
                             "forgetting on other data (forgetting.reference)"]
