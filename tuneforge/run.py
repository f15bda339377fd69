"""The pipeline and the Python API: config -> data -> model -> method -> train -> evaluate -> save -> report.

    import tuneforge
    result = tuneforge.finetune({"method": {"name": "lora", "rank": 8}, "train": {"epochs": 1}})
    run = tuneforge.load(result.run_dir)
    run.predict(["a gripping, beautifully shot film"])

Under ``torchrun`` every process runs this same pipeline on its share of each batch; rank 0 alone writes the
run directory and evaluates the test split.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tuneforge import assets, checkpoint, distributed, resume_check, run_lock, scope, tasks
from tuneforge.memory import peak_memory_mb, reset_peak
from tuneforge.config import HEAD_LR, ConfigError, RunConfig, load_config, merge_dicts, parse_overrides
from tuneforge.data import embedded
from tuneforge.data.batching import Shapes
from tuneforge.data.dataset import Splits, prepare
from tuneforge.data.dataset import warnings as dataset_warnings
from tuneforge.data.readers import data_bytes
from tuneforge.data.templates import stored_template
from tuneforge.files import output_folder
from tuneforge.run_dir import check_inputs_outside, create_run_dir, discard_on_error, run_dir_path
from tuneforge.forgetting import pipeline as forgetting
from tuneforge.forgetting.interpolate import start_weights
from tuneforge.loaded import Run, load, start_model
from tuneforge.logs import plot_loss_curve
from tuneforge.methods import registry
from tuneforge.models import (apply_method, check_max_length, check_vocabulary, count_parameters, head_modules,
                              load_tokenizer, resolve_device, store_frozen_in_bf16, use_bf16)
from tuneforge.report import learned_warning, result_table
from tuneforge.tasks import Prepared, Runtime, Task
from tuneforge.step_plan import plan_steps
from tuneforge.train import TrainResult, fit

__all__ = ["train", "load", "Run", "TrainOutput", "resolve_config"]
BEFORE = "metrics_before.json"  # test metrics of the untrained model, kept for a resumed run


@dataclass
class TrainOutput:
    run_dir: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    table: str = ""


def resolve_config(cfg: RunConfig | dict[str, Any] | str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Accept a RunConfig, a dict or a YAML path (plus dotted overrides); fill the method's default lr."""
    if not isinstance(cfg, (RunConfig, Mapping, str, os.PathLike)):
        raise ConfigError(f"the config must be a dict of sections, a YAML file's path or a RunConfig; got "
                          f"{type(cfg).__name__} {str(cfg)[:40]!r} (tuneforge.finetune({{}}) trains the defaults)")
    if overrides is not None and (not isinstance(overrides, (list, tuple)) or
                                  not all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"overrides must be a list of 'section.key=value' texts, e.g. ['train.lr=1e-3'], got "
                          f"{overrides!r}"[:200])
    if isinstance(cfg, (str, os.PathLike)):
        cfg = load_config(cfg, overrides)
    else:
        data = cfg.to_dict() if isinstance(cfg, RunConfig) else dict(cfg)
        cfg = load_config(None, merge_dicts(data, parse_overrides(overrides or [])))
    options = registry.make_config(cfg.method_name, cfg.method_options())  # validated early
    # every option stored, defaults included, so a run directory's config.yaml is complete
    cfg.method = {"name": cfg.method_name, **{f.name: getattr(options, f.name)
                                              for f in dataclasses.fields(options) if f.init}}
    declared = registry.train_defaults(cfg.method_name, cfg.model.task, cfg.model.name)  # its TRAIN_DEFAULTS
    if cfg.train.lr is None:
        cfg.train.lr = float(declared.get("lr", 5e-5))
    if cfg.train.pooler_with_head is None:
        cfg.train.pooler_with_head = bool(declared.get("pooler_with_head", False))
    if cfg.train.head_lr is None:  # a head starts from random: it learns at a higher rate than pre-trained weights
        cfg.train.head_lr = max(cfg.train.lr, declared.get("head_lr", HEAD_LR)) if cfg.train.lr > 0 else 0.0
    if cfg.forgetting.previous_run:  # stored absolute: the run must find task 1 again when reloaded
        cfg.forgetting.previous_run = str(Path(cfg.forgetting.previous_run).resolve())
    _absolute_paths(cfg)
    if cfg.forgetting.previous_run:
        checkpoint.task1_model(cfg)
    return cfg


def _absolute_paths(cfg: RunConfig) -> None:
    """Local model folders and data files given relative to the working directory are stored absolute, and a
    template file as its text, so the run is resumed, evaluated, exported and merged from anywhere. Embedded
    names (and ``self``/``none``) stay."""
    def local(value: str | None, named: bool = False) -> str | None:
        if not value or named or value in ("self", "none") or not Path(value).expanduser().exists():
            return value  # a missing path keeps its own error message, with the path as given
        return str(Path(value).expanduser().resolve())

    d, f = cfg.data, cfg.forgetting
    cfg.model.name = local(cfg.model.name, cfg.model.name in assets.MODELS)
    d.dataset = local(d.dataset, embedded.is_embedded(d.dataset))
    d.train_file, d.validation_file, d.test_file = (local(x) for x in (d.train_file, d.validation_file, d.test_file))
    f.replay.data = local(f.replay.data, embedded.is_embedded(f.replay.data or ""))
    f.reference = local(f.reference, embedded.is_embedded(f.reference or ""))
    d.template = stored_template(d.template)


@dataclass
class Setup:
    """What the set-up phase produced (the same on every rank)."""
    tokenizer: Any
    splits: Splits
    data: Prepared
    model: nn.Module
    heads: list[str]
    rt: Runtime
    prev: Run | None


def train(cfg: RunConfig | dict[str, Any] | str | Path, overrides: list[str] | None = None,
          overwrite: bool = False, progress: bool = True, resume: str | Path | None = None) -> TrainOutput:
    """Fine-tune as configured; writes a run directory and returns its metrics and result table.
    ``resume=RUN_DIR`` continues an interrupted run (from its last checkpoint, or from the start) with its own
    config. Every input is checked before the run directory is created. The caller's thread count, grad mode and
    Hugging Face logging are as they were afterwards (:func:`tuneforge.scope.training`)."""
    with scope.training(), run_lock.Holding() as lock:
        return _train(cfg, overrides, overwrite, progress, resume, lock)


def _train(cfg: RunConfig | dict[str, Any] | str | Path, overrides: list[str] | None, overwrite: bool,
           progress: bool, resume: str | Path | None, lock: run_lock.Holding) -> TrainOutput:
    d, device = distributed.setup()
    cfg, task, run_dir = distributed.agree(lambda: _plan(cfg, overrides, overwrite, resume))
    reset_peak()  # the peak memory reported is this run's (not an earlier one's in this process)
    say = print if d.main and progress else (lambda *a, **k: None)
    warn = print if d.main else (lambda *a, **k: None)
    with start_model(cfg) as (prev, base):
        device = distributed.device_for(cfg.train.device, device) or resolve_device(cfg.train.device)
        if data_bytes(cfg.data) >= LARGE_DATA:  # reading, checking, splitting and tokenising: 200k rows took a minute
            say(f"reading, checking and tokenising {cfg.data.source} ...", file=sys.stderr)
        s = distributed.agree(lambda: _setup(cfg, task, base, device, prev))
        manifest = {**s.splits.manifest(), "forgetting": forgetting.source_digests(cfg)}  # split.json
        if d.main and resume is None:
            create_run_dir(run_dir, overwrite, cfg)
        if d.main:
            lock.take(run_dir)  # held until the run ends: no second process resumes or replaces it meanwhile
        with discard_on_error(run_dir if resume is None and d.main else None):
            if d.main and resume is None:
                checkpoint.save_json(manifest, run_dir / checkpoint.SPLIT, compact=True)
                name, record = resume_check.start_record(base, cfg.forgetting.previous_run)  # model or task 1
                checkpoint.save_json(record, run_dir / name)
            elif d.main:
                checkpoint.start_resume(run_dir, manifest)
                resume_check.refuse_changed_base(run_dir, base, cfg.forgetting.previous_run)
            distributed.barrier()
            for line in dataset_warnings(s.splits, s.data, cfg.model.max_length):
                warn(line, file=sys.stderr)
            before = _before(cfg, task, s, run_dir, say, progress)
            probes = forgetting.probes_for(cfg, task, s.prev, s.heads, s.tokenizer, s.rt, s.data.meta, s.model)
            for line in forgetting.probe_overlap(probes, task, cfg, s.splits.records):
                warn(line, file=sys.stderr)
            s.data = forgetting.mix_replay(cfg, task, s.tokenizer, s.data, s.splits.held_out, probes, s.model, s.rt)
            knew_before = forgetting.measure(probes, s.model, "before training", say, cfg) if d.main else []
            pretrained = {n for n, _ in s.model.named_parameters()}
            s.model, trained_heads = apply_method(s.model, cfg, s.heads)
            s.model = s.model.to(s.rt.device)
            params = count_parameters(s.model)
            regs = forgetting.regularizers(cfg, s.model, pretrained, s.heads, probes, s.rt)
            start = start_weights(s.model, cfg.forgetting.interpolate, s.heads) if d.main else None
            apart = task.packing_ok(s.model, s.data.train, s.rt)  # position ids keep packed examples apart
            s.rt.padding_free = cfg.train.padding_free and apart
            s.data.train = task.pack(s.data.train, cfg, apart)
            if cfg.data.packing and not task.packs:
                warn(f"note: data.packing does not apply to {task.name} runs: each example keeps a row of its own",
                     file=sys.stderr)
            elif cfg.data.packing and not apart:
                warn("warning: data.packing: this model or method cannot keep packed examples apart; each "
                    "example attends to the earlier ones in its row", file=sys.stderr)
            plan_steps(s.data, cfg, task)  # too few examples for the processes: refused before training starts
            if s.rt.bf16 and cfg.train.distributed != "fsdp":  # FSDP2 casts while gathering instead
                store_frozen_in_bf16(s.model)
            say(f"training {params['trainable']:,} of {params['total']:,} parameters ({params['trainable_pct']:.2f}%) "
                f"on {len(s.data.train)} examples at lr {cfg.train.lr:.2g}, "
                f"{s.rt.device.type}{' bf16' if s.rt.bf16 else ' fp32'}"
                f"{', padding-free batches' if s.rt.padding_free else ''}"
                f"{f', {d.world} processes' if d.active else ''}", file=sys.stderr)
    result = fit(s.model, task, s.data, cfg, s.rt, run_dir, progress, resume=resume is not None, regularizers=regs,
                 heads=tuple(trained_heads))
    if not d.main:
        distributed.barrier()
        return TrainOutput(run_dir=run_dir)
    model = _final_model(cfg, task, s, result)
    best = {task.metric: result.best_metric, "step": result.best_step}
    if start is not None:
        best = forgetting.interpolate_back(model, start, cfg, task, s.data, s.rt, best)
    if s.data.test:
        say("evaluating the trained model ...", file=sys.stderr)
    after = _evaluate(task, model, s, cfg, run_dir, "after", progress)
    metrics = {
        "task": task.name, "method": cfg.method_name, "test_before": before, "test_after": after,
        "parameters": params, "train_seconds": result.train_seconds, "steps": result.steps,
        "real_tokens": result.real_tokens, "padded_tokens": result.padded_tokens,
        "tokens_per_second": result.tokens_per_second, "peak_memory_mb": peak_memory_mb(s.rt.device),
        "best_validation": best,
        "precision": "bf16" if s.rt.bf16 else "fp32", "device": str(s.rt.device), "processes": d.world,
        "padding_free": s.rt.padding_free,
        "examples": {**s.splits.summary(), "trained_per_epoch": len(s.data.train)},
        "forgetting": forgetting.summary(probes, knew_before,
                                         forgetting.measure(probes, model, "after training", say, cfg)),
        "training_loss": {"first": result.first_loss, "last": result.last_loss,
                          "logged": sum("train_loss" in h for h in result.history)},
    }
    metrics["warning"] = learned_warning(metrics, task)
    table = result_table(metrics, task.table_metrics)
    if metrics["warning"]:
        print(f"warning: {metrics['warning']}", file=sys.stderr)
    _save(run_dir, cfg, task, s, model, metrics, table, result)
    distributed.barrier()
    return TrainOutput(run_dir=run_dir, metrics=metrics, table=table)


def _plan(cfg: Any, overrides: list[str] | None, overwrite: bool, resume: str | Path | None
          ) -> tuple[RunConfig, Task, Path]:
    """The resolved config, the task and the run directory (checked by rank 0, the same on every rank)."""
    if resume is not None:
        if not str(resume).strip():
            raise ConfigError(f"--resume needs the run directory to continue (the one `train` wrote), got "
                              f"{str(resume)!r}")
        if overrides or cfg:  # would not apply to the saved optimizer and schedule, yet config.yaml would claim them
            raise ConfigError("resume continues a run with its own config; give no other config or overrides")
        cfg = checkpoint.resume_config(output_folder(resume))
    cfg = resolve_config(cfg, overrides)
    task = tasks.get(cfg.model.task)
    forgetting.check_probes(cfg, task)
    run_dir = None
    if distributed.current().main:
        run_dir = (output_folder(resume) if resume is not None else
                   run_dir_path(cfg.output_dir, cfg.method_name, overwrite))
        if overwrite and resume is None:
            check_inputs_outside(run_dir, cfg)
        if resume is not None or overwrite:
            run_lock.refuse_held(run_dir, "resume it" if resume is not None else "replace it")
    return cfg, task, distributed.broadcast(run_dir)


LARGE_DATA = 5 << 20  # data files of at least this many bytes get a line before they are prepared


def _setup(cfg: RunConfig, task: Task, base: Path, device: torch.device, prev: Run | None) -> Setup:
    """Tokenizer, checked splits, tokenised data and the pre-trained model (nothing written yet)."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    tokenizer = load_tokenizer(base, cfg.model.trust_remote_code)
    splits, data = prepare(cfg, task, tokenizer)
    forgetting.check_sources(cfg, task)  # replay / reference data checked before anything is created
    bf16 = use_bf16(cfg.train.precision, device)
    rt = Runtime(device=device, bf16=bf16, pad_id=tokenizer.pad_token_id,
                 shapes=Shapes.training(cfg.model.max_length, rounded=bf16 or device.type != "cpu"))
    torch.manual_seed(cfg.train.seed)
    model, fresh = task.load_model(base, cfg, data.meta, rt.pad_id, device)
    check_vocabulary(model, tokenizer, base)
    check_max_length(model, cfg)
    heads = head_modules(model, fresh)
    registry.check_applies(model, cfg.method_name, registry.make_config(cfg.method_name, cfg.method_options()), heads)
    return Setup(tokenizer, splits, data, model.to(device), heads, rt, prev)


def _before(cfg: RunConfig, task: Task, s: Setup, run_dir: Path, say: Any, progress: bool) -> dict[str, Any]:
    """Test metrics of the untrained model (rank 0; kept in the run directory for a resumed run)."""
    if not distributed.current().main or not cfg.eval.before or not s.data.test:
        return {}
    if (run_dir / BEFORE).is_file():
        return json.loads((run_dir / BEFORE).read_text())
    say("evaluating the model before training ...", file=sys.stderr)
    before = _evaluate(task, s.model, s, cfg, run_dir, "before", progress)
    checkpoint.save_json(before, run_dir / BEFORE)
    return before


def _evaluate(task: Task, model: nn.Module, s: Setup, cfg: RunConfig, run_dir: Path, tag: str, progress: bool
              ) -> dict[str, Any]:
    if not s.data.test:
        return {}
    return task.evaluate(model, s.data.test, s.rt, cfg, s.data.meta, tokenizer=s.tokenizer, raw=s.data.raw_test,
                         run_dir=run_dir, tag=tag, progress=progress)


def _final_model(cfg: RunConfig, task: Task, s: Setup, result: TrainResult) -> nn.Module:
    """The trained model with the best weights (rank 0). Under FSDP2 the sharded model is left to training and
    a plain one is rebuilt from the gathered weights."""
    model = s.model
    if cfg.train.distributed == "fsdp" and distributed.current().active:
        with start_model(cfg) as (_, base):
            model, _ = task.load_model(base, cfg, s.data.meta, s.rt.pad_id, s.rt.device)
        model = apply_method(model, cfg, s.heads)[0].to(s.rt.device)
        if s.rt.bf16:
            store_frozen_in_bf16(model)
    model.load_state_dict(result.best_weights(), strict=False)
    return model.eval()


def _save(run_dir: Path, cfg: RunConfig, task: Task, s: Setup, model: nn.Module, metrics: dict[str, Any],
          table: str, result: TrainResult) -> None:
    """Weights, meta, metrics, results table and loss curve; the checkpoint goes last (crash-safe)."""
    from tuneforge import __version__

    model = registry.call_optional(cfg.method_name, "fold", model)  # a hook may return a new model
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    meta = {**s.data.meta, "task": task.name, "method": cfg.method_name, "tuneforge_version": __version__}
    checkpoint.save_run(run_dir, cfg, meta, model, s.tokenizer, trainable)
    checkpoint.atomic_write_text(run_dir / "results.md", table + "\n")
    plot_loss_curve(result.history, run_dir / "loss_curve.png", task.metric)
    checkpoint.save_json(metrics, run_dir / "metrics.json")  # the run is complete once this exists
    checkpoint.finish_run(run_dir)
