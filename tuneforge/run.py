"""The pipeline and the Python API: config -> model -> method -> data -> train -> evaluate -> save -> report.

    import tuneforge
    result = tuneforge.finetune({"method": {"name": "lora", "rank": 8}, "train": {"epochs": 1}})
    run = tuneforge.load(result.run_dir)
    run.predict(["a gripping, beautifully shot film"])
"""
from __future__ import annotations

import dataclasses
import json
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from tuneforge import assets, checkpoint, tasks
from tuneforge.config import ConfigError, RunConfig, load_config, merge_dicts, parse_overrides
from tuneforge.data.batching import without_positions
from tuneforge.forgetting import pipeline as forgetting
from tuneforge.methods import registry
from tuneforge.models import (count_parameters, head_modules, load_tokenizer, resolve_device, store_frozen_in_bf16,
                              use_bf16)
from tuneforge.report import result_table
from tuneforge.train import fit, plot_loss_curve, rank_world


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class TrainOutput:
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    table: str = ""


def resolve_config(cfg: RunConfig | dict[str, Any] | str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Accept a RunConfig, a dict or a YAML path (plus dotted overrides); fill the method's default lr."""
    if isinstance(cfg, (str, Path)):
        cfg = load_config(cfg, overrides)
    else:
        data = cfg.to_dict() if isinstance(cfg, RunConfig) else cfg
        cfg = load_config(None, merge_dicts(data, parse_overrides(overrides or [])))
    options = registry.make_config(cfg.method_name, cfg.method_options())  # validated early
    # every option stored, defaults included, so a run directory's config.yaml is complete
    cfg.method = {"name": cfg.method_name, **{f.name: getattr(options, f.name)
                                              for f in dataclasses.fields(options) if f.init}}
    if cfg.train.lr is None:
        cfg.train.lr = float(registry.train_defaults(cfg.method_name).get("lr", 5e-5))
    if cfg.forgetting.previous_run:  # stored absolute: the run must find task 1 again when reloaded
        cfg.forgetting.previous_run = str(Path(cfg.forgetting.previous_run).resolve())
    return cfg


def build_model(cfg: RunConfig, task: Any, meta: dict[str, Any], pad_id: int, base_path: Path | None = None
                ) -> tuple[nn.Module, list[str]]:
    """Load the model for the task and apply the method; returns (model, always-trained module names)."""
    path = base_path or assets.resolve_model(cfg.model.name)
    model, fresh = task.load_model(path, cfg, meta, pad_id)
    heads = head_modules(model, fresh)
    method_cfg = registry.make_config(cfg.method_name, cfg.method_options())
    model = registry.apply(model, cfg.method_name, method_cfg, always_train=heads)
    return model, heads


def train(cfg: RunConfig | dict[str, Any] | str | Path, overrides: list[str] | None = None,
          overwrite: bool = False, progress: bool = True, resume: str | Path | None = None) -> TrainOutput:
    """Fine-tune as configured; writes a run directory and returns its metrics and result table.
    ``resume=RUN_DIR`` continues an interrupted run from its last checkpoint (its own config is used)."""
    if resume is not None:
        cfg = _resume_config(Path(resume))
    cfg = resolve_config(cfg, overrides)
    rank, _ = rank_world()
    task = tasks.get(cfg.model.task)
    device = resolve_device(cfg.train.device)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run_dir = None
    if rank == 0:  # an existing run directory is refused now, before any work; created once data and model load
        run_dir = Path(resume) if resume is not None else checkpoint.run_dir_path(cfg.output_dir, cfg.method_name,
                                                                                   overwrite)
    with forgetting.start_model(cfg) as (prev, model_path):  # prev: the task-1 run (sequential set-up) or None
        tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
        data = task.prepare(cfg, tokenizer)
        rt = tasks.Runtime(device=device, bf16=use_bf16(cfg.train.precision, device), pad_id=tokenizer.pad_token_id)
        torch.manual_seed(cfg.train.seed)
        model, fresh = task.load_model(model_path, cfg, data.meta, rt.pad_id)
    if resume is None and run_dir is not None:  # bad data or model: no half-made run directory is left behind
        run_dir = checkpoint.create_run_dir(run_dir, overwrite)
        checkpoint.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with checkpoint.discard_on_error(run_dir if resume is None else None):  # set-up failed: no run left
        model.to(device)
        say = print if rank == 0 and progress else (lambda *a, **k: None)
        before = {}
        if resume is not None and (Path(resume) / BEFORE).is_file():
            before = json.loads((Path(resume) / BEFORE).read_text())
        elif cfg.eval.before and data.test:
            say("evaluating the model before training ...", file=sys.stderr)
            before = task.evaluate(model, data.test, rt, cfg, data.meta, tokenizer=tokenizer, raw=data.raw_test,
                                   run_dir=run_dir, tag="before")
            if run_dir is not None:
                checkpoint.save_json(before, run_dir / BEFORE)
        heads = head_modules(model, fresh)
        probe = (forgetting.task1_probe(prev, heads, rt) if prev
                 else forgetting.reference_probe(cfg, task, tokenizer, rt, data.meta))
        data = forgetting.mix_replay(cfg, task, tokenizer, data, probe)
        knew_before = probe.measure(model) if probe else None
        pretrained = {n for n, _ in model.named_parameters()}
        method_cfg = registry.make_config(cfg.method_name, cfg.method_options())
        model = registry.apply(model, cfg.method_name, method_cfg, always_train=heads).to(device)
        params = count_parameters(model)
        regs = forgetting.regularizers(cfg, model, pretrained, heads, probe, rt)
        apart = task.packing_ok(model, data.train, rt)  # position ids keep packed examples apart
        rt.padding_free = cfg.train.padding_free and apart
        if not apart and any("position_ids" in e for e in data.train):
            data.train = without_positions(data.train)
            if rank == 0:
                print("warning: data.packing: this model or method cannot keep packed examples apart; each "
                      "example attends to the earlier ones in its row", file=sys.stderr)
        if rt.bf16:
            store_frozen_in_bf16(model)
        say(f"training {params['trainable']:,} of {params['total']:,} parameters ({params['trainable_pct']:.2f}%) "
            f"on {len(data.train)} examples, {device.type}{' bf16' if rt.bf16 else ' fp32'}"
            f"{', padding-free batches' if rt.padding_free else ''}", file=sys.stderr)
    result = fit(model, task, data, cfg, rt, cfg.train.lr, run_dir, progress, resume=resume is not None,
                 regularizers=regs)
    model.load_state_dict(result.best_state, strict=False)
    after = task.evaluate(model, data.test, rt, cfg, data.meta, tokenizer=tokenizer, raw=data.raw_test,
                          run_dir=run_dir, tag="after") if data.test else {}
    metrics = {
        "task": task.name, "method": cfg.method_name, "test_before": before, "test_after": after,
        "parameters": params, "train_seconds": result.train_seconds, "steps": result.steps,
        "real_tokens": result.real_tokens, "padded_tokens": result.padded_tokens,
        "tokens_per_second": result.tokens_per_second, "peak_memory_mb": peak_memory_mb(device),
        "best_validation": {task.metric: result.best_metric, "step": result.best_step},
        "precision": "bf16" if rt.bf16 else "fp32", "device": str(device), "padding_free": rt.padding_free,
        "examples": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
        "forgetting": forgetting.summary(probe, knew_before, probe.measure(model) if probe else None),
    }
    table = result_table(metrics, task.table_metrics)
    if run_dir is not None:
        registry.call_optional(cfg.method_name, "fold", model)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        meta = {**data.meta, "task": task.name, "method": cfg.method_name, "tuneforge_version": _version()}
        checkpoint.save_run(run_dir, cfg, meta, model, tokenizer, trainable)
        checkpoint.save_json(metrics, run_dir / "metrics.json")
        checkpoint.atomic_write_text(run_dir / "results.md", table + "\n")
        plot_loss_curve(result.history, run_dir / "loss_curve.png", task.metric)
        (run_dir / checkpoint.RESUME).unlink(missing_ok=True)  # finished: the run's weights are saved
    return TrainOutput(run_dir=run_dir, metrics=metrics, table=table)


BEFORE = "metrics_before.json"  # test metrics of the untrained model, kept for a resumed run


def _resume_config(run_dir: Path) -> RunConfig:
    """The config of an interrupted run that can be resumed."""
    if not (run_dir / checkpoint.RESUME).is_file():
        what = "finished" if (run_dir / "metrics.json").is_file() else "has no checkpoint yet"
        raise ConfigError(f"cannot resume {run_dir}: the run {what} ({checkpoint.RESUME} missing)")
    return load_config(run_dir / "config.yaml")


def _version() -> str:
    from tuneforge import __version__
    return __version__


class Run:
    """A finished run reloaded from its directory alone: predict, evaluate, merge."""

    def __init__(self, run_dir: str | Path, device: str = "auto") -> None:
        self.files = checkpoint.read_run(run_dir)
        self.cfg = self.files.config
        self.meta = self.files.meta
        self.task = tasks.get(self.cfg.model.task)
        device_ = resolve_device(device)
        full = self.files.full_model_dir
        self.tokenizer = load_tokenizer(full or assets.resolve_model(self.cfg.model.name),
                                        self.cfg.model.trust_remote_code)
        if hasattr(self.task, "setup_tokenizer"):  # e.g. the causal LM's named chat template
            self.task.setup_tokenizer(self.tokenizer, self.cfg, self.meta)
        self.rt = tasks.Runtime(device=device_, bf16=use_bf16(self.cfg.train.precision, device_),
                                pad_id=self.tokenizer.pad_token_id)
        self.heads: list[str] = []  # modules trained in full beside the method (e.g. a fresh classification head)
        if full is not None:
            self.model, _ = self.task.load_model(full, self.cfg, self.meta, self.rt.pad_id)
        else:  # the base model (sequential set-up: task 1's merged model) + this run's trained weights
            with forgetting.start_model(self.cfg) as (_, base):
                self.model, self.heads = build_model(self.cfg, self.task, self.meta, self.rt.pad_id, base)
            weights = self.files.trainable_weights()
            missing = set(weights) - {n for n, _ in self.model.named_parameters()}
            if missing:
                raise ConfigError(f"{self.files.path}: saved weights do not fit the model (e.g. {sorted(missing)[0]})")
            self.model.load_state_dict(weights, strict=False)
        self.model.to(device_).eval()

    def evaluate(self, data_file: str | None = None) -> dict[str, Any]:
        """Metrics on ``data_file`` (any supported file) or on the run's own test split."""
        if data_file:
            examples = self.task.encode_file(data_file, self.cfg, self.tokenizer, self.meta)
            raw = None
        else:
            prepared = self.task.prepare(self.cfg, self.tokenizer)
            examples, raw = prepared.test, prepared.raw_test
        return self.task.evaluate(self.model, examples, self.rt, self.cfg, self.meta, tokenizer=self.tokenizer, raw=raw)

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """Label and class probabilities for each text; ``pairs``: the second texts, for a classifier trained
        on text pairs (``data.text_pair_column``), one per text."""
        if not hasattr(self.task, "predict_proba"):
            raise ConfigError(f"{self.files.path} is a {self.task.name} run, which generates text rather than "
                              "labels: use `tuneforge generate RUN_DIR PROMPT...` (or Run.generate)")
        d = self.cfg.data
        if d.text_pair_column and pairs is None:
            raise ConfigError(
                f"{self.files.path} was trained on text pairs ('{d.text_column}' + '{d.text_pair_column}'): give "
                "a second text for each (--pair / tab-separated stdin lines; Run.predict(texts, pairs))")
        if not d.text_pair_column and pairs is not None:
            raise ConfigError(f"{self.files.path} classifies single texts: drop the second texts")
        if pairs is not None and len(pairs) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(pairs)} second texts: give one second text per text")
        records, rows = [{d.text_column: t} for t in texts], [{"text": t} for t in texts]
        for record, row, second in zip(records, rows, pairs or []):
            record[d.text_pair_column] = row["pair"] = second
        examples = self.task.encode(records, self.cfg, self.tokenizer, self.meta, "input")
        probs = self.task.predict_proba(self.model, examples, self.rt, self.cfg.eval.batch_size)
        names = self.meta["labels"]
        for row, p in zip(rows, probs):
            row.update(label=names[int(p.argmax())], probabilities=dict(zip(names, map(float, p))))
        return rows

    def generate(self, prompts: list[str | list[dict[str, str]]], **settings: Any) -> list[str]:
        """Answers of a causal-LM run: each prompt is a user message or a list of {role, content} messages,
        rendered with the run's chat template. ``settings``: max_new_tokens, sample, temperature, top_p,
        top_k, seed (see :class:`tuneforge.generate.Sampling`); ``stream`` (a file) streams one answer."""
        from tuneforge.generate import generate_for_run
        return generate_for_run(self, list(prompts), **settings)

    def merge(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write a plain Hugging Face model folder with the method merged in (where the method can merge)."""
        out = checkpoint.prepare_output(out, overwrite)
        model = registry.call_optional(self.cfg.method_name, "merge", self.model)
        leftovers = [n for n, _ in model.named_parameters() if n not in self._base_names()]
        if leftovers:
            raise ConfigError(f"method '{self.cfg.method_name}' cannot be merged into the base weights "
                              f"(e.g. {leftovers[0]}); use `tuneforge export` instead")
        model.float().save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        return out

    def _base_names(self) -> set[str]:
        base, _ = self.task.load_model(self.files.full_model_dir or assets.resolve_model(self.cfg.model.name),
                                       self.cfg, self.meta, self.rt.pad_id)
        return {n for n, _ in base.named_parameters()}


def load(run_dir: str | Path, device: str = "auto") -> Run:
    """Reload a run directory (see :class:`Run`)."""
    return Run(run_dir, device)
