"""Does a fresh task head train better at its own learning rate? Each method at its default rate, the head
either at that rate ("same") or at max(rate, 3e-3) ("own"), on the bench_defaults settings (500 examples),
paired runs over several training seeds, two runs at a time. Methods whose default rate is already ≥ 3e-3
(adapter, IA3, prompt, prefix) are the same in both arms and are skipped.

    python benchmarks/head_lr_probe.py [--tasks topics,wnut16,rt] [--methods full,freeze,lora,bitfit,p-tuning]
        [--seeds 1,2,3] [--output benchmarks/results/head-lr-probe.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import bench_defaults as b  # noqa: E402

from tuneforge.config import HEAD_LR  # noqa: E402  (the default floor this probe measured)


def jobs(tasks: list[str], methods: list[str], seeds: list[int], runs: str) -> list[tuple[str, dict, str]]:
    from tuneforge.methods import registry

    out = []
    for task in tasks:
        for seed in seeds:
            for method in methods:
                lr = registry.train_defaults(method, b.TASKS[task][1])["lr"]
                if lr >= HEAD_LR:
                    continue
                for arm, head in (("same", lr), ("own", HEAD_LR)):
                    cfg = b.settings(task, 500, method, lr, 250, seed)
                    cfg["train"]["head_lr"] = head
                    name = f"{task}|500|{method}|{lr:.3g}|{seed}|{arm}"
                    out.append((name, cfg, f"{runs}/{name.replace('|', '_')}"))
    return out


def summary(results: dict) -> str:
    """Per task x method: mean validation / test of each arm over the seeds both arms finished."""
    lines = ["| task | method | seeds | validation same → own | test same → own | test change (points) |",
             "|---|---|---|---|---|---|"]
    cells = sorted({tuple(k.split("|")[:3]) for k in results})
    for task, size, method in cells:
        pairs = []
        for k, v in results.items():
            t, s, m, lr, seed, arm = k.split("|")
            other = results.get("|".join([t, s, m, lr, seed, "own"]))
            if (t, s, m) == (task, size, method) and arm == "same" and other and v.get("test") is not None:
                pairs.append((v, other))
        if not pairs:
            continue
        mean = lambda arm, f: statistics.mean(p[arm][f] for p in pairs)  # noqa: E731
        changes = ", ".join(f"{(own['test'] - same['test']) * 100:+.1f}" for same, own in pairs)
        lines.append(f"| {task} | {method} | {len(pairs)} | {mean(0, 'validation'):.4f} → {mean(1, 'validation'):.4f} "
                     f"| {mean(0, 'test'):.4f} → {mean(1, 'test'):.4f} | {changes} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="topics,wnut16,rt")
    p.add_argument("--methods", default="full,freeze,lora,bitfit,p-tuning")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--runs", default="/tmp/tuneforge-head-lr")
    p.add_argument("--output", default=str(HERE / "results" / "head-lr-probe.json"))
    args = p.parse_args()
    if "tweets" in args.tasks.split(","):
        b.write_tweets()
    out = Path(args.output)
    results = json.loads(out.read_text()) if out.is_file() else {}
    todo = [j for j in jobs(args.tasks.split(","), args.methods.split(","), [int(s) for s in args.seeds.split(",")],
                            args.runs) if j[0] not in results]
    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        for name, result in pool.imap(b.run_one, todo):
            results[name] = result
            out.write_text(json.dumps(results, indent=1))
            print(name, {k: result.get(k) for k in ("validation", "test", "steps")}, flush=True)
    print(summary(results))
    out.with_suffix(".md").write_text(f"# Head learning rate probe\n\nCommand: `python benchmarks/head_lr_probe.py "
                                      f"{' '.join(sys.argv[1:])}`\n\n{summary(results)}\n")


if __name__ == "__main__":
    main()
