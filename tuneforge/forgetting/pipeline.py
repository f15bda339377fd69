"""Forgetting inside a run (``forgetting:`` config section): which probe measures what the model knew, replay
data mixed into the training split, the L2-SP / EWC regulariser for the loop, and the interpolation back toward
the start after it."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch.nn as nn

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data.batching import collate
from tuneforge.data.dataset import normalise, source_records
from tuneforge.data.readers import file_digest
from tuneforge.forgetting.probes import (Probe, general_prompts, own_answers, own_answers_probe, reference_probe,
                                        sample, sentiment_probe, task1_probe)
from tuneforge.forgetting.interpolate import interpolate
from tuneforge.forgetting.regularize import EWC, L2SP
from tuneforge.forgetting.replay import mix, replay_count
from tuneforge.tasks import Prepared, Runtime, Task


def measured_by(task: Task) -> str:
    """The settings that measure forgetting in a run of ``task`` that does not generate text."""
    return "forgetting.previous_run (a sequential run)" + (" or forgetting.reference" if task.perplexity else "")


def check_probes(cfg: RunConfig, task: Task) -> None:
    """Refuse, before anything loads, probe settings that ``task`` cannot measure or that the run would ignore."""
    f = cfg.forgetting
    reference = f.reference not in (None, "none")
    if f.previous_run and (f.probes != ["auto"] or reference):
        given = f"forgetting.probes={f.probes}" if f.probes != ["auto"] else "forgetting.reference"
        raise ConfigError(f"{given}: a sequential run (forgetting.previous_run) measures forgetting on task 1's own "
                          f"test data; leave {given.split('=')[0]} out")
    names = probe_names(cfg, task)
    generating = [n for n in names if n not in ("reference", "none")]
    if generating and not task.generates:
        raise ConfigError(f"forgetting.probes: {generating[0]} needs a causal LM; a {task.name} run measures "
                          f"forgetting with {measured_by(task)}")
    if (reference or "reference" in names) and not task.perplexity:
        raise ConfigError(f"forgetting.reference measures perplexity, which a {task.name} run does not report; "
                          f"measure forgetting with {measured_by(task)}")
    off = not names or "none" in names  # [] or [none]: no probe, whatever else is set
    available = reference or (f.reference != "none" and task.default_reference(cfg) is not None)
    if "reference" in f.probes and not available:  # named, not the task's default (auto: none is no probe)
        raise ConfigError("forgetting.probes names reference, but this run has no reference data: set "
                          "forgetting.reference (an embedded data set or a file)")
    if reference and "reference" not in names and not off:
        raise ConfigError(f"forgetting.reference is set, but forgetting.probes={f.probes} leaves the reference probe "
                          "out: add reference to forgetting.probes, or set forgetting.reference=none")
    g = f.regularize
    if g.kind == "ewc" and g.strength != 0 and not (f.previous_run or ("reference" in names and available)):
        raise ConfigError("forgetting.regularize.kind=ewc estimates its Fisher on reference data or on task 1's, and "
                          f"this run has neither: set {measured_by(task)}")


def probe_names(cfg: RunConfig, task: Task) -> list[str]:
    """``forgetting.probes``, with ``auto`` as the task's own probes."""
    return task.default_probes(cfg) if cfg.forgetting.probes == ["auto"] else cfg.forgetting.probes


def has_probe(cfg: RunConfig, task: Task) -> bool:
    """Whether the run measures forgetting: a previous run's task, or a probe (``forgetting.probes``)."""
    names = probe_names(cfg, task)
    return bool(cfg.forgetting.previous_run) or (bool(names) and "none" not in names)


def probes_for(cfg: RunConfig, task: Task, prev: Any, heads: list[str], tokenizer: Any, rt: Runtime,
               meta: dict[str, Any], model: nn.Module) -> list[Probe]:
    """The run's probes (``forgetting.probes``; ``auto``: the task's defaults; checked by :func:`check_probes`):
    task 1 in the sequential set-up (``prev``, the reloaded task-1 run), else reference perplexity, the model's
    own answers, zero-shot sentiment. Built on the untrained ``model`` (own answers are generated now)."""
    if prev is not None:
        return [task1_probe(prev, heads, rt, cfg.forgetting.probe_split)]
    names = probe_names(cfg, task)
    if "none" in names:
        return []
    explicit = cfg.forgetting.probes != ["auto"]
    out = []
    for name in dict.fromkeys(names):
        if name == "reference":
            probe = reference_probe(cfg, task, tokenizer, rt, meta)
        elif name == "own_answers":
            probe = own_answers_probe(model, cfg, task, tokenizer, rt, meta, required=explicit)
        else:
            probe = sentiment_probe(model, cfg, tokenizer, rt, name == "sentiment_calibrated", required=explicit)
        if probe is not None:
            out.append(probe)
    return out


def keys_of(task: Task, record: dict[str, Any], cfg: RunConfig) -> set[str]:
    """What a probe's keys are matched with: the row's whole input and each of its input texts, normalised."""
    return {normalise(task.input_text(record, cfg))} | {normalise(t) for t in task.prompt_texts(record, cfg)}


def probe_overlap(probes: list[Probe], task: Task, cfg: RunConfig, records: dict[str, list[dict[str, Any]]]
                  ) -> list[str]:
    """One warning per probe that draws on texts of the run's own data (any split of ``records``; e.g.
    ``forgetting.reference`` set to the training file): its change after training then shows learning, not
    forgetting."""
    own = {k for split in records.values() for r in split for k in keys_of(task, r, cfg)}
    out = []
    for probe in probes:
        if shared := len(probe.keys & own):
            out.append(f"warning: {shared} of the {len(probe.keys)} texts the forgetting probe '{probe.name}' draws "
                       "on are examples of this run's own data, so its change shows learning, not forgetting; "
                       "measure forgetting on other data (forgetting.reference)")
    return out


def check_sources(cfg: RunConfig, task: Task) -> None:
    """Read and check the replay and reference data (as :func:`mix_replay` and the reference probe will), and
    that regularisation has whole weights (every rank meets these errors in set-up: one error line)."""
    f = cfg.forgetting
    if f.regularize.kind != "none" and f.regularize.strength != 0 and cfg.train.distributed == "fsdp":
        raise ConfigError("forgetting.regularize needs whole (unsharded) weights: use train.distributed=ddp")
    for key, name in _sources(cfg):
        _records(key, name, task, cfg)


def _sources(cfg: RunConfig) -> list[tuple[str, str]]:
    """(setting, data set or file) of the replay and reference data a run reads."""
    f = cfg.forgetting
    named = (("forgetting.replay.data", f.replay.data if f.replay.ratio else None),
             ("forgetting.reference", f.reference))
    return [(key, name) for key, name in named if name not in (None, "none", "self")]


def source_digests(cfg: RunConfig) -> dict[str, str]:
    """Setting -> sha256 of the replay / reference file it names (an embedded set: its name), for ``split.json``:
    a resumed run whose replay data changed would train on other rows than its checkpoint's."""
    return {key: file_digest(name) if Path(name).is_file() else name
            for key, name in _sources(cfg)}


def _records(key: str, name: str, task: Task, cfg: RunConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`source_records` of the data that setting ``key`` names, its errors naming that setting."""
    try:
        return source_records(task, name, cfg)
    except ConfigError as exc:  # a missing file, other columns: it reads with the run's own data.* columns
        raise ConfigError(f"{key}: {exc}") from None


def mix_replay(cfg: RunConfig, task: Task, tokenizer: Any, data: Prepared, held_out: set[str],
               probes: list[Probe], model: nn.Module | None = None, rt: Runtime | None = None) -> Prepared:
    """Replay: a ``ratio`` share of each epoch comes from ``forgetting.replay.data``, or with ``"self"`` from
    the untrained ``model``'s own answers to held-out general prompts (self-replay: no external data). Rows
    whose input matches a validation or test example of the run (``held_out``) or an example a probe measures
    are left out, so replay never trains on what is evaluated."""
    r = cfg.forgetting.replay
    if r.ratio == 0:
        if r.data:  # named, so meant to be replayed: never silently unused
            print(f"warning: forgetting.replay.data={r.data} is set but forgetting.replay.ratio is 0, so nothing is "
                  "replayed; forgetting.replay.ratio=0.2 makes a fifth of each epoch replay", file=sys.stderr)
        return data
    banned = held_out | {k for p in probes for k in p.keys}
    if r.data == "self":
        if not task.generates or model is None or rt is None:
            raise ConfigError("forgetting.replay.data=self replays the model's own answers: causal LM runs only")
        prompts = general_prompts(replay_count(len(data.train), r.ratio), cfg.train.seed, exclude=banned)
        _, pool = own_answers(model, task, cfg, tokenizer, rt, data.meta, prompts)  # prompts: none banned
        if not pool:
            raise ConfigError("forgetting.replay.data=self: the untrained model gave no answers to replay")
    else:
        records, where = _records("forgetting.replay.data", r.data, task, cfg)
        kept = [(rec, w) for rec, w in zip(records, where) if not keys_of(task, rec, cfg) & banned]
        try:
            pool = task.encode_any([rec for rec, _ in kept], cfg, tokenizer, data.meta, [w for _, w in kept])
        except ConfigError as exc:  # e.g. an earlier task's labels: replayed rows train this run's head
            raise ConfigError(f"forgetting.replay.data: {exc}; replayed examples train this run's head, so they need "
                              "its labels") from None
    measured = {tuple(e["input_ids"]) for p in probes for e in p.examples}
    pool = [e for e in pool if tuple(e["input_ids"]) not in measured]
    if not pool:
        raise ConfigError(f"forgetting.replay.data {r.data}: every row is a validation/test example of this run or "
                          "one a forgetting probe measures (e.g. task 1's validation/test rows); replay needs other "
                          "data (task 1's training file, say)")
    data.train = mix(data.train, pool, r.ratio, cfg.train.seed)
    return data


def regularizers(cfg: RunConfig, model: nn.Module, pretrained: set[str], heads: list[str], probes: list[Probe],
                 rt: Runtime) -> tuple[Any, ...]:
    """L2-SP or EWC anchored at the current (pre-trained) weights, as configured (EWC's Fisher: the first
    probe with data of its own beside what it measures)."""
    probe = next((p for p in probes if p.fisher_examples), probes[0] if probes else None)
    g = cfg.forgetting.regularize
    if g.kind == "none" or g.strength == 0:
        return ()
    if g.kind == "l2sp":
        return (L2SP(model, g.strength, exclude=heads, pretrained=pretrained),)
    if probe is None:
        raise ConfigError("forgetting.regularize.kind=ewc needs data that measures forgetting: set "
                          "forgetting.reference or forgetting.previous_run (a sequential run)")
    if not probe.fisher_examples:
        raise ConfigError(f"forgetting.regularize.kind=ewc: no data to estimate the Fisher on ({probe.name}: "
                          "the reference set is too small to leave examples beside the measured ones)")
    batches = [{k: v.to(rt.device) for k, v in collate([e], rt.pad_id).items()}
               for e in sample(probe.fisher_examples, g.fisher_batches, cfg.data.seed)]
    return (EWC.from_reference(model, probe.loss, batches, g.strength, exclude=heads, pretrained=pretrained),)


def interpolate_back(model: nn.Module, start: dict[str, Any], cfg: RunConfig, task: Task, data: Prepared,
                     rt: Runtime, best: dict[str, Any]) -> dict[str, Any]:
    """``forgetting.interpolate``: move the trained ``model``'s weights back toward their ``start``; returns the
    run's ``best_validation`` for the result: the interpolated model's validation metric (what mitigate chooses
    on), the trained one's kept as ``trained``."""
    keep = cfg.forgetting.interpolate
    interpolate(model, start, keep)
    if not data.validation:
        return {**best, "interpolate": keep}
    value = task.evaluate(model, data.validation, rt, cfg, data.meta)[task.metric]
    return {task.metric: value, "step": best["step"], "trained": best[task.metric], "interpolate": keep}


def measure(probes: list[Probe], model: nn.Module, when: str, say: Any, cfg: RunConfig) -> list[float]:
    """Each probe's figure on ``model``, one line naming it first (``say``: print, or nothing with -q): a chat
    model's probes generate and score for minutes on a CPU, which had passed in silence."""
    figures = []
    skip = "" if cfg.forgetting.previous_run else " (forgetting.probes=none skips this)"  # task 1's: always measured
    for i, p in enumerate(probes, start=1):
        say(f"measuring what the model knew {when} ({i}/{len(probes)}): {p.name} on {len(p.examples)} examples"
            f"{skip} ...", file=sys.stderr)
        figures.append(p.measure(model))
    return figures


def summary(probes: list[Probe], before: list[float], after: list[float]) -> dict[str, Any]:
    """Before/after of every probe for metrics.json and the result table. ``forgotten``: how much worse the
    probe got (perplexity: per cent higher; accuracy: points lower); negative when it improved. The first
    probe's figures also sit at the top level (``change``: after - before)."""
    rows = []
    for p, b, a in zip(probes, before, after):
        worse = (a - b) / b * 100 if p.metric == "perplexity" else (b - a) * 100
        rows.append({"reference": p.name, "metric": p.metric, "before": b, "after": a, "change": a - b,
                     "forgotten": worse, "unit": "%" if p.metric == "perplexity" else "points"})
    return {**rows[0], "probes": rows} if rows else {}
