"""Metrics equal the reference libraries: scikit-learn, seqeval (default mode), sacreBLEU, rouge-score."""
import math
import random
import warnings

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from tuneforge.evaluate import (bleu, by_prompt, classification_metrics, entity_metrics, get_entities,
                                invalid_transitions, perplexity, rouge_l, RougeWords)

TOL = 1e-9


def _sklearn_check(preds, labels, names):
    m = classification_metrics(preds, labels, names)
    present = sorted(set(preds) | set(labels))
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds), abs=TOL)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro", zero_division=0), abs=TOL)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=present, zero_division=0)
    assert list(m["per_class"]) == [names[k] for k in present]
    for i, k in enumerate(present):
        c = m["per_class"][names[k]]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((p[i], r[i], f[i]), abs=TOL)
        assert c["support"] == s[i]
    assert m["n"] == len(labels)


def test_perfect_predictions_with_a_class_missing_from_the_test_set_score_one():
    m = classification_metrics([0, 1, 0], [0, 1, 0], ["a", "b", "c"])
    assert m["macro_f1"] == 1.0 and set(m["per_class"]) == {"a", "b"}


@pytest.mark.parametrize("seed", range(200))
def test_classification_matches_scikit_learn(seed):
    rng = random.Random(seed)
    k = rng.randint(1, 6)
    names = [f"c{i}" for i in range(k)]
    n = rng.randint(1, 40)
    gold_classes = rng.sample(range(k), rng.randint(1, k))  # some classes missing from the gold labels
    pred_classes = rng.sample(range(k), rng.randint(1, k))  # some only in the predictions
    labels = [rng.choice(gold_classes) for _ in range(n)]
    preds = [y if rng.random() < 0.4 else rng.choice(pred_classes) for y in labels]
    _sklearn_check(preds, labels, names)


def test_classification_edge_cases():
    _sklearn_check([1, 1, 1], [0, 0, 0], ["neg", "pos"])  # no overlap at all
    _sklearn_check([2], [2], ["a", "b", "c"])
    assert classification_metrics([], [], ["a"]) == {"accuracy": 0.0, "macro_f1": 0.0, "per_class": {}, "n": 0}
    assert "3" in classification_metrics([3], [0], ["a"])["per_class"]  # an id without a name
    with pytest.raises(ValueError):
        classification_metrics([0], [0, 1], ["a", "b"])


# --- entities -------------------------------------------------------------------------------------------------

def _seqeval(gold, pred):
    from seqeval import metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning, "seems not to be NE tag"
        return {"f1": metrics.f1_score(gold, pred), "precision": metrics.precision_score(gold, pred),
                "recall": metrics.recall_score(gold, pred), "macro_f1": metrics.f1_score(gold, pred, average="macro"),
                "accuracy": metrics.accuracy_score(gold, pred),
                "report": metrics.classification_report(gold, pred, output_dict=True)}


def _seqeval_check(gold, pred, rename=lambda t: t):
    m, ref = entity_metrics(gold, pred), _seqeval(gold, pred)
    for key in ("f1", "precision", "recall", "macro_f1"):
        if key == "macro_f1" and not m["per_type"]:
            assert m[key] == 0.0 and math.isnan(ref[key])  # seqeval: mean of nothing
            continue
        assert m[key] == pytest.approx(float(ref[key]), abs=TOL), key
    assert m["token_accuracy"] == pytest.approx(ref["accuracy"], abs=TOL)
    report = {k: v for k, v in ref["report"].items() if not k.endswith(" avg")}
    assert sorted(rename(t) for t in m["per_type"]) == sorted(report)
    for t, c in m["per_type"].items():
        r = report[rename(t)]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx(
            (r["precision"], r["recall"], r["f1-score"]), abs=TOL)
        assert c["support"] == r["support"]
    assert m["n_sentences"] == len(gold)


def _random_tags(rng, n, alphabet):
    return [rng.choice(alphabet) for _ in range(n)]


BIO = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


@pytest.mark.parametrize("seed", range(150))
def test_entities_match_seqeval_on_random_bio_including_invalid(seed):
    rng = random.Random(seed)
    gold, pred = [], []
    for _ in range(rng.randint(1, 8)):
        n = rng.randint(0, 12)
        g = _random_tags(rng, n, BIO)  # random: many I-X after O or after another type
        gold.append(g)
        pred.append([t if rng.random() < 0.6 else rng.choice(BIO) for t in g])
    _seqeval_check(gold, pred)


@pytest.mark.parametrize("seed", range(60))
def test_entities_match_seqeval_on_iobes(seed):
    rng = random.Random(seed)
    tags = ["O", "B-A", "I-A", "E-A", "S-A", "B-B", "I-B", "E-B", "S-B"]
    gold = [_random_tags(rng, rng.randint(1, 10), tags) for _ in range(5)]
    pred = [[t if rng.random() < 0.5 else rng.choice(tags) for t in g] for g in gold]
    _seqeval_check(gold, pred)


@pytest.mark.parametrize("seed", range(60))
def test_entities_match_seqeval_on_plain_labels(seed):
    # seqeval reads the first letter of a plain label as its prefix and the rest as its type ("PER" -> "ER");
    # with these labels that is a renaming, and every maximal run of one label is one entity in both
    rng = random.Random(seed)
    tags = ["O", "O", "PER", "LOC", "MISC"]
    gold = [_random_tags(rng, rng.randint(1, 10), tags) for _ in range(5)]
    pred = [[t if rng.random() < 0.5 else rng.choice(tags) for t in g] for g in gold]
    _seqeval_check(gold, pred, rename=lambda t: t[1:])


def test_chunks_follow_conlleval():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == [
        ("PER", 1, 2), ("LOC", 3, 3), ("LOC", 4, 5)]
    assert get_entities(["PER", "PER", "O", "LOC", "PER"]) == [("PER", 0, 1), ("LOC", 3, 3), ("PER", 4, 4)]
    assert get_entities(["O", "B-X"]) == [("X", 1, 1)]  # an entity at the sentence end


def test_invalid_transitions():
    assert invalid_transitions(["B-PER", "I-PER", "O", "I-PER", "B-LOC", "I-PER"]) == 2
    assert invalid_transitions([["I-X"], ["B-X", "I-X"]]) == 1
    m = entity_metrics([["B-X", "I-X"]], [["I-X", "I-X"]])
    assert m["f1"] == 1.0 and m["invalid_gold"] == 0 and m["invalid_pred"] == 1


def test_entity_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="sentence 0"):
        entity_metrics([["O", "O"]], [["O"]])
    with pytest.raises(ValueError):
        entity_metrics([["O"]], [])


# --- generation -----------------------------------------------------------------------------------------------

WORDS = "the cat sat on a mat dog ran fast slow running cats mats and it was".split()


def _sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


@pytest.mark.parametrize("seed", range(20))
def test_bleu_and_rouge_match_the_libraries(seed):
    import sacrebleu
    from rouge_score import rouge_scorer

    rng = random.Random(seed)
    hyps = [_sentence(rng) for _ in range(rng.randint(1, 10))]
    refs = [_sentence(rng) if rng.random() < 0.7 else h for h in hyps]
    expected = sacrebleu.corpus_bleu(hyps, [refs], use_effective_order=True).score  # its short-answer option
    assert bleu(hyps, refs) == pytest.approx(expected, abs=TOL)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / len(hyps)
    assert rouge_l(hyps, refs) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("seed", range(10))
def test_several_references_score_as_the_libraries_score_them(seed):
    """A prompt the test split asks with several answers: sacreBLEU's multi-reference BLEU (absent references
    None), rouge-score's best reference (``score_multi``)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    rng = random.Random(seed)
    hyps = [_sentence(rng) for _ in range(rng.randint(1, 10))]
    refs = [[_sentence(rng) for _ in range(rng.randint(1, 3))] for _ in hyps]
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(3)]
    expected = sacrebleu.corpus_bleu(hyps, streams, use_effective_order=True).score  # its short-answer option
    assert bleu(hyps, refs) == pytest.approx(expected, abs=TOL)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(max(scorer.score(x, h)["rougeL"].fmeasure for x in r) for h, r in zip(hyps, refs)) / len(hyps)
    assert rouge_l(hyps, refs) == pytest.approx(expected, abs=TOL)
    assert bleu(["the cat sat on the mat"], [["a dog ran", "the cat sat on the mat"]]) == pytest.approx(100.0)


def test_a_prompt_asked_again_is_generated_once_with_every_reference():
    keys = ["a", "b", "a", "c", "d", "c", "a"]
    refs = ["a1", "b1", "a2", "c1", "d1", "c2", "a3"]
    assert by_prompt(keys, refs, 3) == [(0, ["a1", "a2", "a3"]), (1, ["b1"]), (3, ["c1", "c2"])]


@pytest.mark.parametrize("text", ["Don't run, U.S. cats!", "co-operate_now 42 times: Running & running...",
                                  "THE Cat's 3rd mat\tover\nlines", "", "  -- ", "naïve café 1.5"])
def test_rouge_words_are_rouge_scores_own_tokens_on_english_text(text):
    from rouge_score.tokenizers import DefaultTokenizer

    ours = RougeWords().tokenize(text)
    if text.isascii():
        assert ours == DefaultTokenizer(use_stemmer=True).tokenize(text)
    else:  # accented words stay whole words, where rouge-score cuts them at each accent
        assert "naïve" in ours and "café" in ours


def test_text_in_other_scripts_scores_as_text():
    same = ["Кошка сидит на ковре", "Η γάτα κάθεται", "我喜欢我的猫和狗", "猫がとても好きです"]
    assert rouge_l(same, same) == pytest.approx(1.0)  # rouge-score's own tokens: 0.0 for all four
    assert bleu(same, same) == pytest.approx(100.0)  # 13a: 0 for a Chinese or Japanese sentence (one word)
    assert rouge_l(["我喜欢猫"], ["我喜欢狗"]) == pytest.approx(0.75)  # a character is a word


def test_the_references_choose_bleus_tokeniser_never_the_answers():
    """One kana in one model answer had switched every English sentence to scoring by character (43.1 -> 68.3)."""
    import sacrebleu

    refs = ["see you later", "the cat sat on the mat", "good morning to you", "it is raining today"]
    hyps = ["see you later ア", "the cat sat on a mat", "good morning", "it rains today"]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=TOL)  # 13a
    mixed = ["see you later", "the cat sat on the mat", "good morning to you", "今天下雨"]  # any Chinese: zh
    answers = ["see you later", "the cat sat on a mat", "good morning", "今天下雨了"]
    by_zh = sacrebleu.corpus_bleu(answers, [mixed], tokenize="zh", use_effective_order=True).score
    assert bleu(answers, mixed) == pytest.approx(by_zh) and by_zh > sacrebleu.corpus_bleu(answers, [mixed]).score
    japanese = ["猫がとても好きです", "今日は雨です", "また後で", "see you"]  # most references: by character
    by_character = sacrebleu.corpus_bleu(hyps, [japanese], tokenize="char", use_effective_order=True).score
    assert bleu(hyps, japanese) == pytest.approx(by_character)


def test_short_answers_score_over_the_orders_they_have():
    """Perfect answers of one or two words ("Mars.", "Eight.") scored BLEU 0, as if training had made them worse."""
    import sacrebleu

    short = ["Hello!", "Mars.", "Eight.", "Yes"]
    assert bleu(short, short) == pytest.approx(100.0)
    assert 0 < bleu(["Hello there!", "Mars."], ["Hello you!", "Venus."]) < 100
    hyps = ["the cat sat on the mat today", "a dog ran in the park"]
    refs = ["the cat sat on a mat today", "the dog ran"]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=TOL)  # 4-grams: as before


def test_perplexity_is_exp_of_the_token_weighted_mean_loss():
    batch_sums, batch_tokens = [12.0, 3.0], [10, 2]  # batch means 1.2 and 1.5; token mean 15/12 = 1.25
    assert perplexity(sum(batch_sums) / sum(batch_tokens)) == pytest.approx(math.exp(1.25), abs=TOL)
    assert perplexity(1e4) == math.inf
