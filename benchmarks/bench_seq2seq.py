"""Sequence to sequence (an encoder-decoder): tuneforge vs Hugging Face Trainer + PEFT, side by side.

    .venv/bin/python benchmarks/bench_seq2seq.py                 # default: LoRA + full, 3 repeats
    .venv/bin/python benchmarks/bench_seq2seq.py --quick         # smoke test: 64 train pairs, 1 repeat

No pre-trained encoder-decoder ships offline, so both sides train the same **randomly initialised T5 with
t5-small's shapes** (6 + 6 layers, d_model 512, d_ff 2048, 8 heads; MiniLM's WordPiece vocabulary of 30,522,
its [SEP] as end-of-sequence, decoder start at padding; seeded, built once per invocation) on the embedded
ChatterBot Q->A pairs (question -> answer; tuneforge's seeded 80/10/10 split, max_length 64 each side). This
measures speed and memory; test perplexity only checks that both sides learned alike. Both see the same
token ids (tokenised once by tuneforge's ``seq2seq`` task code; Trainer's rows let the model shift the labels
itself, which the test suite shows equals tuneforge's teacher forcing). Same batch size, epoch, learning rate,
linear schedule and warmup, AdamW, clipping, seed and precision; the same LoRA (rank 8, alpha 16, dropout 0,
every linear layer but the LM head). Trainer rows: its defaults (random batches, padded by
``DataCollatorForSeq2Seq``) and the best-configured one, which the ratios compare against: length-grouped
batches (``group_by_length``; transformers has no padding-free collator for encoder-decoders). Every
configuration runs in a fresh subprocess, repeats interleaved, medians reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (LABELS, ListDataset, comparison_parser, comparison_settings, comparison_table, dispatch_worker,
                    environment, flops_text, machine_line, results_file, prepared_data, run_interleaved, run_tuneforge,
                    split_records, summarise, train_with_trainer, trainer_arguments, tuneforge_train, worker_device,
                    write_results)
from flops import pooled_rates

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BEST_TRAINER = "trainer_grouped"
FRAMEWORKS = ("tuneforge", "trainer", "trainer_grouped")
QUICK_TRAIN, QUICK_TEST = 64, 32
T5_SMALL = {"d_model": 512, "d_ff": 2048, "num_layers": 6, "num_heads": 8, "d_kv": 64}
DEFAULTS = {
    "max_length": 64, "split": [0.8, 0.1, 0.1], "data_seed": 42, "seed": 42, "batch_size": 16, "epochs": 1.0,
    "lr_lora": 1e-3, "lr_full": 1e-4, "warmup_ratio": 0.06, "weight_decay": 0.0, "max_grad_norm": 1.0,
    "rank": 8, "alpha": 16, "eval_batch_size": 32, "train_examples": 0,
}


def build_model(folder: Path) -> str:
    """The random t5-small-shaped model + MiniLM's tokenizer as one Hugging Face folder."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, T5Config
    from tuneforge import assets
    from tuneforge.models import load_tokenizer

    tok = load_tokenizer(assets.minilm_dir())
    sep = tok.convert_tokens_to_ids("[SEP]")
    config = T5Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=sep,
                      decoder_start_token_id=tok.pad_token_id, **T5_SMALL)
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def write_splits(workdir: Path, model: str, test_examples: int, train_examples: int) -> dict[str, Any]:
    records = split_records({"model": {"name": model, "task": "seq2seq"},
                             "data": {"dataset": "chatterbot", "split": DEFAULTS["split"], "seed": DEFAULTS["data_seed"]}})
    train, test = records["train"], records["test"]
    train, test = train[:train_examples] if train_examples else train, test[:test_examples] if test_examples else test
    paths = {"train": workdir / "train.jsonl", "test": workdir / "test.jsonl"}
    for name, rows in (("train", train), ("test", test)):
        paths[name].write_text("".join(json.dumps({"source": r["instruction"], "target": r["output"]}) + "\n"
                                       for r in rows), encoding="utf-8")
    return {"model": model, "train_file": str(paths["train"]), "test_file": str(paths["test"]),
            "n_train": len(train), "n_test": len(test)}


def tuneforge_config(spec: dict[str, Any]) -> dict[str, Any]:
    method = ({"name": "lora", "rank": spec["rank"], "alpha": spec["alpha"], "dropout": 0.0,
               "target_modules": ["all-linear"]} if spec["method"] == "lora" else {"name": "full"})
    return {"model": {"name": spec["model"], "task": "seq2seq", "max_length": spec["max_length"]},
            "data": {"train_file": spec["train_file"], "test_file": spec["test_file"], "split": [1.0, 0.0, 0.0],
                     "seed": spec["data_seed"]},
            "method": method, "train": tuneforge_train(spec),
            "eval": {"batch_size": spec["eval_batch_size"], "before": False, "generate_samples": 0},
            "forgetting": {"reference": "none", "probes": []}, "output_dir": "unused"}


def flops_per_token(spec: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Training FLOPs per real (encoder) token, ``flops.py``'s convention for both stacks: encoder matmuls at
    input tokens, decoder matmuls at output tokens except cross-attention's keys and values (input tokens), the LM
    head at output tokens; attention products n_in^2 (encoder), n_out^2 (decoder), n_out x n_in (cross)."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM
    from tuneforge.methods.layers import LINEAR, linear_features

    prepared, _tok, _task, _cfg = prepared_data(tuneforge_config({**spec, "method": "full", "lr": 0.0}), spec["model"])
    src = [len(e["input_ids"]) for e in prepared.train]
    tgt = [len(e["labels"]) for e in prepared.train]
    n_in, n_out = sum(src), sum(tgt)
    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(spec["model"]))
    weights = {"blocks": 0.0, "head": 0.0}
    per_rank = 0.0
    for name, m in model.named_modules():
        if not isinstance(m, LINEAR):
            continue
        fan_in, fan_out = linear_features(m)
        tokens = n_in if name.startswith("encoder.") or name.endswith(("EncDecAttention.k", "EncDecAttention.v")) \
            else n_out
        weights["head" if name == "lm_head" else "blocks"] += 2.0 * fan_in * fan_out * tokens
        per_rank += 0.0 if name == "lm_head" else 2.0 * (fan_in + fan_out) * tokens
    c = model.config
    width = c.num_heads * c.d_kv
    squares = sum(a * a for a in src) + sum(b * b for b in tgt) + sum(a * b for a, b in zip(src, tgt))
    attention = 4.0 * width * c.num_layers * squares
    out = {}
    for method in methods:
        fwd = {**weights, "attention": attention, "adapters": spec["rank"] * per_rank if method == "lora" else 0.0}
        train = ({k: 3.0 * v for k, v in fwd.items()} if method == "full" else
                 {"blocks": 2.0 * fwd["blocks"], "head": 2.0 * fwd["head"], "attention": 3.0 * fwd["attention"],
                  "adapters": 3.0 * fwd["adapters"]})
        total = sum(train.values())
        out[method] = {"per_token": total / n_in, "forward_per_token": sum(fwd.values()) / n_in,
                       "mean_length": n_in / len(src), "attention_seq": squares / n_in,
                       "head_positions_per_token": n_out / n_in, **{f"share_{k}": v / total for k, v in train.items()}}
    return {"convention": flops_per_token.__doc__.split("\n\n")[0].replace("\n    ", " "), **out,
            "mean_output_length": n_out / len(tgt)}


def run_tuneforge_side(spec: dict[str, Any]) -> dict[str, Any]:
    res, m = run_tuneforge(tuneforge_config(spec), spec["threads"])
    return {**res, "test_perplexity": m["test_after"]["perplexity"], "test_loss": m["test_after"]["loss"]}


def run_trainer(spec: dict[str, Any], grouped: bool) -> dict[str, Any]:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq
    from tuneforge.tasks import Runtime

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    device = worker_device(spec)
    prepared, tokenizer, task, cfg = prepared_data(tuneforge_config(spec), spec["model"])
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in prepared.train]  # the model shifts labels
    torch.manual_seed(spec["seed"])
    model = AutoModelForSeq2SeqLM.from_pretrained(spec["model"], dtype=torch.float32)
    if spec["method"] == "lora":
        model = get_peft_model(model, LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="SEQ_2_SEQ_LM"))
    model.to(device)
    args, steps = trainer_arguments(spec, len(rows), grouped)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, padding=True, label_pad_token_id=-100)
    _, res = train_with_trainer(spec, model, args, steps, ListDataset(rows), tokenizer, collator)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    rt = Runtime(device=device, bf16=spec["precision"] == "bf16", pad_id=tokenizer.pad_token_id)
    test = task.evaluate(model, prepared.test, rt, cfg, prepared.meta)
    return {**res, "test_perplexity": test["perplexity"], "test_loss": test["loss"]}


def markdown(rows: list[dict[str, Any]], s: dict[str, Any], env: dict[str, Any], flops: dict[str, Any],
             rates: dict[str, Any], probes: int) -> str:
    table = comparison_table(rows, LABELS, "test_perplexity", "test perplexity", ".2f", lower_is_better=True,
                             settings=s, rates=rates, best=BEST_TRAINER, mfu_targets={})
    text = [
        "# Seq2seq benchmark: tuneforge vs Hugging Face Trainer + PEFT", "",
        f"A randomly initialised T5 with t5-small's shapes ({T5_SMALL}; MiniLM's WordPiece vocabulary) on ChatterBot "
        f"Q→A pairs: {s['n_train']:,} train / {s['n_test']:,} test pairs (tuneforge's seeded split {s['split']}, seed "
        f"{s['data_seed']}), max_length {s['max_length']} per side, batch {s['batch_size']}, {s['epochs']:g} "
        f"epoch(s), AdamW (wd {s['weight_decay']}), linear schedule, warmup {s['warmup_ratio']} of steps, grad clip "
        f"{s['max_grad_norm']}, training seed {s['seed']} + repeat index, precision {s['precision']} on both sides "
        f"on {s['device']}, {s['threads']} torch threads; lr LoRA {s['lr_lora']:g}, full {s['lr_full']:g}; LoRA "
        f"r={s['rank']}, alpha={s['alpha']}, dropout 0, all linear layers except the LM head. Medians of "
        f"{s['repeats']} interleaved repeats, each run in a fresh process. Random weights: speed and memory are "
        "the measure; test perplexity checks that both sides learned alike. tuneforge draws random batches (its "
        "seq2seq default); the best-configured Trainer row groups batches by length.", "",
        *table, "",
        "(The speed and memory targets above are #17's for classification and SFT, applied here for reference.)", "",
        *flops_text(flops, rates, s["precision"], probes), "",
        f"For the encoder-decoder: {flops['convention']}; per real token = per input token.", "",
        f"Real tokens = input (encoder) tokens of the training batches seen, the same count on both sides (mean "
        f"output length {flops['mean_output_length']:.1f} tokens); train s = training loop only; test perplexity "
        "computed for both sides by tuneforge's seq2seq evaluation; peak MiB = peak RSS of the run's process.", "",
        machine_line(env),
    ]
    return "\n".join(text) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = comparison_parser(__doc__, DEFAULTS, QUICK_TRAIN, "use the first N pairs of the train split (default 0: all)",
                          RESULTS / "seq2seq.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.worker:
        dispatch_worker(a.worker, run_tuneforge_side, run_trainer)
        return
    t0 = time.perf_counter()
    settings, methods = comparison_settings(a, DEFAULTS, QUICK_TRAIN, QUICK_TEST)
    out = results_file(a)
    with tempfile.TemporaryDirectory(prefix="bench-s2s-") as tmp:
        model = build_model(Path(tmp) / "t5-small-random")
        data = write_splits(Path(tmp), model, settings["test_examples"], settings["train_examples"])
        settings.update(n_train=data.pop("n_train"), n_test=data.pop("n_test"))
        flops = flops_per_token({**settings, **data}, methods)
        runs, probes = run_interleaved(__file__, settings, methods, FRAMEWORKS, data, out, "test_perplexity")
    rates = pooled_rates(probes)
    rows = summarise(runs, methods, FRAMEWORKS, "test_perplexity", {m: flops[m]["per_token"] for m in methods},
                     rates, settings["precision"])
    env = {**environment(), "wall_seconds": time.perf_counter() - t0,
           "command": " ".join(["python", "benchmarks/bench_seq2seq.py", *(argv if argv is not None else sys.argv[1:])])}
    write_results(out, markdown(rows, settings, env, flops, rates, len(probes)),
                  {"settings": settings, "environment": env, "flops": flops, "matmul_rates": rates,
                   "matmul_probes": probes, "summary": rows, "runs": runs})


if __name__ == "__main__":
    main()
