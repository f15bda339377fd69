"""Evaluate prompt classification of a labelled data set with a causal LM, with and without contextual
calibration: the logic behind ``tuneforge calibrate`` (the scoring itself is :mod:`.calibration`).

The data come from tuneforge's own readers and seeded stratified split (the same test split a fine-tuned
classifier of that data is tested on); few-shot demonstrations are drawn from the train split. Label words
map to the labels in tuneforge's label order (sorted names, numbers numerically), one word per label.
"""
from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tuneforge import assets
from tuneforge.checkpoint import save_json
from tuneforge.files import check_writable
from tuneforge.config import ConfigError, load_config
from tuneforge.data.dataset import load_splits
from tuneforge.data.dataset import warnings as dataset_warnings
from tuneforge.evaluate import classification_metrics
from tuneforge.prompting.calibration import (
    CONTENT_FREE, Mode, PromptClassifier, apply_calibration, contextual_calibration,
)
from tuneforge.data.labels import label_key, label_names
from tuneforge.tasks.classification import Task as Classification

GENERIC_TEMPLATE = "Text: {text}\nLabel:"
TEMPLATES = {"rotten_tomatoes": "Review: {text}\nSentiment:", "imdb": "Review: {text}\nSentiment:"}


def default_template(data: str) -> str:
    """The prompt template used when none is given: a sentiment prompt for the embedded review sets."""
    return TEMPLATES.get(data, GENERIC_TEMPLATE)


def check_template(template: str) -> None:
    if "{text}" not in template:
        raise ConfigError(f"--template {template!r} has no '{{text}}'; put {{text}} where the input text goes")


def check_output(output: str | Path | None, overwrite: bool, data: str | Path | None = None) -> None:
    """Refuse to replace an existing results file unless ``overwrite``, the ``data`` file itself, a folder, and a
    path under a file, before any scoring is done."""
    if output is None:
        return
    path = Path(output)
    if data is not None and path.exists() and Path(data).exists() and path.samefile(data):
        raise ConfigError(f"output file {output} is the --data file; write the results elsewhere")
    if path.is_dir():
        raise ConfigError(f"output file {output} is a folder; give a file path (e.g. {path / 'calibrate.json'})")
    if path.exists() and not overwrite:
        raise ConfigError(f"output file {output} already exists; choose another path or pass --overwrite")
    above = next((a for a in path.parents if a.exists()), None)
    if above is not None and not above.is_dir():
        raise ConfigError(f"output file {output}: {above} is a file, not a folder")
    if above is not None:  # a folder that takes no files (read-only, /proc): found now, not after the scoring
        check_writable(above, output)


def scored_words(words: Sequence[str], template: str) -> list[str]:
    """Label words as they follow the template: stripped, then one leading space unless the template ends in
    whitespace (so "positive" after "Sentiment:" is scored as the token of " positive")."""
    space = "" if template[-1:].isspace() else " "
    return [space + w.strip() for w in words]


def check_label_words(tokenizer: Any, words: Sequence[str], labels: Sequence[str], model: str) -> None:
    """One encodable word per label: not empty, not mapped to the tokenizer's unknown token."""
    if len(words) != len(labels):
        raise ConfigError(f"--label-words gives {len(words)} words for {len(labels)} labels ({', '.join(labels)}); "
                          "give one word per label, comma-separated in this order")
    seen = [w.strip() for w in words]
    again = next((w for i, w in enumerate(seen) if w in seen[:i]), None)
    if again is not None:
        raise ConfigError(f"label word {again!r} is given for two labels; give each label a word of its own")
    unk = tokenizer.unk_token_id
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not word.strip() or not ids or (unk is not None and unk in ids):
            raise ConfigError(f"label word {word.strip()!r} cannot be encoded by the tokenizer of {model} "
                              "(no tokens, or the unknown token); choose a word in its vocabulary")


def _metrics(pred: torch.Tensor, gold: list[int], labels: Sequence[str]) -> dict[str, Any]:
    m = classification_metrics(pred.tolist(), gold, labels)
    counts = torch.bincount(pred, minlength=len(labels)).tolist()
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "predicted_share": {name: c / len(gold) for name, c in zip(labels, counts)}}


def evaluate_prompting(model: str = "smollm2", data: str = "rotten_tomatoes", template: str | None = None,
                       label_words: Sequence[str] | None = None, shots: int = 0,
                       content_free: Sequence[str] = CONTENT_FREE, limit: int | None = None, seed: int = 42,
                       text_column: str = "text", label_column: str = "label", mode: Mode = "first_token",
                       batch_size: int = 16, device: str = "auto", skip_invalid: bool = False) -> dict[str, Any]:
    """Classify the test split of ``data`` (an embedded name or a data file) with causal LM ``model`` from
    ``template`` and ``label_words`` (default: the label names), zero-shot or with ``shots`` demonstrations
    drawn from the train split; ``limit`` test examples are a seeded sample. Returns accuracy and macro-F1
    without and with contextual calibration, predicted label shares, the content-free probabilities and every
    prediction (text, gold label, label without and with calibration)."""
    from transformers import AutoModelForCausalLM

    from tuneforge.models import load_pretrained, load_tokenizer, resolve_device

    template = template if template is not None else default_template(data)
    check_template(template)
    if shots < 0 or (limit is not None and limit <= 0) or batch_size <= 0:
        raise ConfigError("--shots must be >= 0, --limit and --batch-size positive")
    cfg = load_config(None, {"data": {"dataset": data, "text_column": text_column, "label_column": label_column,
                                      "seed": seed, "skip_invalid": skip_invalid}})
    splits = load_splits(cfg, Classification())  # the split a fine-tuned classifier of this data is tested on
    train, test = splits.records["train"], splits.records["test"]
    labels = label_names([r[label_column] for r in train])
    index = {name: i for i, name in enumerate(labels)}
    test = [r for r in test if label_key(r[label_column]) in index]
    if not test:
        raise ConfigError(f"data {data}: the test split has no example of a label seen in training")
    if limit is not None and limit < len(test):
        test = random.Random(seed).sample(test, limit)
    if shots > len(train):
        raise ConfigError(f"--shots {shots} is more than the {len(train)} training examples")
    demos = [(str(r[text_column]), index[label_key(r[label_column])]) for r in random.Random(seed).sample(train, shots)]
    path = assets.resolve_model(model)
    tokenizer = load_tokenizer(path)
    words = scored_words(label_words if label_words is not None else labels, template)
    check_label_words(tokenizer, words, labels, model)
    lm, fresh = load_pretrained(AutoModelForCausalLM, path)
    if fresh:  # e.g. an encoder such as MiniLM: its "LM head" would be random and its scores meaningless
        raise ConfigError(f"--model {model} is not a trained causal language model (loading it as one left "
                          f"{', '.join(fresh[:3])} newly initialised); use a causal LM such as smollm2")
    lm.to(resolve_device(device, "--device"))
    for line in dataset_warnings(splits, trains=False):  # every setting checked: duplicates, conflicts, skipped rows
        print(line, file=sys.stderr)
    clf = PromptClassifier(lm, tokenizer, template, words, demos, tuple(content_free), mode=mode,
                           batch_size=batch_size)
    started = time.perf_counter()
    texts, gold = [str(r[text_column]) for r in test], [index[label_key(r[label_column])] for r in test]
    probs = clf.scores(texts)  # (n, k)
    p_cf = clf.content_free_scores()  # (m, k)
    raw, cal = probs.argmax(-1), apply_calibration(probs, contextual_calibration(p_cf)).argmax(-1)
    return {
        "model": model, "data": data, "template": template, "labels": labels, "label_words": words, "mode": mode,
        "shots": shots, "demonstrations": [{"text": t, "label": labels[y]} for t, y in demos], "seed": seed,
        "n": len(texts), "content_free": list(content_free),
        "p_content_free": dict(zip(labels, p_cf.mean(0).tolist())),
        "p_content_free_each": {c: dict(zip(labels, p.tolist())) for c, p in zip(content_free, p_cf)},
        "uncalibrated": _metrics(raw, gold, labels), "calibrated": _metrics(cal, gold, labels),
        "predictions": [{"text": t, "label": labels[y], "uncalibrated": labels[a], "calibrated": labels[b]}
                        for t, y, a, b in zip(texts, gold, raw.tolist(), cal.tolist())],
        "seconds": time.perf_counter() - started,
    }


def result_table(result: dict[str, Any]) -> str:
    """A small markdown table of :func:`evaluate_prompting`'s result."""
    labels = result["labels"]
    shares = " / ".join(labels)
    lines = [f"{result['model']} on {result['data']}: {result['n']} test examples, {result['shots']}-shot, "
             f"label words {', '.join(repr(w) for w in result['label_words'])}", "",
             f"| | accuracy | macro-F1 | predicted share ({shares}) |", "|---|---|---|---|"]
    for name in ("uncalibrated", "calibrated"):
        m = result[name]
        share = " / ".join(f"{m['predicted_share'][k]:.2f}" for k in labels)
        lines.append(f"| {name} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {share} |")
    cf = ", ".join(f"{k} {v:.3f}" for k, v in result["p_content_free"].items())
    inputs = ", ".join(repr(c) for c in result["content_free"])
    lines += ["", f"content-free label probabilities (mean over {inputs}): {cf}"]
    return "\n".join(lines)


def write_result(result: dict[str, Any], output: str | Path, overwrite: bool = False) -> Path:
    """Write the result as JSON (refusing an existing file unless ``overwrite``)."""
    check_output(output, overwrite)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json(result, path)
    return path
