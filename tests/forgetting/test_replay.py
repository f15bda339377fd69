import pytest

from tuneforge.config import ConfigError
from tuneforge.data.batching import batch_order
from tuneforge.forgetting.replay import mix, replay_count


def _examples(n, source, length=5):
    return [{"input_ids": [1] * (length + i % 7), "labels": i % 2, "src": source} for i in range(n)]


@pytest.mark.parametrize("ratio,n_train,n_pool", [(0.2, 400, 1000), (0.5, 300, 50), (0.1, 999, 7), (0.75, 40, 40)])
def test_replay_makes_up_the_ratio_of_an_epoch(ratio, n_train, n_pool):
    train, pool = _examples(n_train, "train"), _examples(n_pool, "replay")
    epoch = mix(train, pool, ratio, seed=1)
    # count over one epoch as the loop sees it: every batch of batch_order
    seen = [epoch[i] for batch in batch_order([len(e["input_ids"]) for e in epoch], 16, 0, 0) for i in batch]
    replayed = sum(e["src"] == "replay" for e in seen)
    assert len(seen) == len(epoch)
    assert sum(e["src"] == "train" for e in seen) == n_train  # every training example once
    assert replayed == replay_count(n_train, ratio) == round(ratio / (1 - ratio) * n_train)
    assert abs(replayed / len(seen) - ratio) <= 1 / len(seen)  # the ratio up to rounding


def test_deterministic_and_even_sampling_with_replacement():
    train, pool = _examples(100, "train"), _examples(30, "replay")
    a, b = mix(train, pool, 0.5, seed=3), mix(train, pool, 0.5, seed=3)
    assert [id(e) for e in a] == [id(e) for e in b]
    assert [id(e) for e in a] != [id(e) for e in mix(train, pool, 0.5, seed=4)]
    counts = [sum(e is p for e in a) for p in pool]  # 100 replays from 30: each 3 or 4 times
    assert sum(counts) == 100 and set(counts) <= {3, 4}


def test_zero_ratio_and_errors():
    train = _examples(10, "train")
    assert mix(train, [], 0.0) == train
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        mix(train, train, 1.0)
    with pytest.raises(ConfigError, match="empty"):
        mix(train, [], 0.3)
    with pytest.raises(ConfigError, match="fields"):
        mix(train, [{"input_ids": [1], "labels": 0}], 0.3)


def test_bookkeeping_fields_of_cut_examples_do_not_count_as_a_different_task():
    """``_cut`` marks only the examples cut to model.max_length: a replay pool whose first example was cut (or a
    training set whose first was) mixes as any other."""
    train = [{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3], "labels": [3], "_cut": True}]
    pool = [{"input_ids": [4], "labels": [4], "_cut": True}, {"input_ids": [5], "labels": [5]}]
    assert len(mix(train, pool, 0.5)) == 4
    assert len(mix(train[::-1], pool[::-1], 0.5)) == 4
