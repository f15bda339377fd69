"""Eager vs SDPA attention for packed (padding-free) causal-LM training rows on a CPU, float32.

Each round trains SmolLM2 LoRA on the demo-chat pairs (16 per step, 30 steps, 1 thread) twice, side by side on
two cores: once as tuneforge trains (packed rows through SDPA, ``fast.packed_attention``) and once with that
switch off (packed rows through eager attention, the earlier behaviour). Prints each run's real tokens/s, peak
RSS and test perplexity, then the medians.

    python benchmarks/packed_attention_probe.py --rounds 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_one(mode: str, out: str, steps: int) -> None:
    import contextlib

    import torch

    torch.set_num_threads(1)
    from tuneforge import fast
    from tuneforge.run import train

    if mode == "eager":
        fast.packed_attention = lambda model, device, packed, bf16: contextlib.nullcontext(0)
    cfg = {"model": {"name": "smollm2", "task": "causal_lm", "max_length": 64},
           "data": {"dataset": "chatterbot", "system_prompt": "Reply briefly.", "split": [0.8, 0.1, 0.1], "seed": 42},
           "method": {"name": "lora"},
           "train": {"lr": 2e-3, "max_steps": steps, "batch_size": 16, "precision": "fp32", "num_threads": 1},
           "eval": {"before": False, "generate_samples": 0}, "forgetting": {"probes": ["none"]}, "output_dir": out}
    m = train(cfg, progress=False).metrics
    print(json.dumps({"mode": mode, "tokens_per_second": m["tokens_per_second"], "peak_memory_mb": m["peak_memory_mb"],
                      "test_perplexity": m["test_after"]["perplexity"], "padding_free": m["padding_free"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--one", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)  # a worker process
    args = ap.parse_args()
    if args.one:
        return run_one(args.one[0], args.one[1], args.steps)
    rows: dict[str, list[dict]] = {"eager": [], "sdpa": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            procs = {mode: subprocess.Popen([sys.executable, __file__, "--steps", str(args.steps), "--one", mode,
                                             str(Path(tmp) / f"{mode}{r}")], stdout=subprocess.PIPE, text=True)
                     for mode in rows}
            for mode, p in procs.items():
                out, _ = p.communicate()
                if p.returncode:
                    sys.exit(f"{mode} run failed (exit {p.returncode})")
                rows[mode].append(json.loads(out.strip().splitlines()[-1]))
                print(f"round {r + 1} {mode}: {rows[mode][-1]}", flush=True)
    print("\n| attention on packed rows | real tokens/s (median) | peak RSS MiB (median) | test perplexity |")
    print("|---|---|---|---|")
    for mode, runs in rows.items():
        med = {k: statistics.median(x[k] for x in runs)
               for k in ("tokens_per_second", "peak_memory_mb", "test_perplexity")}
        print(f"| {mode} | {med['tokens_per_second']:.1f} | {med['peak_memory_mb']:,.0f} "
              f"| {med['test_perplexity']:.5f} |")


if __name__ == "__main__":
    main()
