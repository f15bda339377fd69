"""What fine-tuning forgets, and what each mitigation costs to keep it (issue 15), from tuneforge's own runs.

    .venv/bin/python benchmarks/bench_forgetting.py --quick            # smoke test: tiny sizes, one seed
    .venv/bin/python benchmarks/bench_forgetting.py                    # both settings, seeds 42,43,44
    .venv/bin/python benchmarks/bench_forgetting.py --parts sequential --workdir /tmp/fg

Two settings, every number from `tuneforge train` / `tuneforge mitigate` runs (subprocesses):

- sequential: MiniLM on sentiment (Rotten Tomatoes, task 1), then on topics (`chatterbot_topics`, task 2, long
  training) from task 1's model (`forgetting.previous_run`). Forgetting: task-1 test accuracy lost (points).
- chat: SmolLM2-135M-Instruct tuned on ChatterBot pairs. Forgetting: the first probe, perplexity of the
  untrained model's own greedy answers to held-out general prompts (per cent higher after); zero-shot Rotten
  Tomatoes sentiment (points) and chitchat perplexity are reported beside it.

Rows, each trained with every seed (medians): full fine-tuning, LoRA at its default learning rate, LoRA at
matched task quality (the sweep candidate whose validation metric is closest to full's, seed 42), and full
fine-tuning with each mitigation at the strength `tuneforge mitigate` chose on seed 42 (validation metric
within the margin, least forgetting on the probes' validation side). Finished runs in --workdir are reused, so
an interrupted invocation continues where it stopped. Writes markdown, JSON and one PNG per setting.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LORA = {"name": "lora", "rank": 8, "alpha": 16, "target_modules": ["all-linear"]}

SETTINGS: dict[str, dict[str, Any]] = {
    "sequential": {
        "task1": {"model": {"name": "minilm", "max_length": 64}, "data": {"dataset": "rotten_tomatoes", "seed": 42},
                  "train": {"epochs": 1, "batch_size": 32, "weight_decay": 0.01, "seed": 42}},
        "task2": {"model": {"name": "minilm", "max_length": 64}, "data": {"dataset": "chatterbot_topics", "seed": 42},
                  "train": {"epochs": 8, "batch_size": 32, "weight_decay": 0.01}},
        "lr_full": 5e-5, "lr_lora": 1e-3, "lora": LORA,
        "lora_sweep": [{"train.lr": 3e-3}, {"train.lr": 3e-3, "method.rank": 32, "method.alpha": 64}],
        "mitigations": {"ewc": [1e3, 1e4, 1e5, 1e6], "l2sp": [1e-2, 1e-1, 1.0, 10.0],
                        "interpolate": [0.9, 0.75, 0.5]},
        "margin": 1.0, "task_unit": "points", "cost_limit": 1.0},
    "chat": {
        "task2": {"model": {"name": "smollm2", "task": "causal_lm", "max_length": 64},
                  "data": {"dataset": "chatterbot", "system_prompt": "Reply briefly.", "max_examples": 240, "seed": 42},
                  "train": {"epochs": 1, "batch_size": 16},
                  "eval": {"batch_size": 32, "generate_samples": 0, "max_new_tokens": 24},
                  "forgetting": {"probes": ["own_answers", "sentiment", "reference"], "probe_prompts": 24,
                                 "probe_examples": 100, "reference": "chitchat", "reference_examples": 48}},
        "lr_full": 3e-4, "lr_lora": 2e-3, "lora": LORA, "lora_sweep": [{"train.lr": 6e-3}],
        "mitigations": {"self-replay": [0.02, 0.05, 0.2], "replay": [0.1, 0.2],
                        "interpolate": [0.9, 0.8, 0.7, 0.6, 0.5]},
        "fixed": {"replay": ["forgetting.replay.data=chitchat"]},
        "margin": 3.0, "task_unit": "% perplexity", "cost_limit": 3.0},
}
QUICK = {"sequential": {"task1": {"data": {"max_examples": 300}}, "task2": {"data": {"max_examples": 150},
                                                                              "train": {"epochs": 1}}},
         "chat": {"task2": {"data": {"max_examples": 48}, "forgetting": {"probe_prompts": 4, "probe_examples": 16,
                                                                           "reference_examples": 8}}}}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def merged(base: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """``base`` with dotted overrides (``["a.b=1"]`` or ``{"a.b": 1}``), validated by tuneforge's loader."""
    from tuneforge.compare import _base_config
    items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides)
    return _base_config(base, items).to_dict()


class Bench:
    """Trains (or reuses) runs under ``work`` and keeps every record in one JSON file, saved after each run."""

    def __init__(self, work: Path, out: Path, payload: dict[str, Any]) -> None:
        self.work, self.json, self.payload = work, out.with_suffix(".json"), payload

    def save(self) -> None:
        from common import write_json
        write_json(self.json, self.payload)

    def run(self, part: str, label: str, cfg: dict[str, Any]) -> dict[str, Any]:
        """metrics.json of one run (trained now unless a finished one is in the work folder)."""
        import json

        from tuneforge.compare import _train_subprocess
        run_dir = self.work / part / label.replace(" ", "_").replace("=", "-")
        metrics_file = run_dir / "metrics.json"
        if metrics_file.is_file():
            return json.loads(metrics_file.read_text())
        say(f"{part}: {label} ...")
        started = time.perf_counter()
        metrics = _train_subprocess(label.replace(" ", "_"), {**cfg, "output_dir": str(run_dir)}, self.work / part,
                                    None, run_dir.exists(), False)
        say(f"{part}: {label} done in {time.perf_counter() - started:.0f} s")
        return metrics

    def row(self, part: str, label: str, cfg: dict[str, Any], seeds: list[int], **info: Any) -> dict[str, Any]:
        """One table row: the run with each seed (``train.seed``), summarised, recorded and saved."""
        runs = [summarise(self.run(part, f"{label} seed {s}", merged(cfg, {"train.seed": s}))) for s in seeds]
        rec = {"row": label, "runs": runs, **info, **medians(runs)}
        self.payload["parts"][part]["rows"].append(rec)
        self.save()
        return rec


def summarise(m: dict[str, Any]) -> dict[str, Any]:
    """What a row needs from one run's metrics.json."""
    metric = "accuracy" if "accuracy" in m["test_after"] else "perplexity"
    probes = (m.get("forgetting") or {}).get("probes", [])
    return {"test": m["test_after"][metric], "test_before": m["test_before"][metric],
            "validation": (m.get("best_validation") or {}), "forgotten": probes[0]["forgotten"] if probes else None,
            "probes": {p["reference"]: {"before": p["before"], "after": p["after"], "forgotten": p["forgotten"]}
                       for p in probes},
            "trainable_pct": m["parameters"]["trainable_pct"], "train_seconds": m["train_seconds"]}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = {"test": statistics.median(r["test"] for r in runs), "test_before": runs[0]["test_before"],
           "train_seconds": statistics.median(r["train_seconds"] for r in runs),
           "trainable_pct": runs[0]["trainable_pct"]}
    med["probes"] = {name: statistics.median(r["probes"][name]["forgotten"] for r in runs) for name in runs[0]["probes"]}
    med["forgotten"] = statistics.median(r["forgotten"] for r in runs) if runs[0]["forgotten"] is not None else None
    return med


def best(validation: dict[str, Any]) -> float:
    """The best validation metric of a run (``best_validation`` without its step)."""
    return next(v for k, v in validation.items() if k != "step")


def matched_lora(bench: Bench, part: str, s: dict[str, Any], lora_cfg: dict[str, Any], full_val: float,
                 default_val: float) -> tuple[dict[str, Any], str]:
    """The LoRA setting (default or a sweep candidate, seed 42) whose validation metric is closest to full's;
    the candidates are recorded in the payload."""
    candidates = [({}, default_val)]
    pin = lambda e: {"train.head_lr": e["train.lr"]} if "train.lr" in e and part == "sequential" else {}  # noqa: E731
    for extra in s["lora_sweep"]:
        label = "LoRA sweep " + " ".join(f"{k.split('.')[-1]}={v:g}" for k, v in extra.items())
        cfg = merged(lora_cfg, {**extra, "train.seed": 42, "forgetting.probes": "[none]"} if part == "chat"
                     else {**extra, **pin(extra), "train.seed": 42})
        val = bench.run(part, label, cfg)["best_validation"]
        candidates.append((extra, best(val)))
    extra, _ = min(candidates, key=lambda c: abs(c[1] - full_val))
    name = lambda e: ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in e.items()) or "default"  # noqa: E731
    bench.payload["parts"][part]["matched_lora"] = {"full": full_val, "chosen": name(extra),
                                                    "candidates": {name(e): v for e, v in candidates}}
    return merged(lora_cfg, {**extra, **pin(extra)}), name(extra)


def run_part(bench: Bench, part: str, s: dict[str, Any], seeds: list[int]) -> None:
    from tuneforge.config import merge_dicts
    from tuneforge.mitigate import mitigate

    base = dict(s["task2"])
    bench.payload["parts"][part] = {"settings": s, "rows": [], "sweeps": {}}
    if part == "sequential":  # task 1 once per method; its seed-42 model starts every task-2 run of that method
        t1 = {}
        for name, method, lr in (("full", {"name": "full"}, s["lr_full"]), ("LoRA", s["lora"], s["lr_lora"])):
            cfg = merge_dicts(s["task1"], {"method": method, "train": {"lr": lr, "head_lr": lr}})
            bench.run(part, f"task 1 {name}", cfg)
            t1[name] = str(bench.work / part / f"task_1_{name}")
        # the heads at the body's rate, as when results/forgetting.md was measured (before train.head_lr's floor)
        full_cfg = merge_dicts(base, {"method": {"name": "full"}, "train": {"lr": s["lr_full"], "head_lr": s["lr_full"]},
                                      "forgetting": {"previous_run": t1["full"]}})
        lora_cfg = merge_dicts(base, {"method": s["lora"], "train": {"lr": s["lr_lora"], "head_lr": s["lr_lora"]},
                                      "forgetting": {"previous_run": t1["LoRA"]}})
    else:
        full_cfg = merge_dicts(base, {"method": {"name": "full"}, "train": {"lr": s["lr_full"]}})
        lora_cfg = merge_dicts(base, {"method": s["lora"], "train": {"lr": s["lr_lora"]}})
    full = bench.row(part, "full", full_cfg, seeds)
    lora = bench.row(part, "LoRA (default lr)", lora_cfg, seeds)
    seed42 = lambda row: best(row["runs"][0]["validation"])  # noqa: E731
    matched_cfg, how = matched_lora(bench, part, s, lora_cfg, seed42(full), seed42(lora))
    if how != "default":
        bench.row(part, f"LoRA (matched quality: {how})", matched_cfg, seeds)
    for kind, values in s["mitigations"].items():
        out = bench.work / part / f"mitigate-{kind}"
        extra = s.get("fixed", {}).get(kind, [])
        say(f"{part}: mitigate {kind} {values} ...")
        res = mitigate(merged(full_cfg, extra + ["train.seed=42"]), [], kind, values, s["margin"], out, progress=False)
        bench.payload["parts"][part]["sweeps"][kind] = {k: res[k] for k in ("rows", "chosen", "baseline")}
        bench.save()
        if res["chosen"] is None:
            continue
        from tuneforge.mitigate import SWEEPS
        fixed, key, _ = SWEEPS[kind]
        value = res["chosen"]["label"].split("=", 1)[1]
        bench.row(part, f"full + {kind} {value} (auto)", merged(full_cfg, extra + fixed + [f"{key}={value}"]), seeds,
                  mitigation=kind)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="sequential,chat", help="comma-separated: sequential, chat")
    p.add_argument("--seeds", default="42,43,44", help="training seeds per row (default 42,43,44; medians)")
    p.add_argument("--kinds", help="only these mitigations (comma-separated; default: each setting's own list)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one seed, for a smoke test")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per run (default 2)")
    p.add_argument("--workdir", default=str(ROOT / "runs" / "bench-forgetting"),
                   help="where runs are kept and reused (default runs/bench-forgetting)")
    p.add_argument("--output", help="markdown file; JSON and PNGs beside it (default benchmarks/results/forgetting.md)")
    a = p.parse_args(argv)
    parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    if any(x not in SETTINGS for x in parts):
        raise SystemExit(f"--parts: choose from {', '.join(SETTINGS)}")
    seeds = [42] if a.quick else [int(x) for x in a.seeds.split(",")]
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(a.threads))
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from common import environment
    from forgetting_report import markdown

    from tuneforge.config import merge_dicts

    out = Path(a.output or RESULTS / ("forgetting-quick.md" if a.quick else "forgetting.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(a.workdir) / ("quick" if a.quick else "full")
    command = " ".join(["python", "benchmarks/bench_forgetting.py", *(argv if argv is not None else sys.argv[1:])])
    payload: dict[str, Any] = {"complete": False, "command": command, "seeds": seeds, "parts": {}}
    bench = Bench(work, out, payload)
    started, load = time.perf_counter(), os.getloadavg()[0]
    for part in parts:
        s = merge_dicts(SETTINGS[part], QUICK.get(part, {})) if a.quick else SETTINGS[part]
        s = merge_dicts(s, {t: {"train": {"num_threads": a.threads}} for t in ("task1", "task2") if t in s})
        if a.kinds:  # e.g. two invocations on two cores, one mitigation each (runs are reused when combined)
            s = {**s, "mitigations": {k: v for k, v in s["mitigations"].items() if k in a.kinds.split(",")}}
        run_part(bench, part, s, seeds)
    payload.update(complete=True, environment={**environment(), "wall_seconds": time.perf_counter() - started,
                                               "load_before": load, "load_after": os.getloadavg()[0]})
    bench.save()
    text = markdown(payload, out)
    out.write_text(text)
    print(text)
    say(f"wrote {out}, {bench.json} and the plots beside them")


if __name__ == "__main__":
    main()
