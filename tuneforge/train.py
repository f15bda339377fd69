"""The single training loop. It never looks at the method or task name: the method left ``requires_grad`` on
what trains, the task supplies ``loss`` (a sum), ``units`` (what the sum counts: examples or tokens) and
``evaluate``.

An optimizer step trains one global batch of ``batch_size x grad_accum x processes`` examples
(:mod:`tuneforge.step_plan`); its gradient is that of the whole batch in one piece: every micro-batch's
loss sum is divided by the units of the whole window on all ranks (all-reduced), so gradient accumulation
and processes together behave exactly like one bigger batch. Under torchrun the gradients are synchronised
once per step (DDP's ``no_sync`` / FSDP2's ``set_requires_gradient_sync`` on the other micro-batches).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tuneforge import checkpoint, distributed, fast, last_layer, training_state
from tuneforge.best_weights import BestWeights
from tuneforge.grouped_attention import grouped_attention
from tuneforge.config import ConfigError, RunConfig
from tuneforge.data.batching import iterate
from tuneforge.embedding_rows import TrainedRows, training_ids
from tuneforge.methods import registry
from tuneforge.methods.layers import blocks
from tuneforge.models import autocast
from tuneforge.optim import build_optimizer, lr_lambda
from tuneforge.progress import bar as progress_bar
from tuneforge.rms_norm import fast_rms_norm
from tuneforge.rotary import fast_rotary
from tuneforge.step_plan import plan_steps
from tuneforge.tasks import Prepared, Runtime, Task
from tuneforge.logs import Logger, plot_loss_curve

DIVERGED_FIXES = "lower train.lr, keep train.max_grad_norm on, or check the data for extreme values"
LOSS_TIE_DELTA = 0.01  # an equal validation metric counts as better at a validation loss 1 % lower

__all__ = ["fit", "TrainResult", "plot_loss_curve", "WithLoss"]


class WithLoss(nn.Module):
    """``model`` + the task's loss as one module, so DDP / FSDP2 wrap the whole computation even when the task
    calls sub-modules (e.g. the backbone, then the LM head only where labels are kept)."""

    def __init__(self, model: nn.Module, task: Task, regularizers: tuple[Any, ...] = ()) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.regularizers = regularizers  # objects with penalty(model) -> scalar (L2-SP, EWC)

    def forward(self, batch: dict[str, torch.Tensor], scale: float, share: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(what to back-propagate, the batch's loss sum): ``loss sum x scale + penalties x share``."""
        loss_sum = self.task.loss(self.model, batch)
        objective = loss_sum * scale
        for reg in self.regularizers:
            objective = objective + reg.penalty(self.model) * share
        return objective, loss_sum.detach()


@dataclass
class TrainResult:
    steps: int = 0
    train_seconds: float = 0.0
    real_tokens: int = 0  # non-padding tokens seen in training (all processes)
    padded_tokens: int = 0  # tokens including padding (all processes)
    best_metric: float | None = None
    best_step: int | None = None
    best_loss: float | None = None  # validation loss at the best step (breaks ties of the metric)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None  # without validation: the final trainable weights (rank 0)
    best: BestWeights | None = None  # with validation: the best step's trainable weights, in a file
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    first_loss: float | None = None  # the first logged training loss
    last_loss: float | None = None  # the last logged training loss
    unlogged: tuple[float, int] = (0.0, 0)  # at a checkpoint: loss sum (all ranks) and units since the last log

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The trainable weights of the best evaluation, else (no validation) the final ones (rank 0)."""
        return self.best.load(self.best_step) if self.best and self.best_step is not None else self.best_state

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.train_seconds if self.train_seconds else 0.0

    LOOP_KEYS = ("steps", "train_seconds", "real_tokens", "padded_tokens", "best_metric", "best_step", "best_loss",
                 "history", "bad_evals", "first_loss", "last_loss", "unlogged")


def fit(model: nn.Module, task: Task, data: Prepared, cfg: RunConfig, rt: Runtime, run_dir: Path | None = None,
        progress: bool = True, resume: bool = False, regularizers: tuple[Any, ...] = (),
        heads: tuple[str, ...] = ()) -> TrainResult:
    """Train ``model`` in place; returns timings, history and the best trainable state (by validation; the
    final one without validation). With ``run_dir`` rank 0 writes a resumable checkpoint every
    ``train.save_every`` steps (default: at each evaluation); ``resume`` continues from it, batch for batch,
    to the same result. Dropout masks, gradient clipping, the input embedding's gradient, the heap and packed
    rows' attention take the cheaper paths of :mod:`tuneforge.fast`; Llama-style eager attention, RMSNorm and
    rotary embeddings those of :mod:`tuneforge.grouped_attention`, :mod:`tuneforge.rms_norm` and
    :mod:`tuneforge.rotary`; a BERT-style classifier's last block runs where its head reads; a method's own
    faster paths run within its optional ``training`` context (LoRA: layers that read one input run together)."""
    fast.tune_allocator()
    sample = (last_layer.sample_batch(data.train, rt.pad_id, rt.device)
              if cfg.train.distributed != "fsdp" else None)  # FSDP: blocks are sharded
    with (fast.fast_dropout(model, rt.device), fast.packed_attention(model, rt.device, rt.padding_free, rt.bf16),
          fast.fast_attention(model, rt.device), grouped_attention(model, rt.device),
          fast_rms_norm(model, rt.device), fast_rotary(model, rt.device),
          fast.sparse_embedding_gradient(model, rt.device, distributed.current().world,
                                         embedding_hook(data, cfg, rt, regularizers)) as embedding,
          last_layer.head_only(model, sample, rt.device, rt.bf16),
          registry.training(cfg.method_name, model, sample, rt.bf16)):
        rows = embedding if isinstance(embedding, TrainedRows) else None
        return _fit(model, task, data, cfg, rt, run_dir, progress, resume, regularizers, heads, rows)


def embedding_hook(data: Prepared, cfg: RunConfig, rt: Runtime, regularizers: tuple[Any, ...]) -> Any:
    """What takes a trained input embedding's sparse gradient: the optimizer's stand-in of the rows that the
    training data can look up (:class:`TrainedRows`) where nothing else changes the other rows but AdamW's decay
    (no other optimizer's weight decay, no regulariser's dense gradient), else a kept dense buffer
    (:class:`fast.KeptGradient`)."""
    if (cfg.train.weight_decay and cfg.train.optimizer != "adamw") or regularizers:
        return fast.KeptGradient
    return lambda weight: TrainedRows(weight, training_ids(data.train, rt.pad_id))


def _fit(model: nn.Module, task: Task, data: Prepared, cfg: RunConfig, rt: Runtime, run_dir: Path | None,
         progress: bool, resume: bool, regularizers: tuple[Any, ...], heads: tuple[str, ...],
         rows: TrainedRows | None) -> TrainResult:
    t = cfg.train
    d = distributed.current()
    torch.manual_seed(t.seed)
    plan = plan_steps(data, cfg, task)
    fsdp_units = [block for _, block in blocks(model)] if t.distributed == "fsdp" else []
    module = distributed.wrap(WithLoss(model, task, regularizers), t.distributed, fsdp_units, rt.bf16, rt.device)
    optimizer, names = build_optimizer(module, cfg, heads, {id(rows.weight): rows.param} if rows else None)
    if rows is not None:
        rows.attach(optimizer)
    total = plan.total
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.schedule, int(t.warmup_ratio * total), total))
    eval_every = t.eval_every or plan.per_epoch
    save_every = eval_every if t.save_every is None else t.save_every
    patience = (t.early_stopping if t.early_stopping is not None else task.auto_patience if plan.auto else None) or None
    if progress and d.main:
        print(plan.describe(patience if data.validation else None), file=sys.stderr)  # stops need them
    result = TrainResult(best=BestWeights(run_dir, d.main))
    sign = 1 if task.greater_is_better else -1
    params = [p for group in optimizer.param_groups for p in group["params"]]  # what clipping measures
    if resume and run_dir is not None and training_state.has_training_state(run_dir):
        loop = training_state.load_training_state(run_dir, module, optimizer, names, scheduler, rt.device)
        for key in TrainResult.LOOP_KEYS:
            setattr(result, key, loop.get(key, getattr(result, key)))  # a key newer than the checkpoint: default
        result.best.resumed(result.best_step, loop["best_state"])
    step = result.steps
    logger = Logger(run_dir, d.main, resumed_at=step if resume else None)
    bar = progress_bar(total=total, initial=step, desc="train", disable=not progress or not d.main, dynamic_ncols=True)
    logged = torch.zeros(2, dtype=torch.float64, device=rt.device)  # this rank's loss sum, all ranks' units
    logged[0], logged[1] = result.unlogged[0] if d.main else 0.0, result.unlogged[1]  # a resumed log window
    try:  # the TensorBoard writer's thread and the bar end even if training fails (a notebook goes on)
        start = time.perf_counter() - result.train_seconds
        model.train()  # once, and again after each evaluation (transformers' train() costs ~1 ms a call)
        lr = scheduler.get_last_lr()[0]
        while step < total:
            epoch, micro = plan.step(step)
            batches = list(iterate(data.train, micro, rt.pad_id, rt.padding_free, rt.shapes))
            units = [int(task.units(b)) for b in batches]
            masks = [b["attention_mask"] for b in batches]
            counts = distributed.all_sum(torch.tensor([sum(units), sum(int(m.sum()) for m in masks),
                                                       sum(m.numel() for m in masks)], dtype=torch.float64))
            window_units, real, padded = (int(c) for c in counts)
            result.real_tokens, result.padded_tokens = result.real_tokens + real, result.padded_tokens + padded
            scale = d.world / max(window_units, 1)  # DDP/FSDP average gradients over ranks: undo it
            for i, batch in enumerate(batches):
                batch = {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}
                with distributed.gradient_sync(module, i == len(batches) - 1):
                    with autocast(rt.device, rt.bf16):
                        objective, batch_loss = module(batch, scale, 1.0 / len(batches))
                    objective.backward()
                logged[0] += batch_loss.double()
            logged[1] += window_units
            if t.max_grad_norm:
                fast.clip_gradients(params, t.max_grad_norm, optimizer)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]  # the rate this step trained at (logged with it)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == total:
                _log_train_loss(result, logger, bar, logged, step, epoch, lr)
            stop = False
            if (step % eval_every == 0 or step == total) and data.validation:
                check_finite_weights(params, step)  # NaN weights must not be scored, nor kept as the best
                elapsed = time.perf_counter() - start
                with distributed.unsharded(module):
                    metrics = task.evaluate(model, data.validation, rt, cfg, data.meta, progress=progress and d.main)
                model.train()
                checkpoint.crash_point("after-evaluation")
                start = time.perf_counter() - elapsed  # evaluation time is not training time
                stop = _record_evaluation(result, logger, metrics, task.metric, sign, step, module, patience)
            if stop:
                if progress and d.main:
                    print(f"\nearly stopping at step {step:,} of {total:,}: validation {task.metric} did not improve "
                          f"for {patience} evaluations; the best, step {result.best_step:,}, is kept", file=sys.stderr)
                total = step
            elif run_dir is not None and save_every and step % save_every == 0 and step < total:
                check_finite_weights(params, step)  # never checkpoint NaN weights
                result.steps, result.train_seconds = step, time.perf_counter() - start
                result.unlogged = (float(distributed.all_sum(logged[0])), int(logged[1]))
                training_state.save_training_state(run_dir, module, optimizer, names, scheduler,
                                                   {k: getattr(result, k) for k in TrainResult.LOOP_KEYS}, rt.device)
                result.best.checkpoint_written(result.best_step)
        result.train_seconds = time.perf_counter() - start
        result.steps = step
        check_finite_weights(params, step)  # the last update (no loss has seen it) may have overflowed
        if logged[1] > 0:  # early stopping ended the run between two logged steps
            _log_train_loss(result, logger, bar, logged, step, epoch, lr)
    finally:
        bar.close()
        logger.close()
    if result.best_step is None:  # no validation: the final weights themselves (no copy beside the optimizer's)
        result.best_state = training_state.model_names(distributed.full_state(module, copy=False))
    return result


def _log_train_loss(result: TrainResult, logger: Logger, bar: Any, logged: torch.Tensor, step: int, epoch: int,
                    lr: float) -> None:
    """Log the training loss since the last log: loss sum / units over all ranks (weighted like validation);
    ``logged`` is reset. Every rank calls it at the same steps."""
    train_loss = float(distributed.all_sum(logged[0]) / logged[1].clamp_min(1))
    logged.zero_()
    bar.set_postfix(loss=f"{train_loss:.4f}", refresh=False)  # drawn with the next update (a log file: a line a minute)
    logger.log({"step": step, "epoch": epoch, "train_loss": train_loss, "lr": lr})
    check_finite(train_loss, step)
    result.history.append({"step": step, "train_loss": train_loss})
    result.first_loss = train_loss if result.first_loss is None else result.first_loss
    result.last_loss = train_loss


def check_finite(loss: float, step: int) -> None:
    """Stop a run whose training loss is no longer finite (its weights are NaN/inf from then on): one line with
    the likely fixes instead of a run saved as if it had succeeded."""
    if not math.isfinite(loss):
        raise ConfigError(f"training diverged: the training loss is {loss} at step {step}; {DIVERGED_FIXES}")


def check_finite_weights(params: list[torch.Tensor], step: int) -> None:
    """Stop a run whose trained weights are no longer finite, on every rank alike (FSDP: each checks its shards).
    A loss sees each update only at the next step, so the last update can overflow unseen (a huge learning rate)."""
    bad = torch.zeros((), dtype=torch.float64)
    for p in params:
        if not bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()):  # no collective
            bad += 1
            break
    if distributed.all_sum(bad):
        raise ConfigError(f"training diverged: the trained weights are not finite after step {step}; {DIVERGED_FIXES}")


def _record_evaluation(result: TrainResult, logger: Logger, metrics: dict[str, Any], metric: str, sign: int,
                       step: int, module: nn.Module, patience: int | None) -> bool:
    """Log validation metrics, keep the best trainable state; True when early stopping ends the run."""
    value, loss = metrics[metric], metrics.get("loss")
    logger.log({"step": step, **{f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}})
    result.history.append({"step": step, f"val_{metric}": value, "val_loss": loss})
    if improves(value, loss, result.best_metric, result.best_loss, sign):
        result.best_metric, result.best_step, result.best_loss, result.bad_evals = value, step, loss, 0
        result.best.keep(training_state.model_names(distributed.full_state(module, copy=False)), step)
        return False
    result.bad_evals += 1
    return bool(patience and result.bad_evals >= patience)


def improves(value: float, loss: float | None, best: float | None, best_loss: float | None, sign: int) -> bool:
    """Is an evaluation better than the best so far: a better metric, or the same metric at a lower validation
    loss. The tie-break keeps a run learning through a flat metric (entity F1 stays 0 while a tagger still
    predicts only ``O``; accuracy on a small validation set) instead of early-stopping it there. The loss must
    fall by ``LOSS_TIE_DELTA`` (relative), so a run that barely moves (a tiny learning rate) still stops."""
    if best is None or sign * value > sign * best:
        return True
    return value == best and loss is not None and best_loss is not None and loss < best_loss * (1 - LOSS_TIE_DELTA)
