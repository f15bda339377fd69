"""Forgetting inside a run (``forgetting:`` config section): measure what the model knew before and after
training, mix replay data into the training split, and build L2-SP / EWC regularisers for the loop.

Measurement ("probes"):
* causal LM: perplexity on reference data not in training (``forgetting.reference``; the embedded chat
  model defaults to held-out ``chitchat`` conversations);
* classification, sequential: ``forgetting.previous_run`` names the task-1 run. Its merged backbone starts
  this run, and task-1 accuracy is measured on its own test split with its own head swapped in.
"""
from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data.batching import collate
from tuneforge.forgetting.regularize import EWC, L2SP
from tuneforge.forgetting.replay import mix
from tuneforge.tasks import Prepared, Runtime

DEFAULT_REFERENCE = {"smollm2": "chitchat"}  # embedded chat model -> its default reference data


@dataclass
class Probe:
    """Measures "what the model knew" on the current weights."""
    name: str  # e.g. "chitchat perplexity"
    metric: str  # accuracy | perplexity
    measure: Callable[[nn.Module], float]
    examples: list[dict[str, Any]]  # what it measures on
    loss: Callable[[nn.Module, dict[str, Any]], Any]  # loss of one collated batch (for the Fisher)
    fisher_examples: list[dict[str, Any]]  # EWC's Fisher data: same source, none of the measured examples
    heads: dict[str, nn.Module] | None = None  # task-1 head modules to swap in (sequential classification)


def _sample(examples: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    return examples[:n]


@contextmanager
def start_model(cfg: RunConfig) -> Iterator[tuple[Any | None, Path]]:
    """(task-1 Run or None, model folder) a run starts from: ``model.name``, or in the sequential set-up
    (``forgetting.previous_run``) task 1's merged model, in a temporary folder removed on exit."""
    from tuneforge import assets
    from tuneforge.run import load

    if not cfg.forgetting.previous_run:
        yield None, assets.resolve_model(cfg.model.name)
        return
    prev = load(cfg.forgetting.previous_run)
    if prev.cfg.model.task != cfg.model.task:
        raise ConfigError("forgetting.previous_run must be a run of the same task (model.task)")
    with tempfile.TemporaryDirectory(prefix="tuneforge-task1-") as tmp:
        folder = Path(tmp) / "model"
        prev.merge(folder)  # ConfigError for methods that cannot merge into the backbone
        yield prev, folder


def task1_probe(prev: Any, heads: list[str], rt: Runtime) -> Probe:
    """Task-1 accuracy of the current backbone with task 1's own head, on task 1's test split (EWC's Fisher:
    task 1's training split)."""
    task1 = prev.task.prepare(prev.cfg, prev.tokenizer)
    examples = task1.test
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
        return swapped(model, lambda: prev.task.evaluate(model, examples, rt, prev.cfg, prev.meta))["accuracy"]

    def loss(model: nn.Module, batch: dict[str, Any]) -> Any:
        return swapped(model, lambda: prev.task.loss(model, batch))

    name = prev.cfg.data.dataset or prev.cfg.data.train_file
    return Probe(f"task 1 ({name}) accuracy", "accuracy", measure, examples, loss, task1.train, own)


def reference_probe(cfg: RunConfig, task: Any, tokenizer: Any, rt: Runtime, meta: dict[str, Any]) -> Probe | None:
    """Perplexity on reference data (causal LM), or None when none applies or it is ``"none"``. A seeded
    sample of ``reference_examples`` is measured; up to as many others of the same source are EWC's Fisher data."""
    name = cfg.forgetting.reference or DEFAULT_REFERENCE.get(cfg.model.name)
    if name in (None, "none") or task.name != "causal_lm":
        return None
    n = cfg.forgetting.reference_examples
    pool = _sample(task.encode_file(name, cfg, tokenizer, meta, limit=4 * n), 2 * n, cfg.data.seed)
    examples = pool[:n]

    def measure(model: nn.Module) -> float:
        return task.evaluate(model, examples, rt, cfg, meta)["perplexity"]

    return Probe(f"{name} perplexity", "perplexity", measure, examples, task.loss, pool[n:])


def mix_replay(cfg: RunConfig, task: Any, tokenizer: Any, data: Prepared, probe: Probe | None) -> Prepared:
    """Replay: a ``ratio`` share of each epoch comes from ``forgetting.replay.data`` (examples that the probe
    measures on are left out, so replay never trains on the reference set)."""
    r = cfg.forgetting.replay
    if r.ratio == 0:
        return data
    pool = task.encode_file(r.data, cfg, tokenizer, data.meta)
    if probe is not None:
        held_out = {tuple(e["input_ids"]) for e in probe.examples}
        pool = [e for e in pool if tuple(e["input_ids"]) not in held_out]
    if "labels" in pool[0] and isinstance(pool[0]["labels"], int) and any(e["labels"] < 0 for e in pool):
        raise ConfigError(f"forgetting.replay.data {r.data}: every replay example needs a label of this task")
    data.train = mix(data.train, pool, r.ratio, cfg.train.seed)
    return data


def regularizers(cfg: RunConfig, model: nn.Module, pretrained: set[str], heads: list[str], probe: Probe | None,
                 rt: Runtime) -> tuple[Any, ...]:
    """L2-SP or EWC anchored at the current (pre-trained) weights, as configured."""
    g = cfg.forgetting.regularize
    if g.kind == "none" or g.strength == 0:
        return ()
    if g.kind == "l2sp":
        return (L2SP(model, g.strength, exclude=heads, pretrained=pretrained),)
    if probe is None:
        raise ConfigError("forgetting.regularize.kind=ewc needs reference data: set forgetting.reference "
                          "(causal LM) or forgetting.previous_run (classification)")
    if not probe.fisher_examples:
        raise ConfigError(f"forgetting.regularize.kind=ewc: no data to estimate the Fisher on ({probe.name}: "
                          "the reference set is too small to leave examples beside the measured ones)")
    batches = [{k: v.to(rt.device) for k, v in collate([e], rt.pad_id).items()}
               for e in _sample(probe.fisher_examples, g.fisher_batches, cfg.data.seed)]
    return (EWC.from_reference(model, probe.loss, batches, g.strength, exclude=heads, pretrained=pretrained),)


def summary(probe: Probe | None, before: float | None, after: float | None) -> dict[str, Any]:
    """Before/after/change of the probe for metrics.json and the result table."""
    if probe is None:
        return {}
    change = None if before is None or after is None else after - before
    return {"reference": probe.name, "metric": probe.metric, "before": before, "after": after, "change": change}
