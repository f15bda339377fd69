"""Peak memory and speed of training runs that validate and checkpoint, for two tuneforge source trees side by side:
this one and another commit's (``git worktree add /tmp/old <commit>``). Each round runs one process per tree at the
same time, 1 thread each, on path_probe's workloads with ``train.eval_every`` = steps / 3 and ``train.save_every``.

    git worktree add /tmp/old a461fdc
    python benchmarks/validation_memory.py --other /tmp/old --method full --workload chat --precision bf16 --steps 60
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "benchmarks"))
from path_probe import interleaved  # noqa: E402


def run_one(root: str, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(root) / "benchmarks"))
    sys.path.insert(0, root)
    import torch

    torch.set_num_threads(1)
    import tuneforge
    from path_probe import WORKLOADS
    from tuneforge.run import train

    assert Path(tuneforge.__file__).resolve().is_relative_to(Path(root).resolve()), tuneforge.__file__
    w = WORKLOADS[args.workload]
    cfg = {**w, "method": {"name": args.method},
           "train": {**w["train"], "max_steps": args.steps, "precision": args.precision, "num_threads": 1,
                     "eval_every": max(args.steps // 3, 1), "save_every": args.save_every},
           "eval": {**w["eval"], "before": False}, "forgetting": {"probes": ["none"]},
           "output_dir": str(Path(tempfile.mkdtemp()) / "run")}
    m = train(cfg, progress=False).metrics
    print(json.dumps({"tokens_per_second": m["tokens_per_second"],
                      "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--other", required=True, help="another tuneforge source tree (a git worktree)")
    ap.add_argument("--method", default="full", choices=["lora", "full"])
    ap.add_argument("--workload", default="chat", choices=["chat", "classification", "ner"])
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--save-every", type=int, default=None, help="default: at each evaluation")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a worker process: the source tree it runs
    args = ap.parse_args()
    if args.one:
        return run_one(args.one, args)
    trees = {"this tree": str(HERE), "other": str(Path(args.other).resolve())}
    flags = sys.argv[1:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = interleaved({k: lambda r, root=root: ([sys.executable, __file__, *flags, "--one", root],
                                                 {**env, "PYTHONPATH": root})
                        for k, root in trees.items()}, args.rounds)
    print(f"\n| {args.workload}, {args.method}, {args.precision}, {args.steps} steps | real tokens/s (median) "
          "| peak RSS MiB (median) |\n|---|---|---|")
    for k, runs in rows.items():
        print(f"| {k} ({trees[k]}) | {statistics.median(x['tokens_per_second'] for x in runs):.1f} "
              f"| {statistics.median(x['peak_memory_mb'] for x in runs):,.0f} |")


if __name__ == "__main__":
    main()
