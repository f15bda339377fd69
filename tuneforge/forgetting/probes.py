"""Probes: what the model knew, measured on the current weights before and after a run.

* reference perplexity (``forgetting.reference``; the embedded chat model defaults to held-out ``chitchat``
  conversations): perplexity of reference text that is not in training;
* task 1 (``forgetting.previous_run``, sequential tasks): task 1's metric (accuracy, entity F1; perplexity for
  causal LM and seq2seq) of the current backbone with task 1's own head, on task 1's test split.

``forgetting.probe_split=validation`` measures every probe on held-out examples disjoint from the test-side
ones (task 1's validation split, other reference rows, other general prompts, the sentiment validation
split): what ``tuneforge mitigate`` chooses on, so that the reported test-side numbers are not chosen on.
"""
from __future__ import annotations

import contextlib
import io
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data.chat import IGNORE
from tuneforge.data import dataset
from tuneforge.data.dataset import normalise, source_records
from tuneforge.models import autocast
from tuneforge.tasks import Runtime, Task


@dataclass
class Probe:
    """Measures "what the model knew" on the current weights."""
    name: str  # e.g. "chitchat perplexity"
    metric: str  # perplexity, else task 1's own: accuracy, f1 (entities)
    measure: Callable[[nn.Module], float]
    examples: list[dict[str, Any]]  # what it measures on
    loss: Callable[[nn.Module, dict[str, Any]], Any]  # summed loss of one collated batch (for the Fisher)
    fisher_examples: list[dict[str, Any]]  # EWC's Fisher data: same source, none of the measured examples
    keys: set[str]  # input texts of the measured examples (never trained on by replay)
    heads: dict[str, nn.Module] | None = None  # task-1 head modules to swap in (sequential classification)


def sample(items: list[Any], n: int, seed: int) -> list[Any]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def mean_loss(task: Task, model: nn.Module, batch: dict[str, Any]) -> Any:
    """The batch's loss averaged over its units (what EWC's Fisher differentiates)."""
    return task.loss(model, batch) / max(task.units(batch), 1)


def task1_probe(prev: Any, heads: list[str], rt: Runtime, split: str = "test") -> Probe:
    """Task 1's metric (accuracy, entity F1; perplexity for a task that generates text) of the current backbone
    with task 1's own head, on task 1's test (or validation) split (EWC's Fisher: task 1's training split).
    ``prev`` is the reloaded task-1 run (``tuneforge.loaded.Run``)."""
    metric = "perplexity" if "perplexity" in prev.task.table_metrics else prev.task.metric
    task1 = prev.prepared()
    examples = task1.validation if split == "validation" else task1.test
    if not examples:
        raise ConfigError(f"forgetting.probe_split={split}: task 1's {split} split is empty")
    own = {h: getattr(prev.model, h).to(rt.device) for h in heads}

    def swapped(model: nn.Module, fn: Callable[[], Any]) -> Any:
        saved = {h: getattr(model, h) for h in heads}
        for h, module in own.items():
            setattr(model, h, module)
        try:
            return fn()
        finally:
            for h, module in saved.items():
                setattr(model, h, module)

    def measure(model: nn.Module) -> float:
        return swapped(model, lambda: prev.task.evaluate(model, examples, rt, prev.cfg, prev.meta))[metric]

    def loss(model: nn.Module, batch: dict[str, Any]) -> Any:
        return swapped(model, lambda: mean_loss(prev.task, model, batch))

    return Probe(f"task 1 ({prev.cfg.data.source}) {split} {metric}", metric, measure, examples, loss, task1.train,
                 _held_out_keys(prev), own)


def _held_out_keys(prev: Any) -> set[str]:
    """The input texts of task 1's validation and test rows, normalised: replay trains on none of them, whatever
    the length or template task 2 encodes them with (both sides, as the other probes: ``mitigate`` measures the
    validation side, the report the test side)."""
    with contextlib.redirect_stderr(io.StringIO()):  # reading notes: said when task 1 trained
        rows = [r for split in ("validation", "test")
                for r in dataset.restore(prev.files.split(), split, prev.task, prev.cfg)[0]]
    return {normalise(prev.task.input_text(r, prev.cfg)) for r in rows}


def reference_probe(cfg: RunConfig, task: Task, tokenizer: Any, rt: Runtime, meta: dict[str, Any]) -> Probe | None:
    """Perplexity on reference data, or None when none applies (``"none"``, or a task without a default).
    A seeded sample of ``reference_examples`` is measured (``probe_split=validation``: the next as many, disjoint);
    up to as many others of the same source are EWC's Fisher data."""
    name = cfg.forgetting.reference or task.default_reference(cfg)
    if name in (None, "none"):
        return None
    n = cfg.forgetting.reference_examples
    try:
        records, where = source_records(task, name, cfg)
    except ConfigError as exc:  # a missing file, a row of another layout
        raise ConfigError(f"forgetting.reference: {exc}") from None
    if 4 * n < len(records):  # a seeded sample of 4n rows (in source order), 2n of them drawn again
        rows = sorted(random.Random(cfg.data.seed).sample(range(len(records)), 4 * n))
        records, where = [records[i] for i in rows], [where[i] for i in rows]
    chosen = sample(list(zip(records, where)), 3 * n, cfg.data.seed)  # test side, Fisher, validation side
    pool = task.encode_any([r for r, _ in chosen], cfg, tokenizer, meta, [w for _, w in chosen])
    validation = cfg.forgetting.probe_split == "validation"
    examples = pool[2 * n:] if validation else pool[:n]
    if not examples:
        raise ConfigError(f"forgetting.probe_split=validation: {name} has too few rows for validation-side "
                          f"reference examples beside {2 * n} others; lower forgetting.reference_examples")
    keys = {normalise(task.input_text(r, cfg)) for r, _ in chosen[:n] + chosen[2 * n:]}  # both sides: never replayed

    def measure(model: nn.Module) -> float:
        metrics = task.evaluate(model, examples, rt, cfg, meta)
        if "perplexity" not in metrics:
            raise ConfigError(f"forgetting.reference measures perplexity; a {task.name} run has none: "
                              "use forgetting.previous_run, or forgetting.reference=none")
        return metrics["perplexity"]

    side = " (validation)" if validation else ""
    return Probe(f"{name}{side} perplexity", "perplexity", measure, examples, lambda m, b: mean_loss(task, m, b),
                 pool[n:2 * n], keys)


# ---- capability probes for causal LMs ------------------------------------------------------------------------

GENERAL_PROMPTS = "chitchat"  # embedded conversations whose first user turns are the held-out general prompts
# data set, prompt, its labels and the word that names each label after the prompt
SENTIMENT = ("rotten_tomatoes", "Review: {text}\nSentiment:", ("negative", "positive"), ("negative", "positive"))


def general_prompts(n: int, seed: int, exclude: set[str] = frozenset(), skip: int = 0) -> list[str]:
    """``n`` distinct first user turns of the embedded chitchat conversations (seeded order; ``skip`` the first
    ones, e.g. those a probe uses), leaving out any in ``exclude``."""
    from tuneforge.data import embedded

    seen, prompts = set(exclude), []
    for record in embedded.load(GENERAL_PROMPTS):
        text = next((m["content"] for m in record["messages"] if m["role"] == "user"), "").strip()
        if 3 <= len(text.split()) <= 40 and normalise(text) not in seen:
            seen.add(normalise(text))
            prompts.append(text)
    return sample(prompts, len(prompts), seed)[skip:skip + n]


def own_answers(model: nn.Module, task: Task, cfg: RunConfig, tokenizer: Any, rt: Runtime, meta: dict[str, Any],
                prompts: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chat records pairing prompts with the model's own greedy answers, and their encoded examples (empty
    answers left out). An answer that ``eval.max_new_tokens`` cut has no end: its end-of-turn tokens do not
    count (the model never said them; scored, they cost tens of nats each)."""
    from tuneforge.generate import answer_ids, answer_text

    limit = cfg.eval.max_new_tokens
    new = answer_ids(model, tokenizer, meta, cfg, rt, prompts, max_new_tokens=limit)
    answers = [(p, answer_text(tokenizer, ids), len(ids) >= limit) for p, ids in zip(prompts, new)]
    answers = [(p, a, cut) for p, a, cut in answers if a]
    records = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]} for p, a, _ in answers]
    examples = task.encode(records, cfg, tokenizer, {**meta, "format": "chat"},
                           [f"own answer {i + 1}" for i in range(len(records))])
    pairs = [(r, without_end(e, tokenizer(a, add_special_tokens=False)["input_ids"]) if cut else e)
             for r, e, (_, a, cut) in zip(records, examples, answers)]
    kept = [(r, e) for r, e in pairs if e is not None]
    return [r for r, _ in kept], [e for _, e in kept]


def without_end(example: dict[str, Any], content: list[int]) -> dict[str, Any] | None:
    """``example`` with only its answer's ``content`` tokens trained (its end-of-turn tokens masked), or None
    when its trained tokens do not start with ``content`` (a template that rewrites the answer)."""
    labels = example["labels"]
    trained = [i for i, y in enumerate(labels) if y != IGNORE]
    n = min(len(content), len(trained))  # model.max_length may have cut the answer itself
    if not n or [labels[i] for i in trained[:n]] != content[:n]:
        return None
    masked = list(labels)
    for i in trained[n:]:
        masked[i] = IGNORE
    return {**example, "labels": masked}


def own_answers_probe(model: nn.Module, cfg: RunConfig, task: Task, tokenizer: Any, rt: Runtime,
                      meta: dict[str, Any], required: bool = True) -> Probe | None:
    """Perplexity of the untrained model's own greedy answers to held-out general prompts: what it could
    already do. Fine-tuning that keeps those abilities keeps this perplexity; forgetting raises it. A model
    that answers none of the prompts (it ends every answer at once) gives nothing to measure: an error when
    ``required``, else a warning and None."""

    n = cfg.forgetting.probe_prompts
    both = general_prompts(2 * n, cfg.data.seed)  # test side, then validation side (disjoint)
    prompts = both[n:] if cfg.forgetting.probe_split == "validation" else both[:n]
    if not prompts:
        raise ConfigError(f"forgetting.probe_split=validation: too few {GENERAL_PROMPTS} prompts beside the {n} "
                          "test-side ones; lower forgetting.probe_prompts")
    _, examples = own_answers(model, task, cfg, tokenizer, rt, meta, prompts)
    if not examples:
        why = (f"the untrained model answered none of the {len(prompts)} {GENERAL_PROMPTS} prompts (each answer "
               "ended at once), so its own answers cannot measure forgetting")
        if required:
            raise ConfigError(f"forgetting.probes: own_answers: {why}; choose forgetting.probes: [reference] or [none]")
        print(f"warning: {why}; that probe is left out", file=sys.stderr)
        return None
    chat_meta = {**meta, "format": "chat"}

    def measure(m: nn.Module) -> float:
        return task.evaluate(m, examples, rt, cfg, chat_meta)["perplexity"]

    side = " validation" if cfg.forgetting.probe_split == "validation" else ""
    return Probe(f"own answers ({len(examples)} {GENERAL_PROMPTS}{side} prompts) perplexity", "perplexity", measure,
                 examples, lambda m, b: mean_loss(task, m, b), [], {normalise(p) for p in both})


def sentiment_probe(model: nn.Module, cfg: RunConfig, tokenizer: Any, rt: Runtime, calibrated: bool,
                    required: bool = True) -> Probe | None:
    """Zero-shot Rotten Tomatoes sentiment accuracy from a prompt (``tuneforge calibrate``'s machinery) on a
    seeded sample of the test split: a task the model could do before training, measured after too. None
    (unless ``required``) when the tokenizer cannot encode the label words."""
    from tuneforge.config import load_config
    from tuneforge.data.dataset import load_splits
    from tuneforge.prompting.calibration import PromptClassifier
    from tuneforge.prompting.classify import check_label_words, scored_words
    from tuneforge.tasks.classification import Task as Classification

    data, template, labels, words = SENTIMENT
    name = "sentiment_calibrated" if calibrated else "sentiment"
    try:
        check_label_words(tokenizer, scored_words(list(words), template), list(labels), cfg.model.name)
    except ConfigError as exc:
        why = (f"the {name} probe scores the label words {', '.join(map(repr, words))} (zero-shot Rotten Tomatoes), "
               f"and {str(exc).split(';')[0]}")
        if required:
            raise ConfigError(f"forgetting.probes: {why}; leave {name} out of forgetting.probes") from None
        print(f"warning: {why}; that probe is left out", file=sys.stderr)
        return None
    test = load_splits(load_config(None, {"data": {"dataset": data, "seed": cfg.data.seed}}), Classification())
    sides = {side: sample(test.records[side], cfg.forgetting.probe_examples, cfg.data.seed)
             for side in ("test", "validation")}  # both sides never replayed: either may be measured
    rows = sides[cfg.forgetting.probe_split]
    texts, gold = [str(r["text"]) for r in rows], [list(labels).index(str(r["label"])) for r in rows]
    scored = scored_words(list(words), template)

    def measure(m: nn.Module) -> float:
        clf = PromptClassifier(m, tokenizer, template, scored, batch_size=cfg.eval.batch_size)
        was = m.training
        m.eval()
        try:
            with autocast(rt.device, rt.bf16):  # a bf16 run stores frozen weights in bf16
                result = clf.evaluate(texts, gold)
        finally:
            m.train(was)
        return result["accuracy_calibrated" if calibrated else "accuracy"]

    side = " (validation)" if cfg.forgetting.probe_split == "validation" else ""
    name = f"zero-shot {data}{side} sentiment accuracy{' (calibrated)' if calibrated else ''}"
    keys = {normalise(str(r["text"])) for side in sides.values() for r in side}
    return Probe(name, "accuracy", measure, [], lambda m, b: None, [], keys)
