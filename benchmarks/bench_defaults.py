"""Are tuneforge's defaults good without tuning? For each task x training-set size x method: the default run
(the method's default learning rate for the task, automatic training length) against a small sweep of
learning rate x training length; prints the default's test metric, the best sweep setting's (picked on
validation; a tie keeps the default) and the gap, with met / not met per target:

- LoRA, full and adapter: default within 2 accuracy/F1 points (3 % perplexity) of the best sweep setting;
- the other methods: within 5 points (the perplexity target scales the same way: 7.5 %).

The sweep is staged to fit a CPU: stage 1 tries learning rates default/3, default, default x 3 at the
automatic length; stage 2 tries the best of those with a shorter and a longer automatic length
(``train.auto_min_steps`` 100 and 600; the default is 250; a length that plans as many epochs as the
default, both at the ``train.auto_max_epochs`` cap, is the default run and is not rerun). Every run is a real tuneforge run
(``tuneforge.run.train``), single-threaded, two at a time (``--workers``); finished runs are reused from the
JSON, so an interrupted invocation continues. Validation and test sets are the same size for every training
size of a task (400 examples each, or 10 % each of a smaller data set), so a point is never one or two examples.
A run's key records its settings (task|size|method|lr|auto_min_steps|e<auto_max_epochs>|pool<0/1>: the epoch
cap and ``train.pooler_with_head``; then |head<rate> where a method's own head floor sets ``train.head_lr`` to
other than max(lr, 3e-3)); ``--factors`` and
``--lengths`` narrow the stages, and ``--merge`` adds the runs of earlier JSON files (settings of their own,
e.g. the epoch cap of the time) to the sweep a default is judged against.

    python benchmarks/bench_defaults.py                      # every task, size and method (many hours on 2 cores)
    python benchmarks/bench_defaults.py --tasks rt,wnut16 --methods lora,full,adapter --sizes 500
    python benchmarks/bench_defaults.py --quick               # a smoke test: tiny sizes, two methods
    python benchmarks/bench_defaults.py --tasks rt-smollm2 --methods lora,full --sizes 500 --lengths ""
                                                              # SmolLM2 as a decoder classifier (~35 min a run)
    python benchmarks/bench_defaults.py --tasks topics --methods lora --sizes 500 --factors 1,3 --lengths ""
        --merge benchmarks/results/defaults-topics-all.json   # (one line) two rates, no stage 2, earlier runs
    python benchmarks/bench_defaults.py --table-only --tasks rt,wnut16 --sizes 500,2000 --merge a.json,b.json \
        --output summary.md                                   # one table of earlier runs; nothing runs
"""
from __future__ import annotations

import argparse
import json
import functools
from fractions import Fraction
import multiprocessing as mp
import os
import signal
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# name -> (data set, task, max_length, metric, greater is better)
TASKS = {
    "rt": ("rotten_tomatoes", "classification", 64, "accuracy", True),
    "imdb": ("imdb", "classification", 128, "accuracy", True),
    "topics": ("chatterbot_topics", "classification", 64, "accuracy", True),
    "wnut16": ("wnut16", "token_classification", 64, "f1", True),
    "chatterbot": ("chatterbot", "causal_lm", 64, "perplexity", False),
    "tweets": (str(Path(tempfile.gettempdir()) / "tuneforge-bench-tweets.jsonl"), "classification", 64, "accuracy",
               True),  # built by write_tweets: a 3-class task no default was tuned on
    "rt-smollm2": ("rotten_tomatoes", "classification", 64, "accuracy", True),  # a decoder classifier
}
MODEL = {"classification": "minilm", "token_classification": "minilm", "causal_lm": "smollm2"}
TASK_MODEL = {"rt-smollm2": "smollm2"}  # a task whose model is not its kind's (MODEL)


def model_name(task: str) -> str:
    return TASK_MODEL.get(task, MODEL[TASKS[task][1]])


CORE = ("lora", "full", "adapter")  # target: within 2 points (3 % perplexity); the others within 5 (7.5 %)
HELD_OUT = 400  # validation and test examples each (10 % each of a smaller data set): a point is 2.5 examples
LENGTHS = "100,600"  # stage 2: train.auto_min_steps beside the default 250
LEGACY_CAP = 10  # train.auto_max_epochs of runs recorded without it in their key


def settings(task: str, size: int, method: str, lr: float, min_steps: int, seed: int, cap: int | None = None,
             pooler: bool | None = None) -> dict:
    data, kind, max_length, _, _ = TASKS[task]
    n = available(task)  # validation and test: the same size for every training size of a task
    held = min(HELD_OUT, n // 10) if size > 100 else size // 4
    size = min(size, n - 2 * held)  # a small data set trains on what is left
    total = size + 2 * held
    cfg = {"model": {"name": model_name(task), "task": kind, "max_length": max_length},
           "data": {"dataset": data, "max_examples": total, "split": [size / total, held / total, held / total]},
           "method": {"name": method}, "train": {"lr": lr, "auto_min_steps": min_steps, "seed": seed,
                                                  "auto_max_epochs": cap or default_cap(), "num_threads": 1,
                                                  "pooler_with_head": default_pooler(task, method) if pooler is None
                                                  else pooler},
           "eval": {"generate_samples": 0}, "forgetting": {"probes": ["none"]}}
    return cfg


def write_tweets() -> None:
    """WNUT-16's 2,394 tweets labelled by the entities their tags mark: ``person`` (a person named), ``entity``
    (another entity only) or ``none`` (the ``tweets`` task's file)."""
    from tuneforge.data.embedded import load

    rows = []
    for r in load("wnut16"):
        types = {t[2:] for t in r["tags"] if t != "O"}
        rows.append({"text": " ".join(r["tokens"]), "label": "person" if "person" in types else
                     "entity" if types else "none"})
    Path(TASKS["tweets"][0]).write_text("".join(json.dumps(r) + "\n" for r in rows))


@functools.cache
def available(task: str) -> int:
    """Checked rows of the task's data set (before the split)."""
    from tuneforge import tasks
    from tuneforge.config import load_config
    from tuneforge.data.dataset import source_records

    data, kind, _, _, _ = TASKS[task]
    cfg = load_config(None, {"model": {"name": MODEL[kind], "task": kind}, "data": {"dataset": data}})
    return len(source_records(tasks.get(kind), data, cfg)[0])


def default_cap() -> int:
    from tuneforge.config import TrainConfig

    return TrainConfig().auto_max_epochs


def default_pooler(task: str, method: str) -> bool:
    """train.pooler_with_head as a run of ``method`` on ``task`` resolves it."""
    from tuneforge.run import resolve_config

    kind = TASKS[task][1]
    return bool(resolve_config({"model": {"task": kind}, "method": {"name": method}}).train.pooler_with_head)


def epochs(train_examples: int, min_steps: int) -> int:
    """Whole epochs the automatic length plans (train.auto_min_steps, default batch and epoch cap)."""
    from tuneforge.config import TrainConfig

    per_epoch = -(-train_examples // TrainConfig().batch_size)
    return min(default_cap(), -(-min_steps // per_epoch))


def key(task: str, size: int, method: str, lr: float, min_steps: int, cap: int | None = None,
        pooler: bool | None = None) -> str:
    """task|size|method|lr|auto_min_steps|e<auto_max_epochs>|pool<train.pooler_with_head as 0/1> (unset: the
    current defaults), and |head<train.head_lr> where the method's own head floor gives the head another rate
    than max(lr, 3e-3), the rule every run without that field trained under."""
    from tuneforge.config import HEAD_LR
    from tuneforge.run import resolve_config

    pooler = default_pooler(task, method) if pooler is None else pooler
    spec = {"model": {"task": TASKS[task][1]}, "method": {"name": method}, "train": {"lr": lr}}
    head = resolve_config(spec).train.head_lr  # the head rate such a run trains at
    own = f"|head{head:.3g}" if head != max(lr, HEAD_LR) else ""
    return f"{task}|{size}|{method}|{lr:.3g}|{min_steps}|e{cap or default_cap()}|pool{int(pooler)}{own}"


def read_results(path: Path) -> dict:
    """A results JSON; keys written with fewer fields ran under the rules of their time: without the cap (five
    fields) at 10 epochs with early stopping after 3 evaluations without improvement (the automatic length
    until 2026-12-02), without the pooler field (five or six) with the pooler left to the method."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    legacy = {4: f"|e{LEGACY_CAP}|pool0", 5: "|pool0", 6: ""}
    return {k + legacy.get(k.count("|"), ""): v for k, v in results.items()}


def run_one(job: tuple[str, dict, str]) -> tuple[str, dict]:
    """Train one configuration in this worker process; returns (key, summary)."""
    name, cfg, out = job
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    torch.set_num_threads(1)
    from tuneforge.config import ConfigError
    from tuneforge.run import train

    cfg = {**cfg, "output_dir": out}
    started = time.time()
    try:
        m = train(cfg, overwrite=True, progress=False).metrics
    except ConfigError as exc:
        return name, {"error": str(exc)}
    _, _, _, metric, _ = TASKS[name.split("|")[0]]
    after, val = m["test_after"], m["best_validation"]
    value = after.get(metric)
    validation = val.get("loss") if metric == "perplexity" else val.get(metric)
    return name, {"test": value, "validation": validation, "steps": m["steps"], "seconds": time.time() - started,
                  "train_examples": m["examples"]["train"], "before": m["test_before"].get(metric)}


def gap(default: float, best: float, greater: bool) -> float:
    """How much worse the default is: points for accuracy/F1, per cent for perplexity."""
    return (best - default) * 100 if greater else (default / best - 1) * 100


def main() -> None:
    from tuneforge.methods import registry

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--sizes", default="500,2000", help="training examples (a task with fewer uses all it has)")
    p.add_argument("--methods", default=",".join(registry.names()))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=42, help="train.seed of every run (keys do not record it: one seed "
                   "per output file; the split and held-out sets stay those of data.seed 42)")
    p.add_argument("--quick", action="store_true", help="smoke test: 60 examples, rt and wnut16, lora and ia3")
    p.add_argument("--output", default=str(HERE / "results" / "defaults.md"))
    p.add_argument("--runs", default="/tmp/tuneforge-bench-defaults", help="where the run directories go")
    p.add_argument("--factors", default="1/3,1,3", help="stage 1: learning rates as multiples of the default")
    p.add_argument("--lengths", default=LENGTHS, help="stage 2: auto_min_steps to try at the best rate ('': none)")
    p.add_argument("--merge", default="", help="earlier results JSON files whose runs (same task and size, "
                   "recorded settings) join the sweep; they are not rerun")
    p.add_argument("--table-only", action="store_true", help="run nothing: the table of the runs already in "
                   "--output's JSON and the --merge files (later files win a key); cells without a default run "
                   "are listed below it")
    args = p.parse_args()
    # kill <pid> ends the pool's workers too (the pool is terminated on the way out), not only this process:
    # an orphaned worker would go on training into a run directory that the next invocation starts afresh
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tasks = args.tasks.split(",") if not args.quick else ["rt", "wnut16"]
    sizes = [int(s) for s in args.sizes.split(",")] if not args.quick else [60]
    methods = args.methods.split(",") if not args.quick else ["lora", "ia3"]
    if "tweets" in tasks:
        write_tweets()
    out_json = Path(args.output).with_suffix(".json")
    results = read_results(out_json)
    factors = [float(Fraction(f)) for f in args.factors.split(",")]  # "1/3" -> 0.333...
    lengths = [int(n) for n in args.lengths.split(",") if n]
    merged = {k: v for f in args.merge.split(",") if f for k, v in read_results(Path(f)).items()}

    def run_all(jobs: list[tuple[str, dict, str]]) -> None:
        todo = [j for j in jobs if j[0] not in results and j[0] not in merged]  # a merged run is not rerun
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            for name, summary in pool.imap_unordered(run_one, todo):
                results[name] = summary
                out_json.parent.mkdir(parents=True, exist_ok=True)
                out_json.write_text(json.dumps(results, indent=1))
                print(f"{name}: {summary}", flush=True)

    cells = [(t, s, m) for t in tasks for s in sizes for m in methods]
    default_lr = {(t, m): registry.train_defaults(m, TASKS[t][1], model_name(t))["lr"] for t, _, m in cells}

    def job(t: str, s: int, m: str, lr: float, steps: int) -> tuple[str, dict, str]:
        name = key(t, s, m, lr, steps)
        return name, settings(t, s, m, lr, steps, args.seed), f"{args.runs}/{name.replace('|', '_')}"

    if args.table_only:
        write_table({**merged, **results}, cells, default_lr, args, out_json)
        return
    run_all([job(t, s, m, default_lr[t, m] * f, 250) for t, s, m in cells for f in factors])
    best_lr = {}
    for t, s, m in cells:
        greater = TASKS[t][4] if TASKS[t][3] != "perplexity" else False
        tried = [(results.get(key(t, s, m, default_lr[t, m] * f, 250), {}), default_lr[t, m] * f) for f in factors]
        tried = [(r["validation"], lr) for r, lr in tried if r.get("validation") is not None]
        if tried:
            best_lr[t, s, m] = (max if greater else min)(tried)[1]
    same = {}  # a length whose plan equals the default length's (both capped at auto_max_epochs) is not rerun
    for (t, s, m), lr in best_lr.items():
        base = results.get(key(t, s, m, lr, 250), {})
        for n in lengths:
            if base.get("train_examples") and epochs(base["train_examples"], n) == epochs(base["train_examples"], 250):
                same[key(t, s, m, lr, n)] = {**base, "same_as": key(t, s, m, lr, 250)}
    run_all([job(t, s, m, best_lr[t, s, m], n) for (t, s, m) in best_lr for n in lengths
             if key(t, s, m, best_lr[t, s, m], n) not in same])
    results.update(same)
    out_json.write_text(json.dumps(results, indent=1))
    write_table({**merged, **results}, cells, default_lr, args, out_json)


def met(gap: float, target: float, runs: int) -> str:
    """yes / NO; a cell whose only run is the default has nothing to be measured against."""
    return "no sweep" if runs == 1 else "yes" if gap <= target else "NO"


def write_table(results: dict, cells: list, default_lr: dict, args: argparse.Namespace, out_json: Path) -> None:
    lines = ["| task | size | method | default lr | default | best sweep (lr, auto_min_steps, epoch cap, pooler[, head]) "
             "| best | gap | target | met | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    missing: list[str] = []
    for t, s, m in cells:
        _, _, _, metric, greater = TASKS[t]
        greater = greater if metric != "perplexity" else False
        mine = {k: v for k, v in results.items() if k.startswith(f"{t}|{s}|{m}|") and v.get("test") is not None}
        default_key = key(t, s, m, default_lr[t, m], 250)
        d = results.get(default_key, {})
        if args.table_only and d.get("test") is None and "error" not in d:
            missing.append(f"{t} {s} {m}")
            continue
        if not mine or d.get("test") is None:  # no default run, or one that erred (a method the model cannot take)
            status, note = ("n/a", d["error"]) if "error" in d else ("", "no default run")
            lines.append(f"| {t} | {s} | {m} | {default_lr[t, m]:g} | - | | | | | {status} | {note} |")
            continue
        val = (lambda k: mine[k]["validation"] if metric != "perplexity" else -mine[k]["validation"])
        best = max(mine, key=lambda k: (val(k), k == default_key))  # a validation tie keeps the default
        ties = [k for k in mine if k != best and val(k) == val(best)]
        g = gap(d["test"], mine[best]["test"], greater)
        target = (2 if m in CORE else 5) * (1.5 if metric == "perplexity" else 1)
        lr, steps, cap, pool, *head = best.split("|")[3:]
        lines.append(f"| {t} | {d['train_examples']} | {m} | {default_lr[t, m]:g} | {d['test']:.4f} | "
                     f"{', '.join([lr, steps, cap, pool, *head])} | "
                     f"{mine[best]['test']:.4f} | {g:+.2f} | {target:g} | {met(g, target, len(mine))} |"
                     f" {len(mine)} runs" + (f"; tie on validation with {', '.join(k.split('|')[3] for k in ties)} |"
                                             if ties else " |"))
    unit = "points (accuracy/F1) or % (perplexity; positive: the default is worse)"
    text = (f"# Defaults against a small sweep\n\nCommand: `python benchmarks/bench_defaults.py "
            f"{shlex.join(sys.argv[1:])}`\n\nGap in {unit}; best sweep setting picked on validation (a tie keeps the "
            "default; the note counts the cell's runs and names the settings tied with the pick).\n\n"
            + "\n".join(lines) + "\n"
            + (f"\nNo run at the current default ({len(missing)} cells): {', '.join(missing)}.\n" if missing else ""))
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
