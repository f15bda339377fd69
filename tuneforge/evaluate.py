"""Metrics computed from real predictions: classification (accuracy, F1) and text generation."""
from __future__ import annotations

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
