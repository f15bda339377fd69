"""Scale-out: the demo's LoRA run (configs/demo.yaml) in one process vs several torchrun processes at the same
global batch, on CPU cores or on GPUs.

    .venv/bin/python benchmarks/bench_distributed.py --quick        # smoke test: 400 examples, 1 epoch, 1 repeat
    .venv/bin/python benchmarks/bench_distributed.py                # the demo as configured, 3 interleaved repeats
    .venv/bin/python benchmarks/bench_distributed.py --gpus 8       # 1 GPU vs 8 GPUs (one process per GPU)

CPU (default): 1 process x 1 thread (the per-core baseline), 1 process x 2 threads (batch 32) and 2 processes
x 1 thread (``torchrun --standalone --nproc-per-node 2``, batch 16 each: the same global batch of 32, the same
steps, the same data order). GPUs (``--gpus N``): 1 process on 1 GPU (batch 32) vs N processes, one per GPU
(batch 32 / N each). Every run is ``python -m tuneforge train -c configs/demo.yaml`` (the command users run),
in a fresh process group, with the same seed per repeat on every configuration; its metrics.json gives real
tokens/s (all ranks' real tokens over the training loop's time), the final test accuracy and training loss.
Scaling efficiency = tokens/s ÷ (workers x the 1-worker tokens/s), where workers are CPU threads in all or GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import median, write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CONFIG = ROOT / "configs" / "demo.yaml"
GLOBAL_BATCH = 32  # configs/demo.yaml's batch_size


def layouts(gpus: int, baseline: bool) -> list[dict[str, Any]]:
    """The configurations: processes, threads per process, per-process batch, device, workers (threads or GPUs)."""
    if gpus:
        if GLOBAL_BATCH % gpus:
            raise SystemExit(f"--gpus {gpus}: the global batch of {GLOBAL_BATCH} must split evenly over the GPUs")
        # torchrun even with one GPU: the NCCL/DDP path is exercised and its overhead shows against plain python
        return [{"name": "1 process, 1 GPU", "processes": 1, "threads": 1, "batch": GLOBAL_BATCH, "device": "cuda",
                 "workers": 1, "torchrun": False},
                {"name": f"torchrun, {gpus} process{'es' if gpus > 1 else ''}, 1 GPU each", "processes": gpus,
                 "threads": 1, "batch": GLOBAL_BATCH // gpus, "device": "cuda", "workers": gpus, "torchrun": True}]
    out = [{"name": "1 process x 1 thread", "processes": 1, "threads": 1, "batch": GLOBAL_BATCH, "device": "cpu",
            "workers": 1, "torchrun": False}] if baseline else []
    return out + [
        {"name": "1 process x 2 threads", "processes": 1, "threads": 2, "batch": GLOBAL_BATCH, "device": "cpu",
         "workers": 2, "torchrun": False},
        {"name": "2 processes x 1 thread", "processes": 2, "threads": 1, "batch": GLOBAL_BATCH // 2, "device": "cpu",
         "workers": 2, "torchrun": True},
    ]


def command(layout: dict[str, Any], run_dir: Path, seed: int, a: argparse.Namespace) -> list[str]:
    """The tuneforge command line of one run (torchrun for more than one process)."""
    overrides = [f"train.batch_size={layout['batch']}", f"train.seed={seed}", f"train.epochs={a.epochs:g}",
                 "eval.before=false", f"train.precision={a.precision}"]
    if layout["device"] == "cpu":
        overrides += [f"train.num_threads={layout['threads']}", "train.device=cpu"]
    elif not layout["torchrun"]:
        overrides.append("train.device=cuda")
    if a.max_examples:
        overrides.append(f"data.max_examples={a.max_examples}")
    launcher = [sys.executable, "-m", "tuneforge"]
    if layout["torchrun"]:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={layout['processes']}", "-m", "tuneforge"]
    return [*launcher, "train", "-c", str(CONFIG), "-o", str(run_dir), "--overwrite", "-q", *overrides]


def run_one(layout: dict[str, Any], seed: int, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One run in fresh processes -> its metrics.json essentials, wall time and load."""
    run_dir = tmp / f"{layout['processes']}x{layout['threads']}-{layout['device']}-{layout['torchrun']}-{seed}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if layout["device"] == "cpu":  # GPUs: torch's own thread choice (torchrun: 1 per process)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(layout["threads"])
    if layout["device"] == "cuda" and layout["processes"] == 1:  # the first visible GPU only
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    cmd = command(layout, run_dir, seed, a)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=a.timeout)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"run failed: {layout['name']} (exit {proc.returncode}): {' '.join(cmd)}")
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"layout": layout["name"], "seed": seed, "command": " ".join(cmd[1:]), "wall_seconds": wall,
            "tokens_per_second": m["tokens_per_second"], "train_seconds": m["train_seconds"],
            "real_tokens": m["real_tokens"], "padded_tokens": m["padded_tokens"], "steps": m["steps"],
            "test_accuracy": m["test_after"]["accuracy"], "test_macro_f1": m["test_after"].get("macro_f1"),
            "last_train_loss": m["training_loss"]["last"], "processes": m["processes"],
            "precision": m["precision"], "device": m["device"], "peak_memory_mb_rank0": m["peak_memory_mb"],
            "examples": m["examples"], "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]}


def summarise(runs: list[dict[str, Any]], plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for layout in plan:
        rs = [r for r in runs if r["layout"] == layout["name"]]
        row = {**layout, "repeats": len(rs),
               **{k: median([r[k] for r in rs]) for k in ("tokens_per_second", "train_seconds", "wall_seconds",
                                                          "test_accuracy", "last_train_loss", "peak_memory_mb_rank0")},
               "tokens_per_second_range": [min(r["tokens_per_second"] for r in rs),
                                           max(r["tokens_per_second"] for r in rs)],
               "steps": rs[0]["steps"], "real_tokens": rs[0]["real_tokens"], "precision": rs[0]["precision"],
               "max_load": max(max(r["load_1min_before"], r["load_1min_after"]) for r in rs)}
        rows.append(row)
    one = next((r for r in rows if r["workers"] == 1 and not r["torchrun"]), None)
    ref = reference(rows)
    for row in rows:
        row["efficiency"] = row["tokens_per_second"] / (row["workers"] * one["tokens_per_second"]) if one else None
        row["speedup_vs_reference"] = row["tokens_per_second"] / ref["tokens_per_second"]
    return rows


def reference(layouts: list[dict[str, Any]]) -> dict[str, Any]:
    """The one-process layout the torchrun rows are compared with: 1 process x 2 threads on CPU, 1 GPU."""
    return [x for x in layouts if not x["torchrun"]][-1]


def equal_metrics(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    """Do the torchrun layouts end where the one-process layout does? Median test accuracy within noise:
    2 standard errors of the difference of two accuracies on the same n test sentences, 2 x sqrt(2 p (1 - p) / n).
    Not bit-equal: each process draws its own dropout masks (MiniLM's hidden dropout 0.1) for its half of the
    batch, and gradients are summed in another order (tests/test_distributed.py checks equality to 1e-5
    without dropout)."""
    ref = reference(rows)
    n = runs[0]["examples"]["test"]
    p = ref["test_accuracy"]
    tol = 2 * (2 * p * (1 - p) / max(1, n)) ** 0.5
    lines = []
    for row in rows:
        if not row["torchrun"]:
            continue
        diff = abs(row["test_accuracy"] - ref["test_accuracy"])
        lines.append(
            f"- equal final metrics, {row['name']} vs {ref['name']}: median test accuracy {row['test_accuracy']:.4f} vs "
            f"{ref['test_accuracy']:.4f} (difference {diff:.4f}; noise tolerance {tol:.4f} = 2 standard errors of a "
            f"difference on {n} test sentences), final training loss {row['last_train_loss']:.4f} vs "
            f"{ref['last_train_loss']:.4f} → **{'yes' if diff <= tol else 'no'}**. Runs are not bit-identical: each "
            "process draws its own dropout masks and gradients are summed in another order.")
    return lines


def markdown(rows: list[dict[str, Any]], runs: list[dict[str, Any]], plan: list[dict[str, Any]],
             a: argparse.Namespace, env: dict[str, Any]) -> str:
    ex = runs[0]["examples"]
    gpu = bool(a.gpus)
    gpu_name = f", GPU {env['gpu']} ×{env['gpus']}" if env.get("gpu") else ""
    lines = [
        "# Scale-out: the demo's LoRA run, one process vs torchrun", "",
        f"`configs/demo.yaml` (MiniLM LoRA r=8 on Rotten Tomatoes: {ex['train']:,} train / {ex['test']:,} test "
        f"sentences{f', data.max_examples={a.max_examples}' if a.max_examples else ''}), {a.epochs:g} epoch(s), global "
        f"batch {GLOBAL_BATCH} in every layout (per-process batch = {GLOBAL_BATCH} ÷ processes: the same steps and "
        f"the same examples per step), precision {rows[0]['precision']} (train.precision={a.precision}), "
        f"{'one process per GPU (NCCL)' if gpu else 'gloo on CPU'}; medians of {a.repeats} interleaved repeat(s), "
        "repeat i with seed 42 + i in every layout. Each run is `python -m tuneforge train` (one process) or "
        "`python -m torch.distributed.run --standalone --nproc-per-node P -m tuneforge train` (P processes).", "",
        f"| layout | processes × threads | per-process batch | real tokens/s (median, min–max) | train s | wall s "
        f"| scaling efficiency | ÷ {reference(rows)['name']} | test accuracy | final train loss | steps | rank-0 peak MiB | max load |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        lo, hi = r["tokens_per_second_range"]
        eff = f"{100 * r['efficiency']:.0f} %" if r["efficiency"] is not None else "—"
        lines.append(
            f"| {r['name']} | {r['processes']} × {'GPU' if gpu else r['threads']} | {r['batch']} "
            f"| {r['tokens_per_second']:,.0f} ({lo:,.0f}–{hi:,.0f}) | {r['train_seconds']:.1f} | {r['wall_seconds']:.1f} "
            f"| {eff} | {r['speedup_vs_reference']:.2f}× | {r['test_accuracy']:.4f} | {r['last_train_loss']:.4f} "
            f"| {r['steps']} | {r['peak_memory_mb_rank0']:,.0f} | {r['max_load']:.1f} |")
    lines += ["", *equal_metrics(rows, runs), "",
              "Real tokens/s = all ranks' non-padding training tokens ÷ the training loop's time (tuneforge's "
              "metrics.json); wall s includes process start, torch.distributed set-up, data preparation, "
              "evaluation and saving. Scaling efficiency = tokens/s ÷ (workers × the one-worker row's tokens/s); "
              + ("workers = GPUs." if gpu else "workers = CPU threads in all (1 × 2 and 2 × 1 both use the "
                 "machine's 2 cores)."), "",
              f"Machine: {env['cpu']}, {env['cores']} cores{gpu_name}; torch {env['torch']}. "
              f"Wall time {env['wall_seconds'] / 60:.1f} min. Command: `{env['command']}`."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: data.max_examples=400, 1 epoch, 1 repeat")
    p.add_argument("--repeats", type=int, help="interleaved repeats per layout (default 3; --quick 1)")
    p.add_argument("--epochs", type=float, help="train.epochs (default 2, the demo's; --quick 1)")
    p.add_argument("--max-examples", type=int, help="data.max_examples (default: all, the demo's; --quick 400)")
    p.add_argument("--gpus", type=int, default=0, help="compare 1 GPU with N GPUs (one process each) instead of CPU")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="train.precision (default auto)")
    p.add_argument("--no-baseline", action="store_true", help="CPU: skip the 1 process x 1 thread row")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run before it is killed (default 3600)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--output", help="markdown output, JSON beside it (default results/distributed[-gpu][-quick].md)")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.epochs = a.epochs or (1.0 if a.quick else 2.0)
    a.max_examples = a.max_examples if a.max_examples is not None else (400 if a.quick else None)
    if a.gpus < 0:
        p.error("--gpus must be >= 0")
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    t0 = time.perf_counter()
    plan = layouts(a.gpus, not a.no_baseline)
    name = "distributed" + ("-gpu" if a.gpus else "") + ("-quick" if a.quick else "")
    out = Path(a.output) if a.output else RESULTS / f"{name}.md"
    if a.dry_run:
        for layout in plan:
            threads = f"OMP_NUM_THREADS={layout['threads']} " if layout["device"] == "cpu" else ""
            print(f"# {layout['name']}\n{threads}" + " ".join(command(layout, Path("<tmp>/run"), 42, a)))
        return
    if a.gpus:
        import torch
        if torch.cuda.device_count() < a.gpus:
            raise SystemExit(f"--gpus {a.gpus}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    total = a.repeats * len(plan)
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        for rep in range(a.repeats):
            for layout in plan:  # interleaved: machine drift spreads over every layout
                r = run_one(layout, 42 + rep, a, Path(tmp))
                runs.append(r)
                print(f"[{len(runs)}/{total}] {layout['name']:26s} {r['tokens_per_second']:8.0f} tok/s "
                      f"{r['train_seconds']:7.1f} s  accuracy {r['test_accuracy']:.4f}  loss {r['last_train_loss']:.4f}"
                      f"  ({r['wall_seconds']:.0f} s wall, load {r['load_1min_after']:.1f})", file=sys.stderr, flush=True)
                write_json(out.with_suffix(".json"), {"complete": False, "runs": runs})
    rows = summarise(runs, plan)
    import torch
    from common import environment
    env = {**environment(), "wall_seconds": time.perf_counter() - t0,
           "command": " ".join(["python", "benchmarks/bench_distributed.py", *(argv if argv is not None else sys.argv[1:])])}
    text = markdown(rows, runs, plan, a, env)
    print(text)
    out.write_text(text)
    write_json(out.with_suffix(".json"), {"complete": True, "environment": env, "settings": vars(a),
                                          "summary": rows, "runs": runs, "torch": torch.__version__})
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
