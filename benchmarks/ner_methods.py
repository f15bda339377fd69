"""Every method with its defaults on named entities (WNUT-16): ``bench_ner.py --methods-table``.

The demo's data, model, batch size and epochs (``configs/demo-ner.yaml``); each method with its own default options
and learning rate, one process per method (``tuneforge.compare``); test entity F1 and how far each method is from
full fine-tuning (the issue's check: LoRA and adapters within 3 F1 points).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import environment, machine_line, write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEMO = HERE.parent / "configs" / "demo-ner.yaml"


NEAR_FULL = {"lora": 0.03, "adapter": 0.03}  # the check: within 3 F1 points of full fine-tuning


def methods_config(a: argparse.Namespace, defaults: dict[str, Any], quick_examples: int) -> dict[str, Any]:
    """The demo's config with the method's own defaults (options and learning rate: train.lr removed)."""
    import yaml

    cfg = yaml.safe_load(DEMO.read_text())
    cfg.pop("output_dir", None)
    cfg["method"] = {"name": "lora"}  # compare gives every other method {"name": <method>}: its defaults
    cfg["train"].pop("lr", None)
    if a.epochs:
        cfg["train"]["epochs"] = a.epochs
    if a.quick:
        cfg["data"]["max_examples"] = quick_examples
        cfg["train"]["epochs"] = a.epochs or 1
        cfg["model"]["max_length"] = a.max_length or 32
    elif a.max_length:
        cfg["model"]["max_length"] = a.max_length
    if cfg["model"]["max_length"] != defaults["max_length"]:
        cfg["data"]["stride"] = min(defaults["stride"], cfg["model"]["max_length"] // 4)
    cfg["train"]["num_threads"] = a.threads
    return cfg


def methods_table(rows: list[dict[str, Any]], lrs: dict[str, float], quick: bool) -> list[str]:
    full = next((r for r in rows if r["method"] == "full" and r["status"] == "ok"), None)
    lines = ["| method | test entity F1 | precision | recall | token accuracy | untrained F1 | F1 − full | "
             "trainable params | trainable % | train s | real tokens/s | peak MiB | lr |", "|" + "---|" * 13]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | failed: {r['error']} |" + " |" * 11)
            continue
        gap = f"{r['f1_after'] - full['f1_after']:+.4f}" if full else "—"
        lines.append(
            f"| {r['method']} | {r['f1_after']:.4f} | {r['precision_after']:.4f} | {r['recall_after']:.4f} "
            f"| {r['token_accuracy_after']:.4f} | {r['f1_before']:.4f} | {gap} | {r['trainable_params']:,} "
            f"| {r['trainable_pct']:.3f} | {r['train_seconds']:.0f} | {r['tokens_per_second']:,.0f} "
            f"| {r['peak_memory_mb']:,.0f} | {lrs.get(r['method'], '')} |")
    lines.append("")
    for name, points in NEAR_FULL.items():
        r = next((x for x in rows if x["method"] == name and x["status"] == "ok"), None)
        if r is None or full is None:
            continue
        gap = full["f1_after"] - r["f1_after"]
        verdict = f"**{'met' if gap <= points else 'not met'}**"
        lines.append(f"- {name}: test entity F1 {r['f1_after']:.4f} vs full {full['f1_after']:.4f} "
                     f"({-100 * gap:+.1f} F1 points) → within {100 * points:.0f} F1 points of full fine-tuning: "
                     f"{verdict}{' (smoke test: not a measurement)' if quick else ''}.")
    return lines


def methods_main(a: argparse.Namespace, argv: list[str], defaults: dict[str, Any], quick_examples: int) -> None:
    """``tuneforge.compare`` of the given methods (default: all) in their own processes, reusing finished
    runs under ``--workdir``; a markdown table with each method's distance from full fine-tuning."""
    import yaml
    from tuneforge.compare import compare
    from tuneforge.methods import registry

    t0 = time.perf_counter()
    explicit = any(x == "--methods" or x.startswith("--methods=") for x in argv)  # else every method
    names = [m.strip() for m in a.methods.split(",") if m.strip()] if explicit else registry.names()
    cfg = methods_config(a, defaults, quick_examples)
    default = RESULTS / ("ner-methods-quick.md" if a.quick else "ner-methods.md")
    out = Path(a.output) if a.output else default
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench-ner-methods-"))
    rows = compare(names, cfg, list(a.set or []), out_dir=work, progress=not a.quiet, overwrite=a.overwrite)
    lrs = {}
    for r in rows:
        stored = Path(r["run_dir"]) / "config.yaml"
        if stored.is_file():
            lrs[r["method"]] = yaml.safe_load(stored.read_text())["train"]["lr"]
    env = {**environment(), "wall_seconds": time.perf_counter() - t0,
           "command": " ".join(["python", "benchmarks/bench_ner.py", *argv])}
    settings = ", ".join(f"{k}={v}" for k, v in (("model.max_length", cfg["model"]["max_length"]),
                                                  ("train.epochs", cfg["train"].get("epochs") or "auto"),
                                                  ("train.batch_size", cfg["train"]["batch_size"]),
                                                  ("data.max_examples", cfg["data"].get("max_examples"))) if v)
    text = "\n".join([
        "# Named entities (WNUT-16): every method with its defaults", "",
        f"configs/demo-ner.yaml (MiniLM, WNUT-16 split 80/10/10 by sentence, seed 42; {settings}"
        f"{', overrides ' + ' '.join(a.set) if a.set else ''}) with each method's own default options and learning "
        "rate (train.lr unset); the best epoch by validation entity F1 is kept; one process per method "
        f"(`tuneforge compare`, runs in `{work}`). Entity F1: micro, exact span and type (seqeval semantics), "
        "test split.",
        "", *methods_table(rows, lrs, a.quick), "", machine_line(env), ""])
    print(text)
    out.write_text(text)
    write_json(out.with_suffix(".json"), {"config": cfg, "overrides": a.set, "rows": rows, "lrs": lrs,
                                          "environment": env})
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
