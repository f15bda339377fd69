"""Does BERT's pre-trained pooler hold back the methods that leave it frozen? A BERT-style sequence
classifier reads ``classifier(pooler(h[CLS]))``; all-MiniLM-L6-v2's pooler maps every input to nearly the same
vector (its output varies ~0.01 across inputs against ~0.05 in size), so a method that trains neither it nor
much below it (prompt tuning, P-tuning, adapters; LoRA adapts ``pooler.dense``, full fine-tuning trains it)
leaves the fresh head little to separate. Each case runs twice at the method's default rate and the automatic
length (the bench_defaults settings, 500 examples): ``train.pooler_with_head`` false ("frozen": the pooler left
to the method) and true ("trained": in full beside the head, at the head's rate). A run already in
``results/defaults-cap30.json`` with the same settings is reused. One seed, two runs at a time.

The recorded runs (2026-12-02) were made by this script's first version, which put the pooler in the head list
by hand before ``train.pooler_with_head`` existed (the same training; the option reproduces P-tuning on topics to
the last digit); their names end in ``|frozen`` / ``|trained`` and are read as ``|pool0`` / ``|pool1``.

    python benchmarks/pooler_probe.py [--cases topics:p-tuning,tweets:adapter,...]
        [--output benchmarks/results/pooler-probe.json]
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

ARMS = {False: "frozen", True: "trained"}


def read(path: Path) -> dict:
    """This probe's results; names of the first version (``...|e30|frozen``) in bench_defaults' key form."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    old = {"frozen": "pool0", "trained": "pool1"}
    return {(k.rsplit("|", 1)[0] + "|" + old[k.rsplit("|", 1)[1]] if k.rsplit("|", 1)[1] in old else k): v
            for k, v in results.items()}


def main() -> None:
    from tuneforge.methods import registry

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="topics:p-tuning,tweets:adapter,topics:prompt,rt:prompt,rt:adapter")
    p.add_argument("--runs", default="/tmp/tuneforge-pooler-probe")
    p.add_argument("--output", default=str(HERE / "results" / "pooler-probe.json"))
    args = p.parse_args()
    cases = [c.split(":") for c in args.cases.split(",")]
    if any(task == "tweets" for task, _ in cases):
        b.write_tweets()
    out = Path(args.output)
    results = read(out)
    known = b.read_results(HERE / "results" / "defaults-cap30.json")
    names, todo = {}, []
    for task, method in cases:
        lr = registry.train_defaults(method, b.TASKS[task][1])["lr"]
        for pooler in ARMS:
            name = names[task, method, pooler] = b.key(task, 500, method, lr, 250, pooler=pooler)
            if name not in results and name in known:
                results[name] = {**known[name], "from": "defaults-cap30.json"}
            if name not in results:
                todo.append((name, b.settings(task, 500, method, lr, 250, 42, pooler=pooler),
                             f"{args.runs}/{task}_{method}_{ARMS[pooler]}"))
    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        for name, result in pool.imap_unordered(b.run_one, todo):
            results[name] = result
            out.write_text(json.dumps(results, indent=1))
            print(name, {k: result.get(k) for k in ("validation", "test", "steps")}, flush=True)
    out.write_text(json.dumps(results, indent=1))
    for task, method in cases:
        arms = [(ARMS[pooler], results.get(names[task, method, pooler], {})) for pooler in ARMS]
        print(f"{task} {method} (validation / test): " + "  ".join(
            f"{arm} {r.get('validation', float('nan')):.3f} / {r.get('test', float('nan')):.3f}" for arm, r in arms))


if __name__ == "__main__":
    main()
