import pytest
from collections import Counter

import torch

from tuneforge.data.batching import Shapes, batch_order, collate, collate_packed, iterate, round_up
from tuneforge.data.split import sample, split


def test_split_is_seeded_stratified_and_complete():
    items = [{"id": i, "y": "a" if i < 80 else "b"} for i in range(100)]  # 80/20 imbalance
    tr, va, te = split(items, [0.8, 0.1, 0.1], seed=3, key=lambda r: r["y"])
    assert sorted(r["id"] for r in tr + va + te) == list(range(100))
    assert Counter(r["y"] for r in te) == {"a": 8, "b": 2}
    assert Counter(r["y"] for r in va) == {"a": 8, "b": 2}
    assert split(items, [0.8, 0.1, 0.1], seed=3, key=lambda r: r["y"]) == (tr, va, te)
    assert split(items, [0.8, 0.1, 0.1], seed=4, key=lambda r: r["y"])[0] != tr


def test_a_sample_keeps_each_class_in_proportion_and_every_class_it_can():
    """data.max_examples of a data.train_file: an unstratified sample of 40 rows of 20 classes lost some classes,
    and the run then stopped because validation rows held labels 'never seen in training'."""
    keys = [f"c{i % 20}" for i in range(200)]
    picked = sample(keys, 40, seed=42)
    assert len(picked) == 40 and Counter(keys[i] for i in picked) == {f"c{i}": 2 for i in range(20)}
    assert picked == sorted(picked) == sample(keys, 40, seed=42) != sample(keys, 40, seed=1)  # in file order, seeded
    skewed = ["a"] * 90 + ["b"] * 9 + ["c"]
    assert Counter(skewed[i] for i in sample(skewed, 10, seed=1)) == {"a": 8, "b": 1, "c": 1}
    assert Counter(skewed[i] for i in sample(skewed, 2, seed=1)) == {"a": 1, "b": 1}  # too few for every class
    assert len(sample([None] * 10, 3, seed=1)) == 3  # no strata (causal LM): a plain seeded sample


def test_length_grouping_cuts_padding_and_covers_every_example():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 100, (2000,), generator=g).tolist()
    def padded(order):
        return sum(max(lengths[i] for i in b) * len(b) for b in order)
    grouped = batch_order(lengths, 32, seed=0, epoch=0, group_by_length=True)
    random_ = batch_order(lengths, 32, seed=0, epoch=0, group_by_length=False)
    assert sorted(i for b in grouped for i in b) == list(range(2000))
    assert padded(grouped) < 0.75 * padded(random_)
    assert batch_order(lengths, 32, seed=0, epoch=1) != grouped  # reshuffled each epoch
    windowed = batch_order(lengths, 32, seed=0, epoch=0, window=4)
    assert sorted(i for b in windowed for i in b) == list(range(2000))
    assert padded(grouped) < padded(windowed) < 0.75 * padded(random_)


def test_the_longest_example_is_in_the_first_batch_of_every_epoch():
    """As in Trainer's length grouping: a batch too large for memory fails at the first step."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(5, 100, (1000,), generator=g).tolist()
    lengths[777] = 500
    for epoch in range(3):
        order = batch_order(lengths, 16, seed=2, epoch=epoch, window=8)
        assert 777 in order[0] and sorted(i for b in order for i in b) == list(range(1000))
    assert batch_order(lengths, 16, seed=2, epoch=0, window=8)[1:] != batch_order(lengths, 16, seed=2, epoch=1,
                                                                                  window=8)[1:]  # still shuffled
    assert 777 not in batch_order(lengths, 16, seed=2, epoch=0, group_by_length=False)[0]  # random batches: as drawn


def test_length_windows_keep_batches_varied():
    """Each window of ``window`` batches is sorted on its own: with windows of 4 batches, a batch's examples
    come from one random window of 128 examples, not from one slice of the globally sorted data."""
    lengths = list(range(1024))  # every length distinct: sorting order is unambiguous
    spread = lambda order: sorted(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in order)
    global_ = batch_order(lengths, 32, seed=1, epoch=0, window=64)  # one window: the whole epoch sorted
    assert max(spread(global_)) == 31  # each batch: 32 consecutive lengths
    small = batch_order(lengths, 32, seed=1, epoch=0, window=4)
    assert sum(spread(small)) > 5 * sum(spread(global_))  # about 8x: 32 of 128 random lengths per batch


@pytest.mark.parametrize("n, batch, accum, world", [(100, 8, 1, 3), (100, 4, 2, 2), (20, 32, 2, 1), (37, 2, 3, 2)])
def test_step_plan_splits_each_global_batch_into_ranks_and_micro_batches(n, batch, accum, world):
    from tuneforge.data.batching import step_plan

    lengths = [i % 17 for i in range(n)]
    plans = [step_plan(lengths, batch, accum, 0, 0, True, 4, r, world) for r in range(world)]
    glob = batch_order(lengths, batch * accum * world, 0, 0, True, True, window=4)
    kept = [b for b in glob if len(b) >= world]  # a last global batch smaller than the world is dropped
    assert all(len(p) == len(kept) for p in plans)  # every rank takes the same number of steps
    for step, global_batch in enumerate(kept):
        shares = [[i for micro in p[step] for i in micro] for p in plans]
        assert sorted(i for s in shares for i in s) == sorted(global_batch)  # a step is exactly one global batch
        for p in plans:
            assert 1 <= len(p[step]) <= accum and all(p[step])  # no empty micro-batch
            if len(global_batch) == batch * accum * world:
                assert [len(m) for m in p[step]] == [batch] * accum


def test_collate_pads_and_masks():
    batch = collate([{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [8], "labels": 0}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    lm = collate([{"input_ids": [5, 6], "labels": [-100, 6]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert lm["labels"].tolist() == [[-100, 6], [8, -100]]


def test_batch_lengths_round_up_to_a_multiple_within_the_limit():
    assert [round_up(n, 4) for n in (1, 4, 5, 8)] == [4, 4, 8, 8]
    assert round_up(61, 4, limit=62) == 62 and round_up(63, 4, limit=62) == 63  # never beyond the limit ...
    examples = [{"input_ids": [5, 6, 7, 3, 3], "labels": 1}, {"input_ids": [8], "labels": 0}]
    batch = collate(examples, pad_id=0, multiple=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 3, 3, 0, 0, 0], [8] + [0] * 7]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] + [0] * 7]
    assert collate(examples, pad_id=0, multiple=4, limit=6)["input_ids"].shape == (2, 6)  # ... which wins
    lm = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    packed = collate_packed(lm, pad_id=0, rows=[[0, 1]], multiple=4)  # one row of 5, its width rounded to 8
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, -100]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]  # the tail: a segment of its own
    assert packed["attention_mask"].sum() == 5
    shapes = Shapes(padded=4, packed=8)
    assert [b["input_ids"].shape for b in iterate(examples, [[0, 1]], 0, shapes=shapes)] == [(2, 8)]
    assert [b["input_ids"].shape for b in iterate(lm, [[0, 1]], 0, packed=True, shapes=shapes)] == [(1, 8)]
    assert [b["input_ids"].shape for b in iterate(examples, [[0, 1]], 0)] == [(2, 5)]  # default: as they are
