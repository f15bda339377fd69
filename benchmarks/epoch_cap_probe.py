"""Is the automatic length's epoch cap what holds small data sets back? Each method at its default rate on
500 training examples with ``train.auto_max_epochs`` raised from 10 (the default until 2026-12-02, when the
automatic length also stopped after 3 evaluations without improvement; the recorded probe ran under that rule,
``--early-stopping 3`` repeats it) against the bench_defaults default rows
(the same settings at the cap of 10, from their JSON files). One seed, two runs at a time.

    python benchmarks/epoch_cap_probe.py [--cases topics:lora,topics:adapter,...] [--cap 30]
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

BASELINES = {"topics": HERE / "results" / "defaults-topics-all.json", "tweets": HERE / "results" / "defaults-tweets.json"}


def main() -> None:
    from tuneforge.methods import registry

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="topics:lora,topics:adapter,topics:ia3,tweets:lora,tweets:adapter")
    p.add_argument("--cap", type=int, default=30)
    p.add_argument("--runs", default="/tmp/tuneforge-epoch-cap")
    p.add_argument("--output", default=str(HERE / "results" / "epoch-cap-probe.json"))
    p.add_argument("--early-stopping", type=int, default=None, help="train.early_stopping of every run")
    args = p.parse_args()
    cases = [c.split(":") for c in args.cases.split(",")]
    if any(c[0] == "tweets" for c in cases):
        b.write_tweets()
    jobs = []
    for task, method, *cap in cases:  # task:method, or task:method:cap for a cap of its own
        cap = int(cap[0]) if cap else args.cap
        lr = registry.train_defaults(method, b.TASKS[task][1])["lr"]
        cfg = b.settings(task, 500, method, lr, 250, 42, cap)
        cfg["train"]["early_stopping"] = args.early_stopping
        jobs.append((b.key(task, 500, method, lr, 250, cap), cfg, f"{args.runs}/{task}_{method}_{cap}"))
    results = {}
    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        for name, result in pool.imap(b.run_one, jobs):
            known = BASELINES.get(name.split("|")[0])
            task, _, method, lr = name.split("|")[:4]
            base = b.read_results(known).get(b.key(task, 500, method, float(lr), 250, b.LEGACY_CAP, False), {}) \
                if known else {}
            results[name] = {**result, "cap10": {k: base.get(k) for k in ("validation", "test", "steps")}}
            print(name, {k: result.get(k) for k in ("validation", "test", "steps")}, "cap 10:", results[name]["cap10"],
                  flush=True)
    Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
