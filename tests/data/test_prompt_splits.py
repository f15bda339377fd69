"""Generated outputs (causal LM, seq2seq): rows asking the same prompt stay in one split whatever their answers,
so test loss and BLEU/ROUGE never score prompts seen in training; a reply that does not train is no reference."""
import json

import pytest

from lm_helpers import QA
from tuneforge import tasks
from tuneforge.config import load_config
from tuneforge.data import chat
from tuneforge.data.dataset import load_splits

ANSWERS = ["black .", "blue .", "green .", "red .", "yellow ."]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _splits(task, **data):
    cfg = load_config(None, {"model": {"task": task}, "data": data})
    return load_splits(cfg, tasks.get(task))


@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_one_prompt_with_several_answers_stays_in_one_split(tmp_path, task, seed):
    rows = [{"instruction": "tell me a color", "output": a} for a in ANSWERS]
    rows += [{"instruction": q, "output": a} for q, a in QA[:15]]
    s = _splits(task, dataset=_write(tmp_path / "pairs.jsonl", rows), seed=seed, split=[0.6, 0.2, 0.2])
    holding = {k for k, records in s.records.items() if any(r["instruction"] == "tell me a color" for r in records)}
    assert len(holding) == 1 and sum(len(v) for v in s.records.values()) == 20 and s.duplicates == 4


def test_a_test_conversation_asking_a_training_prompt_again_is_left_out(tmp_path):
    def conv(q, a):
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    train = _write(tmp_path / "train.jsonl", [conv(q, a) for q, a in QA[:6]])
    test = _write(tmp_path / "test.jsonl", [conv(QA[0][0], "another answer ."), conv(QA[7][0], QA[7][1])])
    s = _splits("causal_lm", train_file=train, test_file=test, split=[0.8, 0.2, 0.0])
    assert [r["messages"][0]["content"] for r in s.records["test"]] == [QA[7][0]] and s.dropped_overlap == 1


def test_the_reference_answer_is_the_last_reply_that_trains():
    messages = [{"role": "user", "content": "say yes"}, {"role": "assistant", "content": "yes ."},
                {"role": "user", "content": "say no"}, {"role": "assistant", "content": "bad dog", "weight": 0}]
    assert chat.split_reference(messages) == (messages[:1], "yes .")
    assert chat.split_reference(messages[:2]) == (messages[:1], "yes .")
