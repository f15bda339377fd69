"""Catastrophic forgetting, measured with tuneforge's own pipeline (issue 5's results section).

    .venv/bin/python benchmarks/bench_forgetting.py --quick        # smoke test: tiny sizes (a few minutes)
    .venv/bin/python benchmarks/bench_forgetting.py                # the results section
    .venv/bin/python benchmarks/bench_forgetting.py --parts calibration

Three parts, every number from `tuneforge.run.train` (runs in a temp folder) or
`tuneforge.prompting.classify.evaluate_prompting` (the code of `tuneforge calibrate`):

- lm:          SmolLM2-135M-Instruct tuned on the ChatterBot pairs; forgetting = perplexity change on
               held-out chitchat conversations (`forgetting.reference`). Full, LoRA, LoRA + chitchat replay.
- sequential:  MiniLM on sentiment (Rotten Tomatoes), then on topics (`chatterbot_topics`) with
               `forgetting.previous_run`; forgetting = task-1 accuracy drop. Full, full + EWC, LoRA.
- calibration: zero-/few-shot sentiment by SmolLM2 from a prompt, with and without contextual calibration.

Writes the markdown (at the end) and the JSON (after every run, so an interrupted invocation keeps what it
measured) to --output and beside it.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LORA = {"name": "lora", "rank": 8, "alpha": 16, "target_modules": ["all-linear"]}

SETTINGS: dict[str, dict[str, Any]] = {
    "lm": {"model": "smollm2", "data": "chatterbot", "max_examples": None, "max_length": 64,
           "system_prompt": "Reply briefly.", "batch_size": 16, "epochs": 1, "lr_full": 5e-5, "lr_lora": 2e-3,
           "lora": LORA, "reference": "chitchat", "reference_examples": 200, "replay_data": "chitchat",
           "replay_ratio": 0.2, "eval_batch_size": 32, "generate_samples": 0, "seed": 42},
    # EWC strengths: on a trial (1,000 task-1 sentences, all topics, 3 epochs) 1e2 and 1e4 changed nothing
    # measurable, 1e6 cut the task-1 drop at a small task-2 cost, 1e8 kept task 1 but task 2 hardly learned
    "sequential": {"model": "minilm", "task1": "rotten_tomatoes", "task1_examples": None, "task1_epochs": 1,
                   "task2": "chatterbot_topics", "task2_examples": None, "task2_epochs": 5, "max_length": 64,
                   "batch_size": 32, "weight_decay": 0.01, "lr_full": 5e-5, "lr_lora": 1e-3, "lora": LORA,
                   "ewc_strengths": [1e6, 1e7], "fisher_batches": 64, "seed": 42},
    "calibration": {"model": "smollm2", "data": "rotten_tomatoes", "limit": 300, "shots": [0, 4], "seed": 42},
}
QUICK = {"lm": {"max_examples": 48, "reference_examples": 16},
         "sequential": {"task1_examples": 200, "task2_examples": 200, "task2_epochs": 1, "fisher_batches": 8},
         "calibration": {"limit": 16, "shots": [0, 2]}}
EXPECTED = ("Expected shape (issue 5, from Biderman et al. 2024 \"LoRA Learns Less and Forgets Less\" and Zhao et "
            "al. 2021 \"Calibrate Before Use\"): LoRA forgets less than full fine-tuning; replay and EWC reduce "
            "forgetting at a small cost in task quality; contextual calibration raises zero-shot accuracy. The "
            "tables report what was measured, whichever way it came out.")


def say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class Bench:
    """Runs trainings in-process and keeps every result in one JSON file, rewritten after each run."""

    def __init__(self, out: Path, settings: dict[str, Any], threads: int, command: str, tmp: Path) -> None:
        self.json, self.threads, self.tmp = out.with_suffix(".json"), threads, tmp
        self.results: dict[str, Any] = {"complete": False, "command": command, "settings": settings,
                                        "threads": threads, "lm": [], "sequential": [], "calibration": []}

    def save(self) -> None:
        from common import write_json
        write_json(self.json, self.results)

    def train(self, part: str, row: str, cfg: dict[str, Any]) -> dict[str, Any]:
        """One tuneforge run; its metrics (or the error) are recorded under ``part`` and saved at once."""
        from tuneforge.run import train

        cfg = copy.deepcopy(cfg)
        cfg["train"]["num_threads"] = self.threads  # torch.set_num_threads for this run
        cfg["output_dir"] = str(self.tmp / part / row.replace(" ", "_"))
        say(f"{part}: {row} ...")
        started = time.perf_counter()
        try:
            out = train(cfg, overwrite=True, progress=False)
            rec = {"row": row, "config": cfg, "run_dir": str(out.run_dir), "metrics": out.metrics}
        except Exception as exc:  # keep the other rows; the table shows the error
            traceback.print_exc()
            rec = {"row": row, "config": cfg, "error": f"{type(exc).__name__}: {exc}"}
        rec["wall_seconds"] = time.perf_counter() - started
        self.results[part].append(rec)
        self.save()
        say(f"{part}: {row} done in {rec['wall_seconds']:.0f} s" + (f" -- {rec['error']}" if "error" in rec else ""))
        return rec


def run_lm(bench: Bench, s: dict[str, Any]) -> None:
    """Full, LoRA and LoRA + replay on the chat model; the reference probe is chitchat perplexity."""
    base = {"model": {"name": s["model"], "task": "causal_lm", "max_length": s["max_length"]},
            "data": {"dataset": s["data"], "system_prompt": s["system_prompt"], "max_examples": s["max_examples"],
                     "seed": s["seed"]},
            "train": {"epochs": s["epochs"], "batch_size": s["batch_size"], "seed": s["seed"]},
            "eval": {"batch_size": s["eval_batch_size"], "generate_samples": s["generate_samples"]},
            "forgetting": {"reference": s["reference"], "reference_examples": s["reference_examples"]}}
    replay = {"replay": {"data": s["replay_data"], "ratio": s["replay_ratio"]}}
    for row, method, lr, extra in (("full", {"name": "full"}, s["lr_full"], {}),
                                   ("LoRA", s["lora"], s["lr_lora"], {}),
                                   ("LoRA + replay", s["lora"], s["lr_lora"], replay)):
        cfg = copy.deepcopy(base)
        cfg["method"], cfg["train"]["lr"] = method, lr
        cfg["forgetting"].update(extra)
        bench.train("lm", row, cfg)


def run_sequential(bench: Bench, s: dict[str, Any]) -> None:
    """Task 1 (sentiment) full and LoRA; task 2 (topics) full, full + EWC at each strength, LoRA."""
    def config(task: str, method: dict[str, Any], lr: float, **forgetting: Any) -> dict[str, Any]:
        first = task == "task1"
        return {"model": {"name": s["model"], "max_length": s["max_length"]},
                "data": {"dataset": s[task], "max_examples": s[f"{task}_examples"], "seed": s["seed"]},
                "method": method, "forgetting": forgetting,
                "train": {"lr": lr, "epochs": s["task1_epochs" if first else "task2_epochs"],
                          "batch_size": s["batch_size"], "weight_decay": s["weight_decay"], "seed": s["seed"]}}

    full, lora = {"name": "full"}, s["lora"]
    t1_full = bench.train("sequential", "task 1 full", config("task1", full, s["lr_full"]))
    t1_lora = bench.train("sequential", "task 1 LoRA", config("task1", lora, s["lr_lora"]))
    if "run_dir" in t1_full:
        prev = t1_full["run_dir"]
        bench.train("sequential", "full", config("task2", full, s["lr_full"], previous_run=prev))
        for strength in s["ewc_strengths"]:
            ewc = {"kind": "ewc", "strength": strength, "fisher_batches": s["fisher_batches"]}
            bench.train("sequential", f"full + EWC {_strength(strength)}",
                        config("task2", full, s["lr_full"], previous_run=prev, regularize=ewc))
    if "run_dir" in t1_lora:
        bench.train("sequential", "LoRA", config("task2", lora, s["lr_lora"], previous_run=t1_lora["run_dir"]))


def run_calibration(bench: Bench, s: dict[str, Any]) -> None:
    """Prompt classification of a seeded sample of the sentiment test split, each number of shots."""
    import torch

    from tuneforge.prompting.classify import evaluate_prompting

    torch.set_num_threads(bench.threads)
    for shots in s["shots"]:
        say(f"calibration: {shots}-shot ...")
        res = evaluate_prompting(s["model"], s["data"], shots=shots, limit=s["limit"], seed=s["seed"])
        bench.results["calibration"].append(res)
        bench.save()
        say(f"calibration: {shots}-shot done in {res['seconds']:.0f} s")


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value + 0.0, spec)  # + 0.0: no "-0.0000"


def _strength(x: float) -> str:
    return f"{x:g}".replace("e+0", "e").replace("e+", "e")  # 1e+06 -> 1e6


def lm_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | test ppl before | test ppl after | chitchat ppl before | chitchat ppl after | change | "
             "change % | train examples | trainable % | train s |", "|---|" + "---|" * 9]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} |" + " |" * 8)
            continue
        m = r["metrics"]
        f, b, a = m["forgetting"], m["test_before"], m["test_after"]
        pct = 100 * f["change"] / f["before"] if f.get("change") is not None else None
        lines.append(f"| {r['row']} | {b['perplexity']:.2f} | {a['perplexity']:.2f} | {f['before']:.2f} | "
                     f"{f['after']:.2f} | {f['change']:+.2f} | {_fmt(pct, '+.1f')} | {m['examples']['train']} | "
                     f"{m['parameters']['trainable_pct']:.2f} | {m['train_seconds']:.0f} |")
    return "\n".join(lines)


def seq_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method (task 1 → task 2) | task-1 acc. after task 1 | task-1 acc. after task 2 | drop | "
             "task-2 test acc. | task-2 macro-F1 | trainable % (task 2) | task-2 train s |", "|---|" + "---|" * 7]
    for r in rows:
        if r["row"].startswith("task 1"):
            continue
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} |" + " |" * 6)
            continue
        m = r["metrics"]
        f, a = m["forgetting"], m["test_after"]
        lines.append(f"| {r['row']} | {f['before']:.4f} | {f['after']:.4f} | {_fmt(-f['change'], '+.4f')} | "
                     f"{a['accuracy']:.4f} | {a['macro_f1']:.4f} | {m['parameters']['trainable_pct']:.2f} | "
                     f"{m['train_seconds']:.0f} |")
    task1 = [r for r in rows if r["row"].startswith("task 1") and "metrics" in r]
    notes = [f"{r['row']}: test accuracy {r['metrics']['test_after']['accuracy']:.4f} "
             f"({r['metrics']['examples']['train']} train / {r['metrics']['examples']['test']} test sentences, "
             f"trainable {r['metrics']['parameters']['trainable_pct']:.2f} %, {r['metrics']['train_seconds']:.0f} s)"
             for r in task1]
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


def cal_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| prompt | accuracy | accuracy calibrated | macro-F1 | macro-F1 calibrated | share predicted positive "
             "| share predicted positive, calibrated | content-free p(positive) |", "|---|" + "---|" * 7]
    for r in rows:
        u, c = r["uncalibrated"], r["calibrated"]
        pos = r["labels"][-1]
        lines.append(f"| {r['shots']}-shot | {u['accuracy']:.4f} | {c['accuracy']:.4f} | {u['macro_f1']:.4f} | "
                     f"{c['macro_f1']:.4f} | {u['predicted_share'][pos]:.3f} | {c['predicted_share'][pos]:.3f} | "
                     f"{r['p_content_free'][pos]:.3f} |")
    return "\n".join(lines)


def observations(res: dict[str, Any]) -> list[str]:
    """Each expectation of the issue checked against the measured numbers (no number is adjusted)."""
    out = []
    lm = {r["row"]: r["metrics"]["forgetting"]["change"] for r in res["lm"] if "metrics" in r}
    if "full" in lm and "LoRA" in lm:
        out.append(f"LoRA forgets less than full fine-tuning (chitchat perplexity change {lm['LoRA']:+.2f} vs "
                   f"{lm['full']:+.2f}): {'yes' if lm['LoRA'] < lm['full'] else 'no'}.")
    if "LoRA" in lm and "LoRA + replay" in lm:
        out.append(f"Replay reduces LoRA's forgetting ({lm['LoRA + replay']:+.2f} vs {lm['LoRA']:+.2f}): "
                   f"{'yes' if lm['LoRA + replay'] < lm['LoRA'] else 'no'}.")
    if lm and all(change < 0 for change in lm.values()):
        out.append("Chitchat perplexity fell in every row: by this probe no row forgot, and the comparisons above "
                   "are of how much the probe improved.")
    seq = {r["row"]: -r["metrics"]["forgetting"]["change"] for r in res["sequential"]
           if "metrics" in r and not r["row"].startswith("task 1")}
    for row, drop in seq.items():
        if row != "full" and "full" in seq:
            out.append(f"{row} loses less task-1 accuracy than full (drop {_fmt(drop, '+.4f')} vs "
                       f"{_fmt(seq['full'], '+.4f')}): {'yes' if drop < seq['full'] else 'no'}.")
    for r in res["calibration"]:
        u, c = r["uncalibrated"]["accuracy"], r["calibrated"]["accuracy"]
        out.append(f"Calibration raises {r['shots']}-shot accuracy ({u:.4f} → {c:.4f}): {'yes' if c > u else 'no'}.")
    return out


def markdown(res: dict[str, Any], env: dict[str, Any]) -> str:
    s = res["settings"]
    parts = [f"# Forgetting benchmark\n\nCommand: `{res['command']}`  \nWall time: {env['wall_seconds'] / 60:.1f} min, "
             f"{datetime.now():%Y-%m-%d}  \nMachine: {env['cpu']}, {env['cores']} cores, {res['threads']} torch "
             f"threads per run, 1-minute load average {env['load_before']:.1f} before and {env['load_after']:.1f} "
             f"after (the runs add about {res['threads']}; well above, other processes shared the CPU and the "
             f"seconds are unreliable)  \nVersions: Python {env['python']}, torch {env['torch']}, transformers "
             f"{env['transformers']}, tuneforge {env['tuneforge']}\n\n{EXPECTED}\n"]
    if "lm" in s:
        lm = s["lm"]
        parts.append(
            f"## Chat model: full vs LoRA vs LoRA + replay\n\n{lm['model']} tuned on the `{lm['data']}` Q→A pairs "
            f"(max_length {lm['max_length']}, system prompt \"{lm['system_prompt']}\", batch {lm['batch_size']}, "
            f"epochs: {lm['epochs']}, lr {lm['lr_full']:g} full / {lm['lr_lora']:g} LoRA r={lm['lora']['rank']} "
            f"α={lm['lora']['alpha']} all linear layers, bf16 autocast where supported, seed {lm['seed']}). Test "
            f"perplexity: the ChatterBot test split (task quality). Forgetting: perplexity of "
            f"{lm['reference_examples']} held-out `{lm['reference']}` conversations (seeded sample, "
            f"`forgetting.reference`); higher after = forgot. Replay: a {lm['replay_ratio']:.0%} share of the "
            f"training epoch drawn from `{lm['replay_data']}` conversations, from which tuneforge first drops every "
            f"example identical to a reference example, so no replayed example is measured by the probe. No "
            f"generation (BLEU/ROUGE) is computed.\n\n"
            f"{lm_table(res['lm'])}\n")
    if "sequential" in s:
        q = s["sequential"]
        parts.append(
            f"## Sequential classification: sentiment, then topics\n\n{q['model']}: task 1 = `{q['task1']}` "
            f"({q['task1_examples'] or 'all'} sentences, seeded 80/10/10 split, epochs: {q['task1_epochs']}), "
            f"task 2 = `{q['task2']}` ({q['task2_examples'] or 'all'} questions, epochs: {q['task2_epochs']}) started "
            f"from task 1's merged model (`forgetting.previous_run`); task-1 accuracy is measured on task 1's test "
            f"split with task 1's own head before and after task 2; drop = before − after (positive: forgot). "
            f"Max length {q['max_length']}, batch {q['batch_size']}, weight decay {q['weight_decay']}, lr "
            f"{q['lr_full']:g} full / {q['lr_lora']:g} LoRA (r={q['lora']['rank']}, α={q['lora']['alpha']}, all "
            f"linear layers). Full and full + EWC share one "
            f"task-1 run; LoRA trains LoRA on both tasks. EWC: Fisher diagonal from {q['fisher_batches']} task-1 "
            f"training examples (batches of one; never the test sentences that measure the drop), "
            f"strengths {', '.join(_strength(x) for x in q['ewc_strengths'])} (chosen on a smaller trial, see the "
            f"comment in bench_forgetting.py).\n\n{seq_table(res['sequential'])}\n")
    if "calibration" in s:
        c = s["calibration"]
        first = res["calibration"][0] if res["calibration"] else {}
        parts.append(
            f"## Prompt classification with contextual calibration\n\n{c['model']} classifies a seeded sample of "
            f"{c['limit']} sentences of the `{c['data']}` test split from the prompt {first.get('template', '')!r} "
            f"with label words {first.get('label_words', '')}; few-shot demonstrations are drawn (seeded) from the "
            f"train split. Calibration (Zhao et al. 2021) divides by the label probabilities of the content-free "
            f"inputs {first.get('content_free', '')}. Same as `tuneforge calibrate --limit {c['limit']} --shots K`.\n\n"
            f"{cal_table(res['calibration'])}\n")
    parts.append("## Measured against the expected shape\n\n" + "\n".join(f"- {o}" for o in observations(res)) + "\n")
    parts.append("## Settings\n\n" + "\n".join(f"- {k}: `{json.dumps(v)}`" for k, v in s.items()) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="lm,sequential,calibration", help="comma-separated subset of the parts")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (results are not meaningful)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per run (default 2)")
    p.add_argument("--ewc-strengths", help="sequential: comma-separated EWC strengths (default "
                   + ",".join(_strength(x) for x in SETTINGS["sequential"]["ewc_strengths"]) + ")")
    p.add_argument("--task2-epochs", type=int, help=f"sequential: task-2 epochs (default "
                   f"{SETTINGS['sequential']['task2_epochs']})")
    p.add_argument("--output", help="markdown file, JSON beside it (default benchmarks/results/forgetting.md; "
                   "with --quick forgetting-quick.md)")
    a = p.parse_args(argv)
    parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in SETTINGS]
    if unknown:
        raise SystemExit(f"--parts: unknown part '{unknown[0]}'; choose from {', '.join(SETTINGS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from common import environment

    import tuneforge
    settings = {k: {**SETTINGS[k], **(QUICK[k] if a.quick else {})} for k in parts}
    if "sequential" in settings:
        if a.ewc_strengths:
            settings["sequential"]["ewc_strengths"] = [float(x) for x in a.ewc_strengths.split(",")]
        if a.task2_epochs:
            settings["sequential"]["task2_epochs"] = a.task2_epochs
    out = Path(a.output or RESULTS / ("forgetting-quick.md" if a.quick else "forgetting.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/bench_forgetting.py", *(argv if argv is not None else sys.argv[1:])])
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-forgetting-") as tmp:
        bench = Bench(out, settings, a.threads, command, Path(tmp))
        for part in parts:
            {"lm": run_lm, "sequential": run_sequential, "calibration": run_calibration}[part](bench, settings[part])
    env = {**environment(), "tuneforge": tuneforge.__version__, "wall_seconds": time.perf_counter() - started,
           "load_before": load_before, "load_after": os.getloadavg()[0]}
    bench.results.update(complete=True, environment=env)
    bench.save()
    text = markdown(bench.results, env)
    out.write_text(text)
    print(text)
    say(f"wrote {out} and {bench.json}")


if __name__ == "__main__":
    main()
