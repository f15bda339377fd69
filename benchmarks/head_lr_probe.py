"""Does a fresh task head train better at its own learning rate? Each method at its default rate, with the head
at ``train.head_lr`` 3e-3, on the bench_defaults settings (500 examples; one seed), two runs at a time. Compare
with the default rows of benchmarks/results/defaults-*.json (the head at the method's rate).

    python benchmarks/head_lr_probe.py [--runs /tmp/tuneforge-head-lr]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import bench_defaults as b  # noqa: E402

CASES = [("topics", "lora"), ("topics", "full"), ("topics", "adapter"), ("rt", "lora"), ("rt", "full"),
         ("wnut16", "full")]


def jobs(runs: str, head_lr: float) -> list[tuple[str, dict, str]]:
    from tuneforge.methods import registry

    out = []
    for task, method in CASES:
        lr = registry.train_defaults(method, b.TASKS[task][1])["lr"]
        cfg = b.settings(task, 500, method, lr, 250, 42)
        cfg["train"]["head_lr"] = head_lr
        out.append((f"{b.key(task, 500, method, lr, 250)}|head{head_lr:g}", cfg, f"{runs}/{task}_{method}"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="/tmp/tuneforge-head-lr")
    p.add_argument("--head-lr", type=float, default=3e-3)
    args = p.parse_args()
    results = {}
    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        for name, summary in pool.imap_unordered(b.run_one, jobs(args.runs, args.head_lr)):
            results[name] = summary
            print(name, {k: summary.get(k) for k in ("validation", "test", "steps")}, flush=True)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    (Path(args.runs) / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
