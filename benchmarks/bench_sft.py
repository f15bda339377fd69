"""Supervised fine-tuning (SFT) of a causal LM: tuneforge vs Hugging Face Trainer + PEFT, side by side.

    .venv/bin/python benchmarks/bench_sft.py                 # default: LoRA + full, 3 repeats
    .venv/bin/python benchmarks/bench_sft.py --quick         # smoke test: 64 train / 32 test pairs, 1 repeat
    .venv/bin/python benchmarks/bench_sft.py --methods lora --repeats 5

Both sides fine-tune the embedded SmolLM2-135M-Instruct on the embedded ChatterBot Q->A pairs (the
``make demo-chat`` data: tuneforge's seeded 80/10/10 split, chat template with the system prompt "Reply
briefly.", max_length 64), tokenised once by tuneforge's own ``causal_lm`` task code so both see the same
token ids and the same label mask (loss on answer tokens only). Same batch size, epochs, learning rate,
linear schedule and warmup, AdamW, gradient clipping, seed and precision (``--precision auto``: bf16 autocast
where the device runs bf16 natively, else fp32, on both sides); the same LoRA (rank 8, alpha 16, dropout 0,
every linear layer except the LM head). Both draw random batches (tuneforge's causal-LM default; Trainer's
default); tuneforge packs each batch's examples into padding-free rows (its default, ``train.padding_free``).
Trainer rows: its defaults (padded rows), and the best-configured one, which the targets compare against:
transformers' padding-free ``DataCollatorWithFlattening`` (one row per batch, position ids). Neither side
evaluates during training; the final models are scored by the same code (tuneforge's token-weighted test
loss -> perplexity). Every configuration runs in a fresh subprocess, repeats are interleaved, medians are
reported, with train FLOP/s and MFU against the matmul rate measured in the same invocation (``flops.py``).
See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (BF16_WEIGHTS, FRAMEWORKS, LABELS, ListDataset, base_dtype, comparison_parser, measured,
                    upcast_trainable,
                    comparison_settings, comparison_table, dispatch_worker, environment, flops_text, machine_line,
                    results_file, prepared_data, run_interleaved, run_tuneforge, split_records,
                    train_with_trainer, worker_device, write_results,
                    trainer_arguments, tuneforge_train)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BEST_TRAINER = "trainer_flat"  # the best-configured Trainer row: padding-free DataCollatorWithFlattening
QUICK_TRAIN, QUICK_TEST = 64, 32  # --quick: pairs trained / scored (a smoke test of every code path)
MFU_TARGETS = {"lora": 0.15}  # SmolLM2 LoRA SFT: at least 15 % of the matmul rate of the run's precision

# configs/demo-chat.yaml's settings; full fine-tuning uses tuneforge's default lr for `full`.
DEFAULTS = {
    "max_length": 64, "split": [0.8, 0.1, 0.1], "data_seed": 42, "seed": 42, "batch_size": 16, "epochs": 1.0,
    "lr_lora": 2e-3, "lr_full": 5e-5, "warmup_ratio": 0.06, "weight_decay": 0.0, "max_grad_norm": 1.0,
    "rank": 8, "alpha": 16, "eval_batch_size": 32, "system_prompt": "Reply briefly.", "train_examples": 0,
}


def write_splits(workdir: Path, test_examples: int, train_examples: int) -> dict[str, Any]:
    """The demo-chat split of the embedded ChatterBot pairs (optionally the first ``train_examples`` of the
    shuffled train split) as instruction/output JSONL files."""
    records = split_records({"model": {"name": "smollm2", "task": "causal_lm"},
                             "data": {"dataset": "chatterbot", "split": DEFAULTS["split"], "seed": DEFAULTS["data_seed"]}})
    train, test = records["train"], records["test"]
    if train_examples:
        train = train[:train_examples]
    if test_examples:
        test = test[:test_examples]
    paths = {"train": workdir / "train.jsonl", "test": workdir / "test.jsonl"}
    for name, records in (("train", train), ("test", test)):
        with open(paths[name], "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"instruction": r["instruction"], "output": r["output"]}) + "\n")
    return {"train_file": str(paths["train"]), "test_file": str(paths["test"]), "n_train": len(train),
            "n_test": len(test)}


def tuneforge_config(spec: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """The tuneforge run config of a spec: no validation split (no evaluation in training), no generation;
    ``--set`` overrides last (tuneforge's side only)."""
    from tuneforge.config import merge_dicts, parse_overrides

    method = ({"name": "lora", "rank": spec["rank"], "alpha": spec["alpha"], "dropout": 0.0,
               "target_modules": ["all-linear"]} if spec["method"] == "lora" else {"name": "full"})
    cfg = {
        "model": {"name": "smollm2", "task": "causal_lm", "max_length": spec["max_length"]},
        "data": {"train_file": spec["train_file"], "test_file": spec["test_file"], "split": [1.0, 0.0, 0.0],
                 "seed": spec["data_seed"], "format": "pairs", "system_prompt": spec["system_prompt"]},
        "method": method,
        "train": tuneforge_train(spec),
        "eval": {"batch_size": spec["eval_batch_size"],  # the untrained model: scored in the first repeat
                 "before": spec["framework"] == "tuneforge" and spec.get("repeat") == 0 and not spec.get("quick"),
                 "generate_samples": 0},
        # no forgetting probes (chitchat perplexity, own answers, zero-shot sentiment): Trainer does no such work
        "forgetting": {"reference": "none", "probes": []},
        "output_dir": out_dir,
    }
    return merge_dicts(cfg, parse_overrides(spec.get("tuneforge_set", [])))


def flops_per_token(spec: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Training FLOPs per real token of each method on this training data (``flops.py``): LM-head FLOPs only at
    the trained (answer) positions, on both sides."""
    from transformers import AutoModelForCausalLM
    from tuneforge import assets
    from tuneforge.data.chat import IGNORE
    from flops import model_shapes, per_token_table

    config = tuneforge_config({**spec, "framework": "tuneforge", "method": "lora", "lr": spec["lr_lora"]}, "unused")
    prepared, _tokenizer, _task, _cfg = prepared_data(config, assets.resolve_model("smollm2"))
    lengths = [len(e["input_ids"]) for e in prepared.train]
    trained = [sum(1 for t in e["labels"][1:] if t != IGNORE) for e in prepared.train]
    shapes = model_shapes(assets.resolve_model("smollm2"), AutoModelForCausalLM)
    return per_token_table(shapes, lengths, trained, methods, spec["rank"])


def run_tuneforge_side(spec: dict[str, Any]) -> dict[str, Any]:
    res, m = run_tuneforge(tuneforge_config(spec, "unused"), spec["threads"])
    return {**res, "test_perplexity": m["test_after"]["perplexity"], "test_loss": m["test_after"]["loss"],
            "test_perplexity_before": (m.get("test_before") or {}).get("perplexity")}


def run_trainer(spec: dict[str, Any], grouped: bool) -> dict[str, Any]:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, DataCollatorWithFlattening
    from tuneforge import assets
    from tuneforge.tasks import Runtime

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    device = worker_device(spec)
    # the same token ids and label masks as tuneforge: its own data pipeline on the same config
    prepared, tokenizer, task, cfg = prepared_data(tuneforge_config(spec, "unused"), assets.resolve_model("smollm2"))
    tokenizer.padding_side = "right"  # as tuneforge pads
    train_ds = ListDataset(prepared.train)

    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(str(assets.resolve_model("smollm2")), dtype=base_dtype(spec))
    if spec["method"] == "lora":
        model = get_peft_model(model, LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    upcast_trainable(model).to(device)
    args, steps = trainer_arguments(spec, len(train_ds), grouped)
    collator = (DataCollatorWithFlattening() if "flat" in spec["framework"]  # one row per batch
                else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    _, res = train_with_trainer(spec, model, args, steps, train_ds, tokenizer, collator)
    # score the final model with the same code as tuneforge's test_after; LoRA stays unmerged (as in tuneforge):
    # merging into fp32 weights that autocast then rounds to bf16 would lose part of the small LoRA update
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    rt = Runtime(device=device, bf16=spec["precision"] == "bf16", pad_id=tokenizer.pad_token_id)
    test = task.evaluate(model, prepared.test, rt, cfg, prepared.meta)
    return {**res, "test_perplexity": test["perplexity"], "test_loss": test["loss"],
            "attention": str(getattr(model.config, "_attn_implementation", ""))}


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any], env: dict[str, Any], before: float | None,
             flops: dict[str, Any], rates: dict[str, Any], probes: int) -> str:
    s = settings
    table = comparison_table(rows, LABELS, "test_perplexity", "test perplexity", ".3f", lower_is_better=True,
                             settings=s, rates=rates, best=BEST_TRAINER, mfu_targets=MFU_TARGETS)
    text = [
        "# SFT benchmark: tuneforge vs Hugging Face Trainer + PEFT", "",
        f"SmolLM2-135M-Instruct on ChatterBot Q→A pairs: {s['n_train']:,} train / {s['n_test']:,} test pairs "
        f"(tuneforge's seeded split {s['split']}, seed {s['data_seed']}; the `make demo-chat` data), SmolLM2 chat "
        f"template with system prompt \"{s['system_prompt']}\", loss on answer tokens only, max_length "
        f"{s['max_length']}, batch {s['batch_size']}, {s['epochs']:g} epoch(s), AdamW (wd {s['weight_decay']}), linear "
        f"schedule, warmup {s['warmup_ratio']} of steps, grad clip {s['max_grad_norm']}, training seed {s['seed']} + "
        f"repeat index, precision {s['precision']} on both sides (--precision {s['requested_precision']}; "
        f"{'bf16 autocast' if s['precision'] == 'bf16' else 'float32, no autocast'}) on {s['device']}, "
        f"{s['threads']} torch threads; lr LoRA {s['lr_lora']:g}, full "
        f"{s['lr_full']:g}; LoRA r={s['rank']}, alpha={s['alpha']}, dropout 0, all linear layers except the LM head. "
        f"Medians of {s['repeats']} interleaved repeats, each run in a fresh process. The best-configured Trainer "
        "row (the targets' reference) uses transformers' padding-free DataCollatorWithFlattening."
        + (f" tuneforge config overrides: `{' '.join(s['tuneforge_set'])}`." if s.get("tuneforge_set") else ""), "",
        *table, "",
        *([f"Test perplexity of the untrained model (same scoring): {before:.3f}.", ""] if before else []),
        *flops_text(flops, rates, s["precision"], probes), "",
        "Real tokens = non-padding tokens of the training batches seen (prompt + answer; the same count on both "
        "sides); train s = training loop only (tuneforge `train_seconds`; Trainer `train_runtime`), no evaluation; "
        "test perplexity = exp(token-weighted mean cross-entropy over the test answers), computed for both sides by "
        "tuneforge's `causal_lm` evaluation in the runs' precision (LoRA unmerged on both sides); peak MiB = peak "
        "resident set size of the run's process; max load = highest 1-minute load average seen around that row's "
        f"runs (the run itself adds about {s['threads']}).", "",
        machine_line(env),
    ]
    return "\n".join(text) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = comparison_parser(__doc__, DEFAULTS, QUICK_TRAIN, "use the first N pairs of the (shuffled) train split (default 0: "
                          "all 834)", RESULTS / "sft.md")
    p.add_argument("--grouped-trainer", action="store_true",
                   help="add a 'Trainer + PEFT, group_by_length' row (more runs)")
    p.add_argument("--no-default-trainer", action="store_true",
                   help="skip the 'Trainer + PEFT (defaults: padded rows)' row; the best-configured "
                        "(DataCollatorWithFlattening) row stays")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="tuneforge config overrides for tuneforge's runs, e.g. train.group_by_length=true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.worker:
        dispatch_worker(a.worker, run_tuneforge_side, run_trainer)
        return
    m = measured(a, argv, measure, "test_perplexity", FRAMEWORKS)
    before = next((r["test_perplexity_before"] for r in m.runs if r.get("test_perplexity_before")), None)
    text = markdown(m.rows, m.settings, m.env, before, m.flops, m.rates, len(m.probes))
    write_results(m.out, text, {**m.payload(), "test_perplexity_before": before})


def measure(a: argparse.Namespace, argv: list[str] | None) -> tuple[Any, ...]:
    """Run the comparison: (results file, settings, runs, matmul probes, FLOPs, environment)."""
    t0 = time.perf_counter()
    settings, methods = comparison_settings(a, DEFAULTS, QUICK_TRAIN, QUICK_TEST)
    settings["tuneforge_set"] = a.set
    frameworks = tuple(f for f in FRAMEWORKS if (a.grouped_trainer or f != "trainer_grouped")
                       and f != "trainer_grouped" + BF16_WEIGHTS and not (a.no_default_trainer and f == "trainer")
                       and not (a.no_bf16_weights_trainer and f.endswith(BF16_WEIGHTS)))
    out = results_file(a)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        data = write_splits(Path(tmp), settings["test_examples"], settings["train_examples"])
        settings.update(n_train=data.pop("n_train"), n_test=data.pop("n_test"))
        flops = flops_per_token({**settings, **data}, methods)
        runs, probes = run_interleaved(__file__, settings, methods, frameworks, data, out, "test_perplexity")
    env = {**environment(), "wall_seconds": time.perf_counter() - t0,
           "command": " ".join(["python", "benchmarks/bench_sft.py", *(argv if argv is not None else sys.argv[1:])])}
    return out, settings, runs, probes, flops, env

if __name__ == "__main__":
    main()
