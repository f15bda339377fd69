"""tuneforge vs Hugging Face Trainer + PEFT: the same LoRA and full fine-tuning runs, side by side.

    .venv/bin/python benchmarks/bench_classification.py                 # default: LoRA + full, 3 repeats
    .venv/bin/python benchmarks/bench_classification.py --quick         # smoke test: 256 train / 256 test, 1 repeat
    .venv/bin/python benchmarks/bench_classification.py --methods lora --repeats 5

Both sides train the embedded MiniLM (``AutoModelForSequenceClassification``, 2 labels) on the embedded
Rotten Tomatoes sentences, split by tuneforge's own seeded stratified split, tokenised by tuneforge's own
classification task code, with the same batch size, epochs, learning rate, linear schedule and warmup,
AdamW, weight decay, gradient clipping, seed, max_length and precision (``--precision auto``: bf16 autocast
where the CPU runs bf16 natively, else fp32, on both sides), and the same LoRA (rank 8, alpha 16, dropout 0,
every linear layer except the classifier; classifier trained in full). Rows: tuneforge, Trainer + PEFT with
its defaults, and the best-configured Trainer + PEFT (length-grouped batches), which the targets compare
against. Neither side evaluates during training. Every configuration runs in a fresh subprocess (peak RSS is
per run), repeats are interleaved (A, B, C, A, B, C, ...) and medians are reported, with train FLOP/s and MFU
against the matmul rate measured in the same invocation (``flops.py``). See benchmarks/README.md.

Trainer + PEFT is a benchmark-only dependency (transformers ``Trainer``, ``peft``, ``accelerate``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (BF16_WEIGHTS, FRAMEWORKS, LABELS, ListDataset, comparison_parser, measured,
                    comparison_settings, comparison_table, dispatch_worker, environment, flops_text, machine_line,
                    results_file, prepared_data, run_interleaved, run_tuneforge, split_records,
                    minilm_with_head, train_with_trainer, write_results, trainer_arguments, tuneforge_train)


HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BEST_TRAINER = "trainer_grouped"  # the best-configured Trainer row: length-grouped batches

# The demo's data and shapes (configs/demo.yaml) with the settings of the published comparison (2 epochs, LoRA lr
# 1e-3, as the demo had until 2026-12-01); full fine-tuning uses tuneforge's recommended lr for `full`.
DEFAULTS = {
    "max_length": 64, "split": [0.8, 0.1, 0.1], "data_seed": 42, "seed": 42, "batch_size": 32, "epochs": 2.0,
    "lr_lora": 1e-3, "lr_full": 5e-5, "warmup_ratio": 0.06, "weight_decay": 0.01, "max_grad_norm": 1.0,
    "rank": 8, "alpha": 16, "eval_batch_size": 64,
    # Not the demo's: the demo trains on all 6,824 training sentences, which takes about an hour for the 18
    # runs of the default invocation here; 2,000 keeps it near 20 minutes. --train-examples 0: all of them.
    "train_examples": 2000,
}


# --------------------------------------------------------------------------------------------------------
# Data: written once by the parent, read by every worker through tuneforge's own data code.
# --------------------------------------------------------------------------------------------------------

def write_splits(workdir: Path, test_examples: int, train_examples: int | None) -> dict[str, Any]:
    """tuneforge's seeded stratified split of the embedded Rotten Tomatoes sentences (the demo's split),
    optionally the first ``train_examples`` of the (already shuffled) train split, as JSONL files."""
    records = split_records({"model": {"name": "minilm", "task": "classification"},
                             "data": {"dataset": "rotten_tomatoes", "split": DEFAULTS["split"],
                                      "seed": DEFAULTS["data_seed"]}})
    train, test = records["train"], records["test"]
    if train_examples:
        train = train[:train_examples]
    if test_examples:
        test = test[:test_examples]
    paths = {"train": workdir / "train.jsonl", "test": workdir / "test.jsonl"}
    for name, records in (("train", train), ("test", test)):
        with open(paths[name], "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"text": r["text"], "label": r["label"]}) + "\n")
    return {"train_file": str(paths["train"]), "test_file": str(paths["test"]),
            "n_train": len(train), "n_test": len(test)}


def tuneforge_config(spec: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """The tuneforge run config of a benchmark spec. Validation split is empty: no evaluation in training
    (the final model is the one tested, as with Trainer)."""
    method = ({"name": "lora", "rank": spec["rank"], "alpha": spec["alpha"], "dropout": 0.0,
               "target_modules": ["all-linear"]} if spec["method"] == "lora" else {"name": "full"})
    return {
        "model": {"name": "minilm", "task": "classification", "max_length": spec["max_length"]},
        "data": {"train_file": spec["train_file"], "test_file": spec["test_file"], "split": [1.0, 0.0, 0.0],
                 "seed": spec["data_seed"]},
        "method": method,
        "train": tuneforge_train(spec),
        "eval": {"batch_size": spec["eval_batch_size"], "before": False},
        "output_dir": out_dir,
    }


def prepared_examples(spec: dict[str, Any]):
    """Tokenised train/test examples exactly as tuneforge builds them (its data pipeline on the same config)."""
    from tuneforge import assets

    prepared, tokenizer, _task, _cfg = prepared_data(tuneforge_config(spec, "unused"), assets.minilm_dir())
    return prepared, tokenizer


def flops_per_token(spec: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Training FLOPs per real token of each method on this training data (``flops.py``): the classifier and
    pooler run once per example."""
    from transformers import AutoModelForSequenceClassification
    from tuneforge import assets
    from flops import model_shapes, per_token_table

    prepared, _ = prepared_examples({**spec, "framework": "tuneforge", "method": "lora", "lr": spec["lr_lora"]})
    lengths = [len(e["input_ids"]) for e in prepared.train]
    shapes = model_shapes(assets.minilm_dir(), AutoModelForSequenceClassification,
                          num_labels=len(prepared.meta["labels"]))
    return per_token_table(shapes, lengths, [1] * len(lengths), methods, spec["rank"])


# --------------------------------------------------------------------------------------------------------
# Workers: one configuration per fresh subprocess.
# --------------------------------------------------------------------------------------------------------

def run_tuneforge_side(spec: dict[str, Any]) -> dict[str, Any]:
    res, m = run_tuneforge(tuneforge_config(spec, "unused"), spec["threads"])
    return {**res, "test_accuracy": m["test_after"]["accuracy"]}


def run_trainer(spec: dict[str, Any], grouped: bool) -> dict[str, Any]:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    prepared, tokenizer = prepared_examples(spec)
    names = prepared.meta["labels"]
    train_ds, test_ds = ListDataset(prepared.train), ListDataset(prepared.test)

    model = minilm_with_head(AutoModelForSequenceClassification, spec, names, "SEQ_CLS")
    args, steps = trainer_arguments(spec, len(train_ds), grouped, per_device_eval_batch_size=spec["eval_batch_size"])
    trainer, res = train_with_trainer(spec, model, args, steps, train_ds, tokenizer,
                                      DataCollatorWithPadding(tokenizer))
    pred = trainer.predict(test_ds)
    accuracy = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
    return {**res, "test_accuracy": accuracy}


# --------------------------------------------------------------------------------------------------------
# Parent: schedule, aggregate, print.
# --------------------------------------------------------------------------------------------------------

def markdown(rows: list[dict[str, Any]], settings: dict[str, Any], env: dict[str, Any], flops: dict[str, Any],
             rates: dict[str, Any], probes: int) -> str:
    s = settings
    table = comparison_table(rows, LABELS, "test_accuracy", "test accuracy", ".4f", lower_is_better=False,
                             settings=s, rates=rates, best=BEST_TRAINER)
    text = [
        "# Classification benchmark: tuneforge vs Hugging Face Trainer + PEFT", "",
        f"MiniLM (all-MiniLM-L6-v2) sequence classification on Rotten Tomatoes sentences: {s['n_train']:,} train / "
        f"{s['n_test']:,} test examples (tuneforge's seeded stratified split {s['split']}, seed {s['data_seed']}), "
        f"max_length {s['max_length']}, batch {s['batch_size']}, {s['epochs']:g} epoch(s), AdamW (wd {s['weight_decay']}), "
        f"linear schedule, warmup {s['warmup_ratio']} of steps, grad clip {s['max_grad_norm']}, training seed {s['seed']} + repeat "
        "index (the same on both sides), "
        f"precision {s['precision']} on both sides (--precision {s['requested_precision']}; "
        f"{'bf16 autocast' if s['precision'] == 'bf16' else 'float32, no autocast'}) on {s['device']}, "
        f"{s['threads']} torch threads; lr LoRA {s['lr_lora']:g}, full {s['lr_full']:g}; LoRA r={s['rank']}, "
        f"alpha={s['alpha']}, dropout 0, all linear layers except the classifier (trained in full). "
        f"Medians of {s['repeats']} interleaved repeats, each run in a fresh process. The best-configured Trainer "
        f"row (the targets' reference) groups batches by length.", "",
        *table, "",
        *flops_text(flops, rates, s["precision"], probes), "",
        "Real tokens = sum of attention masks of the training batches seen (the same count on both sides); "
        "train s = training loop only (tuneforge `train_seconds`; Trainer `train_runtime`), no evaluation; "
        "peak MiB = peak resident set size of the run's worker process (VmHWM, from the worker's start); real tokens per CPU-s = real tokens ÷ "
        "process CPU time (all threads) of the loop; max load = highest 1-minute load average seen before/after "
        f"the runs of that row (the run itself adds about {s['threads']}): well above that, other processes shared "
        "the CPU and timings are unreliable.", "",
        machine_line(env),
    ]
    return "\n".join(text) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = comparison_parser(__doc__, DEFAULTS, 256, "use the first N examples of the (shuffled) train split (default "
                          f"{DEFAULTS['train_examples']}; 0: all 6,824 of them, the demo's data)",
                          RESULTS / "classification.md")
    p.add_argument("--no-default-trainer", action="store_true",
                   help="skip the 'Trainer + PEFT (defaults)' row; the best-configured (group_by_length) row stays")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.worker:
        dispatch_worker(a.worker, run_tuneforge_side, run_trainer)
        return
    m = measured(a, argv, measure, "test_accuracy", FRAMEWORKS)
    write_results(m.out, markdown(m.rows, m.settings, m.env, m.flops, m.rates, len(m.probes)), m.payload())


def measure(a: argparse.Namespace, argv: list[str] | None) -> tuple[Any, ...]:
    """Run the comparison: (results file, settings, runs, matmul probes, FLOPs, environment)."""
    t0 = time.perf_counter()
    settings, methods = comparison_settings(a, DEFAULTS, 256, 256)
    frameworks = [f for f in FRAMEWORKS if "flat" not in f and not (a.no_default_trainer and f == "trainer")
                  and not (a.no_bf16_weights_trainer and f.endswith(BF16_WEIGHTS))]
    out = results_file(a)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        data = write_splits(Path(tmp), settings["test_examples"], settings["train_examples"])
        settings.update(n_train=data.pop("n_train"), n_test=data.pop("n_test"))
        flops = flops_per_token({**settings, **data}, methods)
        runs, probes = run_interleaved(__file__, settings, methods, tuple(frameworks), data, out, "test_accuracy")
    env = {**environment(), "wall_seconds": time.perf_counter() - t0, "command": " ".join(
        ["python", "benchmarks/bench_classification.py", *(argv if argv is not None else sys.argv[1:])])}
    return out, settings, runs, probes, flops, env

if __name__ == "__main__":
    main()
