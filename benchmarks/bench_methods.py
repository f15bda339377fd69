"""Every method with its shipped defaults on one task: test accuracy, trainable share, train seconds, memory.

    .venv/bin/python benchmarks/bench_methods.py                       # MiniLM + Rotten Tomatoes, all methods
    .venv/bin/python benchmarks/bench_methods.py --methods lora,full --set train.epochs=1

Each method runs as `tuneforge train -c configs/demo.yaml --method NAME` in its own process (so peak
resident memory is per run); only the method (and its default learning rate) changes between rows.
Prints a markdown table and writes it to benchmarks/results/methods.md (+ raw metrics as JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL = "full,freeze,lora,adapter,prompt,p-tuning,prefix,ia3,bitfit"


def run_one(method: str, config: str, extra: list[str], workdir: Path) -> dict:
    out = workdir / method
    cmd = [sys.executable, "-m", "tuneforge.cli", "train", "-c", config, "--method", method, "-o", str(out),
           "-q", "--overwrite", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        return {"method": method, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    return {"method": method, **metrics}


def table(rows: list[dict]) -> str:
    lines = ["| method | test accuracy | macro-F1 | untrained accuracy | trainable | trainable % | train s | "
             "real tokens/s | peak MiB | lr |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error']} |||||||||")
            continue
        p, a, b = r["parameters"], r["test_after"], r["test_before"]
        lines.append(f"| {r['method']} | {a['accuracy']:.4f} | {a['macro_f1']:.4f} | {b.get('accuracy', float('nan')):.4f} "
                     f"| {p['trainable']:,} | {p['trainable_pct']:.3f} | {r['train_seconds']:.0f} | "
                     f"{r['tokens_per_second']:,.0f} | {r['peak_memory_mb']:,.0f} | {r.get('lr', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=ALL, help=f"comma-separated (default {ALL})")
    parser.add_argument("--config", default="configs/demo.yaml", help="base config (method is replaced)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra dotted overrides")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "methods.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tf-methods-") as tmp:
        for method in args.methods.split(","):
            print(f"running {method} ...", file=sys.stderr, flush=True)
            row = run_one(method, args.config, args.set, Path(tmp))
            if "error" not in row:
                import yaml
                row["lr"] = yaml.safe_load((Path(tmp) / method / "config.yaml").read_text())["train"]["lr"]
            rows.append(row)
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"Command: `python benchmarks/bench_methods.py --methods {args.methods} --config {args.config}"
                   f"{' --set ' + ' '.join(args.set) if args.set else ''}`\n\n{text}\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
