"""Metrics computed from real predictions: classification (accuracy, F1) and text generation."""
from __future__ import annotations

import math
from collections.abc import Sequence


def classification_metrics(preds: Sequence[int], labels: Sequence[int], names: Sequence[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    n = len(labels)
    per_class = {}
    f1s = []
    for k, name in enumerate(names):
        tp = sum(1 for p, y in zip(preds, labels) if p == k and y == k)
        fp = sum(1 for p, y in zip(preds, labels) if p == k and y != k)
        fn = sum(1 for p, y in zip(preds, labels) if p != k and y == k)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
        f1s.append(f1)
    accuracy = sum(1 for p, y in zip(preds, labels) if p == y) / n if n else 0.0
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0, "per_class": per_class, "n": n}


def perplexity(loss: float) -> float:
    """exp of the mean per-token cross-entropy (nats); inf when it overflows."""
    return math.exp(loss) if loss < 700 else math.inf


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacreBLEU, 0-100, default 13a tokenisation) of one reference per hypothesis."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (rouge-score, stemmed, 0-1) over hypothesis/reference pairs."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return sum(scores) / len(scores) if scores else 0.0
