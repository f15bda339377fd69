import random

import pytest

from tuneforge.config import ConfigError
from tuneforge.data.augment import augment, augment_records

TEXT = "the plot was thin but the actors made every scene worth watching"


def test_same_seed_same_output_different_seed_different():
    a = [augment(TEXT, random.Random(3), 0.2, 0.2, 0.2) for _ in range(2)]
    assert a[0] == a[1]
    others = {augment(TEXT, random.Random(s), 0.2, 0.2, 0.2) for s in range(4, 14)}
    assert len(others - {a[0]}) >= 9  # different seeds give different texts (ten seeds, at most one collision)


def test_records_seeded_and_unchanged_columns():
    records = [{"text": TEXT, "label": "positive"}, {"text": "dull and far too long", "label": "negative"}]
    out = augment_records(records, "text", copies=3, seed=7, p_delete=0.3, p_swap=0.3, p_insert=0.3)
    assert out == augment_records(records, "text", copies=3, seed=7, p_delete=0.3, p_swap=0.3, p_insert=0.3)
    assert out != augment_records(records, "text", copies=3, seed=8, p_delete=0.3, p_swap=0.3, p_insert=0.3)
    assert len(out) == 8 and out[0] is records[0] and out[4] is records[1]
    assert [r["label"] for r in out] == ["positive"] * 4 + ["negative"] * 4
    assert records[0]["text"] == TEXT  # inputs untouched


@pytest.mark.parametrize("text", ["great", "a b", TEXT])
def test_never_empty_even_when_deleting_everything(text):
    for seed in range(50):
        out = augment(text, random.Random(seed), p_delete=1.0, p_swap=1.0, p_insert=0.0)
        assert out.strip() and len(out.split()) == 1 and out in text.split()


def test_operations_do_what_they_say():
    words = TEXT.split()
    rng = random.Random(0)
    assert augment(TEXT, rng, 0.0, 0.0, 0.0) == TEXT
    swapped = augment(TEXT, rng, 0.0, 1.0, 0.0)
    assert sorted(swapped.split()) == sorted(words) and swapped != TEXT  # a permutation
    inserted = augment(TEXT, rng, 0.0, 0.0, 1.0).split()
    assert len(inserted) == 2 * len(words) and set(inserted) == set(words)  # copies of its own words
    vocab = augment(TEXT, rng, 0.0, 0.0, 1.0, vocabulary=["zebra"]).split()
    assert vocab.count("zebra") == len(words)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="p_delete"):
        augment(TEXT, random.Random(0), p_delete=1.5)
    with pytest.raises(ConfigError, match="copies"):
        augment_records([{"text": TEXT}], copies=-1)
    with pytest.raises(ConfigError, match="row 2.*'text'"):
        augment_records([{"text": TEXT}, {"body": TEXT}])


@pytest.mark.parametrize("task", ["causal_lm", "token_classification"])
def test_tasks_without_text_to_edit_refuse_augmentation(task):
    from tuneforge.config import load_config
    from tuneforge.data.augment import augment_train
    from tuneforge.tasks import get

    cfg = load_config(None, {"model": {"task": task}, "forgetting": {"augment": {"copies": 2}}})
    records = [{"text": TEXT}]
    with pytest.raises(ConfigError, match=f"a {task} run has no text that word-level augmentation may change"):
        augment_train(records, cfg, get(task).augment_columns(cfg))
    assert augment_train(records, load_config(None, {"model": {"task": task}}), []) == records  # copies 0: as is
