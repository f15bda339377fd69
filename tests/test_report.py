"""The one-line "nothing learned" warning and the result table (tuneforge/report.py), from metrics dicts."""
from types import SimpleNamespace

import pytest

from tuneforge.report import learned_warning

CLASSIFIER = SimpleNamespace(metric="accuracy", greater_is_better=True)
LM = SimpleNamespace(metric="perplexity", greater_is_better=False)
BALANCED = {"a": {"support": 50}, "b": {"support": 50}}  # majority class: 0.5


def _metrics(after, before=None, loss=(2.0, 1.0)):
    return {"test_after": after, "test_before": before or {},
            "training_loss": {"first": loss[0], "last": loss[1], "logged": 10}}


@pytest.mark.parametrize("before, start", [
    ({"accuracy": 0.48}, "test accuracy 0.4800 -> 0.5000 is not clearly better than the untrained model / the "
                         "majority class (0.5000): "),
    (None, "test accuracy 0.5000 is not clearly better than the majority class (0.5000): "),  # eval.before=false
])
def test_the_warning_names_only_the_baselines_it_measured(before, start):
    warning = learned_warning(_metrics({"accuracy": 0.5, "n": 100, "per_class": BALANCED}, before), CLASSIFIER)
    assert warning == "the model learned little: " + start + \
        "try more steps (train.epochs / train.max_steps), a higher train.lr, or check the labels"


def test_a_clear_gain_over_every_baseline_is_quiet():
    assert learned_warning(_metrics({"accuracy": 0.8, "n": 100, "per_class": BALANCED}, {"accuracy": 0.5}),
                           CLASSIFIER) is None
    assert learned_warning(_metrics({"perplexity": 8.0}, {"perplexity": 20.0}), LM) is None


def test_a_perplexity_that_barely_moved_and_a_flat_loss_are_named():
    warning = learned_warning(_metrics({"perplexity": 19.9}, {"perplexity": 20.0}), LM)
    assert "test perplexity 20.0000 -> 19.9000 is not clearly better than the untrained model: " in warning
    flat = learned_warning(_metrics({"perplexity": 8.0}, None, loss=(2.0, 1.99)), LM)  # no untrained measurement
    assert flat.startswith("the training loss did not clearly fall (2.0000 -> 1.9900, under 2 %)")
    flat = learned_warning(_metrics({"perplexity": 19.9}, {"perplexity": 20.0}, loss=(2.0, 1.99)), LM)
    assert flat.startswith("the training loss did not clearly fall")


def test_a_clear_test_gain_is_not_contradicted_by_a_flat_training_loss():
    """Test accuracy 0.5 -> 1.0 on 16 sentences, and the warning said the loss did not clearly fall (0.6943 ->
    0.6904: a classifier's decisions can cross over while its mean loss barely moves)."""
    gain = _metrics({"accuracy": 1.0, "n": 16, "per_class": {"a": {"support": 8}, "b": {"support": 8}}},
                    {"accuracy": 0.5}, loss=(0.6943, 0.6904))
    assert learned_warning(gain, CLASSIFIER) is None


def test_a_taggers_examples_are_predictions_each_sentence_once():
    """A token classifier's examples read as generated answers to a prompt, 'greedy', and a sentence the test
    split holds twice was shown twice."""
    from tuneforge.report import _samples
    from tuneforge.tasks.token_classification import _samples as tagger_samples

    words = [{"tokens": ["Ada", "lives", "here"]}, {"tokens": ["Ada", "lives", "here"]}, {"tokens": ["Bo", "runs"]}]
    gold = [["B-PER", "O", "O"], ["B-PER", "O", "O"], ["B-PER", "O"]]
    samples = tagger_samples(words, gold, gold)
    assert [s["prompt"] for s in samples] == ["Ada lives here", "Bo runs"]
    text = _samples({}, {"samples": samples})
    assert "example predictions (test split):" in text and "  input:     Ada lives here" in text
    assert "greedy" not in text and "prompt:" not in text
    answers = _samples({}, {"samples": [{"prompt": "hi", "reference": "hello", "generated": "hey"}]})
    assert "example answers (test split, greedy):" in answers and "  prompt:    hi" in answers
