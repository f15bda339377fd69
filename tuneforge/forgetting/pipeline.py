"""Forgetting inside a run (``forgetting:`` config section): which probe measures what the model knew, replay
data mixed into the training split, and the L2-SP / EWC regulariser for the loop."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data.batching import collate
from tuneforge.data.dataset import normalise, source_records
from tuneforge.forgetting.probes import Probe, reference_probe, sample, task1_probe
from tuneforge.forgetting.regularize import EWC, L2SP
from tuneforge.forgetting.replay import mix
from tuneforge.tasks import Prepared, Runtime, Task


def probe_for(cfg: RunConfig, task: Task, prev: Any, heads: list[str], tokenizer: Any, rt: Runtime,
              meta: dict[str, Any]) -> Probe | None:
    """The run's probe: task 1 in the sequential set-up (``prev``, the reloaded task-1 run), else the
    reference data (``forgetting.reference`` or the task's default), or None."""
    if prev is not None:
        return task1_probe(prev, heads, rt)
    return reference_probe(cfg, task, tokenizer, rt, meta)


def mix_replay(cfg: RunConfig, task: Task, tokenizer: Any, data: Prepared, held_out: set[str],
               probe: Probe | None) -> Prepared:
    """Replay: a ``ratio`` share of each epoch comes from ``forgetting.replay.data``. Rows whose input matches
    a validation or test example of the run (``held_out``) or an example the probe measures are left out, so
    replay never trains on what is evaluated."""
    r = cfg.forgetting.replay
    if r.ratio == 0:
        return data
    records, where = source_records(task, r.data, cfg)
    banned = held_out | (probe.keys if probe is not None else set())
    kept = [(rec, w) for rec, w in zip(records, where) if normalise(task.input_text(rec, cfg)) not in banned]
    if not kept:
        raise ConfigError(f"forgetting.replay.data {r.data}: every row is a validation/test example of this run; "
                          "replay needs other data")
    pool = task.encode_any([rec for rec, _ in kept], cfg, tokenizer, data.meta, [w for _, w in kept])
    if probe is not None:
        measured = {tuple(e["input_ids"]) for e in probe.examples}
        pool = [e for e in pool if tuple(e["input_ids"]) not in measured]
    data.train = mix(data.train, pool, r.ratio, cfg.train.seed)
    return data


def regularizers(cfg: RunConfig, model: nn.Module, pretrained: set[str], heads: list[str], probe: Probe | None,
                 rt: Runtime) -> tuple[Any, ...]:
    """L2-SP or EWC anchored at the current (pre-trained) weights, as configured."""
    g = cfg.forgetting.regularize
    if g.kind == "none" or g.strength == 0:
        return ()
    if cfg.train.distributed == "fsdp":
        raise ConfigError("forgetting.regularize needs whole (unsharded) weights: use train.distributed=ddp")
    if g.kind == "l2sp":
        return (L2SP(model, g.strength, exclude=heads, pretrained=pretrained),)
    if probe is None:
        raise ConfigError("forgetting.regularize.kind=ewc needs reference data: set forgetting.reference "
                          "(causal LM) or forgetting.previous_run (classification)")
    if not probe.fisher_examples:
        raise ConfigError(f"forgetting.regularize.kind=ewc: no data to estimate the Fisher on ({probe.name}: "
                          "the reference set is too small to leave examples beside the measured ones)")
    batches = [{k: v.to(rt.device) for k, v in collate([e], rt.pad_id).items()}
               for e in sample(probe.fisher_examples, g.fisher_batches, cfg.data.seed)]
    return (EWC.from_reference(model, probe.loss, batches, g.strength, exclude=heads, pretrained=pretrained),)


def summary(probe: Probe | None, before: float | None, after: float | None) -> dict[str, Any]:
    """Before/after/change of the probe for metrics.json and the result table."""
    if probe is None:
        return {}
    change = None if before is None or after is None else after - before
    return {"reference": probe.name, "metric": probe.metric, "before": before, "after": after, "change": change}
