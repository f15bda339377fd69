"""Shared pieces of the tuneforge-vs-Trainer benchmarks, worker side: clocks, counters, data, both training paths
(the parent side, processes, matmul-rate probes, schedule and command line: ``driver.py``; the results table
and the verdicts: ``results_table.py``; both re-exported here).

Every configuration runs in a fresh subprocess of the benchmark script (``launch``), so peak memory is per
run; the worker prints one ``BENCH_RESULT {json}`` line that the parent collects. The machine's matmul rate is
measured by ``flops.py`` in a fresh subprocess with the runs' thread count before the first run and after
every round of repeats (the same sitting), and MFU is computed against the highest of those probes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

# the parent side (processes, probes, schedule, command line) lives in driver.py; summaries, the results table,
# the verdicts and the machine line in results_table.py: both re-exported here
from driver import (BF16_WEIGHTS, RESULT_PREFIX, applies, comparison_parser, comparison_settings, launch,
                    matmul_probe, measured, measured_before, output_path, resolve_precision, results_file, run_interleaved,
                    write_json, write_results)
from results_table import (DTYPES, MIN_REPEATS, SPEED_TARGETS, comparison_table, environment, flops_text,
                           machine_line, median, summarise)

__all__ = ["DTYPES", "MIN_REPEATS", "SPEED_TARGETS", "comparison_table", "environment", "flops_text", "machine_line",
           "median", "summarise", "FRAMEWORKS", "LABELS", "FirstLinearDtype", "ListDataset", "ForwardTokens",
           "split_records", "prepared_data", "applies", "base_dtype", "upcast_trainable", "BF16_WEIGHTS",
           "resolve_precision", "worker_device", "trainer_clock", "worker_main",
           "run_tuneforge", "trainer_precision_args", "dispatch_worker", "launch", "matmul_probe", "write_json",
           "run_interleaved", "comparison_parser", "measured", "measured_before", "output_path", "results_file",
           "comparison_settings", "write_results"]

FRAMEWORKS = ("tuneforge", "trainer", "trainer_grouped", "trainer_flat", "trainer_grouped_bf16w",
              "trainer_flat_bf16w")
LABELS = {
    "tuneforge": "tuneforge",
    "trainer": "Trainer + PEFT (defaults: random batches)",
    "trainer_grouped": "Trainer + PEFT, train_sampling_strategy=group_by_length",
    "trainer_flat": "Trainer + PEFT, DataCollatorWithFlattening (padding-free)",
    "trainer_grouped_bf16w": "Trainer + PEFT, group_by_length, base loaded in bf16 (trainable weights float32)",
    "trainer_flat_bf16w": "Trainer + PEFT, DataCollatorWithFlattening, base loaded in bf16 (trainable weights float32)",
}


def base_dtype(spec: dict[str, Any]) -> Any:
    """The dtype a Trainer row loads the pre-trained weights in: bf16 for a bf16-weights row, else float32."""
    import torch
    return torch.bfloat16 if spec["framework"].endswith(BF16_WEIGHTS) else torch.float32


def upcast_trainable(model: Any) -> Any:
    """Trainable parameters (LoRA's, a trained head's) in float32 on a bf16-loaded model, as LLaMA-Factory
    upcasts them: the optimizer updates float32 weights while the frozen base stays bf16."""
    import torch
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


class FirstLinearDtype:
    """Records the output dtype of the first linear layer called in training mode (is autocast on?): an
    ``nn.Linear`` or a method's wrapper of one (tuneforge's LoRA layers and LM-head loss do not call theirs as
    modules), then removes its global hook so it costs nothing afterwards."""

    def __init__(self) -> None:
        import torch
        self.dtype: str | None = None
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        import torch
        linear = isinstance(module, torch.nn.Linear) or type(module).__name__.endswith("Linear")
        if self.dtype is None and linear and module.training and torch.is_tensor(output):
            self.dtype = str(output.dtype).replace("torch.", "")
            self.handle.remove()


class ListDataset:
    """A plain map-style dataset over tuneforge's tokenised examples (dicts of lists)."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]


# --------------------------------------------------------------------------------------------------------
# Data and precision through tuneforge's own code (the current API: RunConfig -> Splits / Prepared)
# --------------------------------------------------------------------------------------------------------

def split_records(config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """tuneforge's checked, deduplicated, seeded split of a run config's data: {"train"|"validation"|"test": records}."""
    from tuneforge import tasks
    from tuneforge.config import load_config
    from tuneforge.data.dataset import load_splits

    cfg = load_config(None, config)
    return load_splits(cfg, tasks.get(cfg.model.task)).records


def prepared_data(config: dict[str, Any], model_path: str | Path):
    """(Prepared, tokenizer, task, RunConfig): the tokenised splits exactly as tuneforge builds them for ``config``."""
    from tuneforge import tasks
    from tuneforge.config import load_config
    from tuneforge.data.dataset import prepare
    from tuneforge.models import load_tokenizer

    cfg = load_config(None, config)
    task = tasks.get(cfg.model.task)
    tokenizer = load_tokenizer(model_path)
    _splits, prepared = prepare(cfg, task, tokenizer)
    return prepared, tokenizer, task, cfg


def worker_device(spec: dict[str, Any]):
    import torch
    return torch.device("cuda" if spec.get("device") == "cuda" else "cpu")


# --------------------------------------------------------------------------------------------------------
# Clocks and counters (worker side)
# --------------------------------------------------------------------------------------------------------

def clock_tuneforge_fit() -> dict[str, float]:
    """Wrap ``tuneforge.run.fit`` so the returned dict receives the CPU and wall time of the training loop
    (a cross-check of tuneforge's own ``train_seconds``) and the torch thread count inside it."""
    import torch
    import tuneforge.run

    clock: dict[str, float] = {}
    fit = tuneforge.run.fit

    def timed_fit(*args: Any, **kwargs: Any) -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        out = fit(*args, **kwargs)
        clock.update(cpu=time.process_time() - cpu, wall=time.perf_counter() - wall, threads=torch.get_num_threads())
        return out

    tuneforge.run.fit = timed_fit
    return clock


def trainer_clock():
    """A transformers ``TrainerCallback`` class whose attributes hold on_train_begin..on_train_end wall and CPU
    time and the torch thread count (a cross-check of Trainer's own ``train_runtime``)."""
    import torch
    from transformers import TrainerCallback

    class LoopClock(TrainerCallback):
        begin = end = cpu_begin = cpu_end = 0.0
        threads = 0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            LoopClock.begin, LoopClock.cpu_begin = time.perf_counter(), time.process_time()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            LoopClock.end, LoopClock.cpu_end = time.perf_counter(), time.process_time()
            LoopClock.threads = torch.get_num_threads()

    return LoopClock


class ForwardTokens:
    """Forward pre-hook on ``model`` summing the attention mask (real tokens) and its size (padded tokens) of
    every training-mode forward: the batches the model actually saw. A batch without a mask (flattened,
    padding-free) counts all its tokens as real. Sums stay on the device until read (no sync per step)."""

    def __init__(self, model: Any) -> None:
        self._real: list[Any] = []
        self.padded = self.forwards = 0
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, fargs: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and kwargs.get("position_ids") is not None:
            mask = kwargs["input_ids"].new_ones(kwargs["input_ids"].shape)
        if module.training and mask is not None:
            self._real.append(mask.sum())
            self.padded += mask.numel()
            self.forwards += 1

    @property
    def real(self) -> int:
        return int(sum(int(x) for x in self._real))


def gpu_peak_mib(device: Any) -> float | None:
    import torch
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def worker_main(spec_json: str, worker: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Worker side: run one configuration and print its result line (plus the per-run common measures)."""
    from tuneforge.memory import peak_rss_mb, reset_peak

    spec = json.loads(spec_json)
    reset_peak()  # both sides from here (tuneforge's train() resets it again at its start: the same point)
    res = worker(spec)
    res["peak_memory_mb"] = peak_rss_mb()  # same measure on every side: this process's peak RSS (VmHWM)
    res["peak_gpu_memory_mb"] = gpu_peak_mib(worker_device(spec))  # CUDA: peak allocated, the same call on both sides
    res["tokens_per_second"] = res["real_tokens"] / res["train_seconds"]
    res["padding_factor"] = res["padded_tokens"] / max(1, res["real_tokens"])
    res["tokens_per_cpu_second"] = res["real_tokens"] / max(1e-9, res["loop_cpu_seconds"])
    print(RESULT_PREFIX + json.dumps(res), flush=True)


def run_tuneforge(config: dict[str, Any], threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Worker side: one ``tuneforge.run.train`` in a temporary run directory -> (the common measures, the
    run's metrics.json content)."""
    import tempfile

    import torch
    from tuneforge.run import train

    torch.set_num_threads(threads)
    clock = clock_tuneforge_fit()
    probe = FirstLinearDtype()
    with tempfile.TemporaryDirectory(prefix="bench-tf-") as out:
        m = train({**config, "output_dir": out}, overwrite=True, progress=False).metrics
    return {
        "loop_cpu_seconds": clock["cpu"], "fit_wall_seconds": clock["wall"], "threads_in_loop": clock["threads"],
        "train_seconds": m["train_seconds"],  # tuneforge's own: the loop only (no setup, no evaluation)
        "real_tokens": m["real_tokens"], "padded_tokens": m["padded_tokens"], "steps": m["steps"],
        "trainable_parameters": m["parameters"]["trainable"], "tuneforge_peak_memory_mb": m["peak_memory_mb"],
        "autocast_dtype": probe.dtype, "precision": m["precision"], "padding_free": m.get("padding_free"),
    }, m


def trainer_precision_args(spec: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments for the spec's device and precision (the same precision as tuneforge's side)."""
    return {"bf16": spec["precision"] == "bf16", "use_cpu": spec.get("device", "cpu") == "cpu"}


def tuneforge_train(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``train`` section of a tuneforge side's config: the comparison's shared settings."""
    return {"optimizer": "adamw", "lr": spec["lr"], "head_lr": spec["lr"],  # Trainer: one rate, the head's too
            "weight_decay": spec["weight_decay"], "schedule": "linear",
            "warmup_ratio": spec["warmup_ratio"], "epochs": spec["epochs"], "batch_size": spec["batch_size"],
            "grad_accum": 1, "max_grad_norm": spec["max_grad_norm"], "seed": spec["seed"],
            "precision": spec["precision"], "num_threads": spec["threads"], "device": spec["device"]}


def trainer_arguments(spec: dict[str, Any], n_train: int, grouped: bool, **extra: Any) -> tuple[Any, int]:
    """(Trainer's ``TrainingArguments``, optimizer steps) with the same settings as the tuneforge side: identical step count and
    warmup (steps = ceil(epochs * ceil(n / batch)), warmup = int(warmup_ratio * steps); Trainer's own ratio
    handling would round up instead; the warmup ramps differ by a step: Trainer's step s trains at lr x s / w, its
    first step at 0, tuneforge's at lr x (s + 1) / (w + 1)), no evaluation or saving; random or length-grouped batches."""
    import math
    import tempfile

    from transformers import TrainingArguments

    steps = max(1, math.ceil(spec["epochs"] * math.ceil(n_train / spec["batch_size"])))
    return TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-hf-"), per_device_train_batch_size=spec["batch_size"],
        num_train_epochs=spec["epochs"], learning_rate=spec["lr"], lr_scheduler_type="linear",
        warmup_steps=int(spec["warmup_ratio"] * steps), weight_decay=spec["weight_decay"],
        max_grad_norm=spec["max_grad_norm"], seed=spec["seed"], **trainer_precision_args(spec), eval_strategy="no",
        save_strategy="no", report_to=[], dataloader_num_workers=0, disable_tqdm=True, logging_steps=10,
        train_sampling_strategy="group_by_length" if grouped else "random", **extra), steps


def minilm_with_head(auto_class: Any, spec: dict[str, Any], names: list[str], task_type: str) -> Any:
    """The embedded MiniLM with a fresh labelled head (``auto_class``), LoRA on every linear layer but the
    classifier (trained in full) when ``spec['method']`` is lora, on the worker's device. Seeded as tuneforge."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tuneforge import assets

    torch.manual_seed(spec["seed"])  # same seed before model creation as tuneforge (fresh classifier init)
    model = auto_class.from_pretrained(
        str(assets.minilm_dir()), dtype=base_dtype(spec), num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if spec["method"] == "lora":
        model = get_peft_model(model, LoraConfig(
            r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0, target_modules="all-linear",
            modules_to_save=["classifier"], task_type=task_type))
    return upcast_trainable(model).to(worker_device(spec))


def train_with_trainer(spec: dict[str, Any], model: Any, args: Any, steps: int, train_ds: Any, tokenizer: Any,
                collator: Any) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` with Trainer under the measures every comparison takes (real/padded tokens seen, loop
    clock, autocast probe); returns the trainer and the result fields shared by all Trainer rows."""
    from transformers import Trainer

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = ForwardTokens(model.get_base_model() if hasattr(model, "get_base_model") else model)
    LoopClock = trainer_clock()
    probe = FirstLinearDtype()
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                      data_collator=collator, callbacks=[LoopClock()])
    wall = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - wall
    return trainer, {
        "train_seconds": out.metrics["train_runtime"],  # Trainer's own: from just before the loop to its end
        "loop_seconds_callback": LoopClock.end - LoopClock.begin, "train_call_wall_seconds": wall,
        "loop_cpu_seconds": LoopClock.cpu_end - LoopClock.cpu_begin, "threads_in_loop": LoopClock.threads,
        "real_tokens": counts.real, "padded_tokens": counts.padded, "steps": out.global_step,
        "forwards": counts.forwards, "expected_steps": steps, "trainable_parameters": trainable,
        "autocast_dtype": probe.dtype, "optim": str(args.optim), "train_loss": out.metrics.get("train_loss"),
        "precision": spec["precision"],
    }


def dispatch_worker(spec_json: str, tuneforge_side: Callable[[dict[str, Any]], dict[str, Any]],
                    trainer_side: Callable[..., dict[str, Any]]) -> None:
    """Worker side of both Trainer comparisons: tuneforge, or one of the Trainer configurations."""
    worker_main(spec_json, lambda spec: tuneforge_side(spec) if spec["framework"] == "tuneforge"
                else trainer_side(spec, grouped="grouped" in spec["framework"]))
