"""Is LoRA's default shape (rank 8, alpha 16, every linear layer) the one to ship? Each shape runs at LoRA's
default learning rate for the task and the automatic length (the bench_defaults settings: 500 training examples,
the same validation and test sets, one training seed per invocation, two single-threaded runs at a time); the
default shape's run is read from ``--baseline`` (bench_defaults' JSON, same seed) when it is there with the same
settings. Per task it prints validation / test for each shape, the shape picked on validation and the default's
gap to it (test points); over the tasks, each shape's mean test accuracy.

Shapes: ``r4`` (rank 4, alpha 8), ``r16`` (rank 16, alpha 32) keep the default's scale alpha/r = 2; ``a32``
(rank 8, alpha 32) doubles the scale; ``qv`` (rank 8, alpha 16) adapts only the attention's query and value
projections (PEFT's default targets for BERT) instead of every linear layer.

    python benchmarks/lora_shape_probe.py [--tasks rt,tweets,topics] [--shapes r4,r16,a32,qv]
        [--baseline benchmarks/results/defaults-cap30.json] [--output benchmarks/results/lora-shape-probe.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import sys
from pathlib import Path
from statistics import mean

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import bench_defaults as b  # noqa: E402

DEFAULT = "r8"  # the shipped shape: rank 8, alpha 16, all-linear
SHAPES = {"r8": {}, "r4": {"rank": 4, "alpha": 8.0}, "r16": {"rank": 16, "alpha": 32.0}, "a32": {"alpha": 32.0},
          "qv": {"target_modules": ["query", "value"]}}


def main() -> None:
    from tuneforge.methods import registry

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="rt,tweets,topics")
    p.add_argument("--shapes", default="r4,r16,a32,qv")
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--seed", type=int, default=42, help="train.seed of every run (one seed per output file)")
    p.add_argument("--baseline", default=str(HERE / "results" / "defaults-cap30.json"),
                   help="bench_defaults JSON run with the same --seed")
    p.add_argument("--runs", default="/tmp/tuneforge-lora-shape")
    p.add_argument("--output", default=str(HERE / "results" / "lora-shape-probe.json"))
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the pool's workers end with this process
    tasks, shapes = args.tasks.split(","), [DEFAULT] + [s for s in args.shapes.split(",") if s != DEFAULT]
    if "tweets" in tasks:
        b.write_tweets()
    out = Path(args.output)
    results = json.loads(out.read_text()) if out.is_file() else {}
    known = b.read_results(Path(args.baseline))
    names, todo = {}, []
    for task in tasks:
        lr = registry.train_defaults("lora", b.TASKS[task][1])["lr"]
        base = b.key(task, args.size, "lora", lr, 250)
        for shape in shapes:
            name = names[task, shape] = base if shape == DEFAULT else f"{base}|{shape}"
            if name not in results and name in known:
                results[name] = {**known[name], "from": Path(args.baseline).name}
            if name not in results:
                cfg = b.settings(task, args.size, "lora", lr, 250, args.seed)
                cfg["method"].update(SHAPES[shape])
                todo.append((name, cfg, f"{args.runs}/{task}_{shape}_s{args.seed}"))
    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        for name, result in pool.imap_unordered(b.run_one, todo):
            results[name] = result
            out.write_text(json.dumps(results, indent=1))
            print(name, {k: result.get(k) for k in ("validation", "test", "steps", "error")}, flush=True)
    out.write_text(json.dumps(results, indent=1))
    lines = ["| task | " + " | ".join(shapes) + " | picked on validation | gap (test points; positive: the default is worse) |",
             "|---|" + "---|" * (len(shapes) + 2)]
    for task in tasks:
        got = {s: results.get(names[task, s], {}) for s in shapes}
        done = {s: r for s, r in got.items() if r.get("validation") is not None}
        if DEFAULT not in done:
            lines.append(f"| {task} | " + " | ".join("-" for _ in shapes) + " | | |")
            continue
        pick = max(done, key=lambda s: (done[s]["validation"], s == DEFAULT))  # a tie keeps the default
        cells = [f"{r['validation']:.3f} / {r['test']:.3f}" if s in done else "-" for s, r in got.items()]
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {pick} | "
                     f"{(done[pick]['test'] - done[DEFAULT]['test']) * 100:+.2f} |")
    means = [mean(results[names[t, s]]["test"] for t in tasks) if all(
        results.get(names[t, s], {}).get("test") is not None for t in tasks) else None for s in shapes]
    lines.append("| mean test | " + " | ".join(f"{m:.3f}" if m is not None else "-" for m in means) + " | | |")
    print("validation / test accuracy per LoRA shape (" + ", ".join(f"{s}: {SHAPES[s] or 'default'}" for s in shapes)
          + ")\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
