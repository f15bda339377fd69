"""Replay in a sequential token-classification run: it never trains on task 1's validation or test sentences
(whichever side the probe measures), and an entity type task 2 lacks is refused, not trained as O."""
import random

import pytest

from lm_helpers import single_thread
from tiny import model_dir
from tuneforge.config import ConfigError
from tuneforge.run import load, train

WORDS = ["the", "a", "film", "is", "w1", "w2", "w3"]


@pytest.fixture(scope="module")
def task1(tmp_path_factory):
    root = tmp_path_factory.mktemp("tagger")
    base = {"model": {"name": str(model_dir(root / "bert", "bert", dropout=0.0)), "task": "token_classification",
                      "max_length": 16},
            "method": {"name": "lora", "rank": 4},
            "train": {"max_steps": 2, "batch_size": 16, "lr": 1e-2, "precision": "fp32"}}
    with single_thread():
        run = train({**base, "data": {"dataset": _conll(root / "a.conll", {"w1": "PER", "w2": "LOC"})},
                     "output_dir": str(root / "task1")}, progress=False)
    return root, base, run


def _conll(path, kinds, sentences=None, seed=None):
    rng = random.Random(seed if seed is not None else str(path))
    sentences = sentences or [[rng.choice(WORDS) for _ in range(6)] for _ in range(90)]
    lines = [line for words in sentences for line in
             [f"{w}\t{'B-' + kinds[w] if w in kinds else 'O'}" for w in words] + [""]]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _task2(root, base, task1, name, kinds, replay, **forgetting):
    cfg = {**base, "data": {"dataset": _conll(root / f"{name}.conll", kinds, seed=1)},
           "forgetting": {"previous_run": str(task1.run_dir), "replay": {"data": replay, "ratio": 0.3}, **forgetting},
           "output_dir": str(root / name)}
    with single_thread():
        return train(cfg, progress=False)


def test_task1s_test_sentences_are_never_replayed_while_its_validation_side_is_measured(task1):
    """Replay compared token ids with the examples the probe measures, so under probe_split=validation (what
    `tuneforge mitigate` chooses on) task 1's test sentences were trained on, and then reported on."""
    root, base, run = task1
    held_out = [r["tokens"] for r in load(run.run_dir, "cpu").prepared().raw_test]
    replay = _conll(root / "task1-test.conll", {"w1": "PER", "w2": "LOC"}, sentences=held_out)
    with pytest.raises(ConfigError, match=r"^forgetting.replay.data .*task1-test.conll: every row is a validation/test "
                                          r"example of this run or one a forgetting probe measures"):
        _task2(root, base, run, "held-out", {"w1": "PER", "w2": "LOC"}, replay, probe_split="validation")


def test_replayed_entity_types_task2_lacks_are_refused(task1):
    """Task 2 tags ORG only; replaying task 1's PER/LOC sentences trained every one of their entities as O."""
    root, base, run = task1
    with pytest.raises(ConfigError, match=r"^forgetting.replay.data: .*a.conll: entity type\(s\) LOC, PER are not "
                                          r"among this run's \(ORG\), so they would train as no entity"):
        _task2(root, base, run, "new-types", {"w3": "ORG"}, str(root / "a.conll"))
