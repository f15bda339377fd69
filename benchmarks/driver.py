"""Parent side of the tuneforge-vs-Trainer benchmarks: worker processes and their environment, the matmul-rate
probes, the interleaved schedule, the shared command line and the results files. The worker side (clocks,
probes, both training paths) is ``common.py``, which re-exports everything here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from results_table import MIN_REPEATS, summarise

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT_PREFIX = "BENCH_RESULT "
BF16_WEIGHTS = "_bf16w"  # a Trainer row whose frozen base weights are stored in bf16 (LoRA in bf16 runs only)


def applies(method: str, framework: str, precision: str) -> bool:
    """Whether a (method, framework) row runs: a bf16-weights Trainer row only for LoRA in bf16 runs (as
    LLaMA-Factory loads a LoRA base in the compute dtype; full fine-tuning keeps float32 master weights)."""
    return not framework.endswith(BF16_WEIGHTS) or (method == "lora" and precision == "bf16")


def resolve_precision(requested: str, device: str) -> str:
    """``auto`` -> bf16 where the device runs it natively (CUDA with bf16, a CPU with AVX512-BF16/AMX), else fp32;
    ``bf16`` on a device without it is refused (emulated bf16 is tens of times slower than fp32)."""
    import torch
    from tuneforge.models import bf16_supported

    native = bf16_supported(torch.device(device))
    if requested == "bf16" and not native:
        raise SystemExit(f"--precision bf16: {device} has no native bf16 (emulated it is far slower than fp32); "
                         "use --precision auto or fp32")
    return requested if requested != "auto" else ("bf16" if native else "fp32")


# --------------------------------------------------------------------------------------------------------
# Parent side: processes, probes, schedule
# --------------------------------------------------------------------------------------------------------

def worker_env(threads: int) -> dict[str, str]:
    t = str(threads)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": t,
            "MKL_NUM_THREADS": t, "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def launch(script: str | Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Parent side: run ``script --worker SPEC`` in a fresh process with ``spec['threads']`` threads."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=worker_env(spec["threads"]), cwd=str(ROOT))
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"worker failed: {spec['method']} / {spec['framework']} (exit {proc.returncode})")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)][-1]
    res = json.loads(line[len(RESULT_PREFIX):])
    res["process_seconds"] = time.perf_counter() - started
    res["load_1min_before"], res["load_1min_after"] = load_before, os.getloadavg()[0]
    return res


def matmul_probe(threads: int, device: str) -> dict[str, Any]:
    """bf16 and fp32 matmul rates (``flops.py``) in a fresh process with the runs' thread count."""
    code = ("import json, sys; sys.path.insert(0, %r); import flops; "
            "print(json.dumps(flops.matmul_rates(%r, %d)))" % (str(HERE), device, threads))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=worker_env(threads),
                          cwd=str(ROOT))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit("matmul probe failed")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load_1min"] = os.getloadavg()[0]
    print("matmul rate: " + ", ".join(f"{k} {v['flops'] / 1e9:,.1f} GFLOP/s ({v['size']}², "
                                      f"{'native' if v['native'] else 'emulated'})" for k, v in res.items()
                                      if isinstance(v, dict)), file=sys.stderr, flush=True)
    return res


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (an interrupted benchmark never leaves half a file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def run_interleaved(script: str | Path, settings: dict[str, Any], methods: list[str], frameworks: tuple[str, ...],
                    data: dict[str, Any], out: Path, quality: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (repeat, method, framework) in a fresh worker, repeats interleaved so machine drift spreads over
    all configurations; repeat i trains with seed + i. The matmul rate is probed before the first run and after
    each round; within a round the frameworks take turns at going first. Raw runs and probes are written to
    ``out``'s JSON after each run, so an interrupted invocation keeps what it measured. Returns (runs, matmul probes)."""
    runs: list[dict[str, Any]] = []
    probes = [matmul_probe(settings["threads"], settings["device"])]
    pairs = [(m, fw) for m in methods for fw in frameworks if applies(m, fw, settings["precision"])]
    total = settings["repeats"] * len(pairs)
    print(f"{total} runs: {methods} × {list(frameworks)} × {settings['repeats']} repeats, "
          f"{settings['n_train']} train examples, {settings['precision']} on {settings['device']}", file=sys.stderr)
    for rep in range(settings["repeats"]):
        for method in methods:
            mine = [fw for m, fw in pairs if m == method]
            for fw in mine[rep % len(mine):] + mine[:rep % len(mine)] if mine else []:  # each side first in turn
                spec = {**settings, **data, "method": method, "framework": fw, "repeat": rep,
                        "seed": settings["seed"] + rep, "lr": settings[f"lr_{method}"]}
                res = launch(script, spec)
                res.update(method=method, framework=fw, repeat=rep)
                runs.append(res)
                print(f"[{len(runs)}/{total}] {method:4s} {fw:16s} {res['tokens_per_second']:8.0f} tok/s "
                      f"{res['train_seconds']:7.1f} s {res['peak_memory_mb']:6.0f} MiB  {quality} {res[quality]:.4f}  "
                      f"pad {res['padding_factor']:.2f}  autocast {res['autocast_dtype']}  "
                      f"({res['process_seconds']:.0f} s process)", file=sys.stderr, flush=True)
                write_json(out.with_suffix(".json"), {"complete": False, "settings": settings, "runs": runs,
                                                      "matmul_probes": probes})
        probes.append(matmul_probe(settings["threads"], settings["device"]))
    return runs, probes


# --------------------------------------------------------------------------------------------------------
# Command line shared by the Trainer comparisons
# --------------------------------------------------------------------------------------------------------

def comparison_parser(doc: str, defaults: dict[str, Any], quick_examples: int, examples_help: str,
                      output: Path) -> Any:
    """The flags both Trainer comparisons take; callers add their own before parsing."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="lora,full", help="comma-separated: lora, full (default: lora,full)")
    p.add_argument("--repeats", type=int, help=f"runs per configuration, interleaved (default {MIN_REPEATS})")
    p.add_argument("--train-examples", type=int, help=examples_help)
    p.add_argument("--test-examples", type=int,
                   help="score the first N test examples (default 0: all of them; --quick: fewer, see --quick)")
    p.add_argument("--seed", type=int, default=defaults["seed"],
                   help=f"training seed of the first repeat; repeat i uses seed + i on every side (default {defaults['seed']})")
    p.add_argument("--epochs", type=float, help=f"default {defaults['epochs']:g}")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"], help=f"default {defaults['batch_size']}")
    p.add_argument("--lr-lora", type=float, default=defaults["lr_lora"], help=f"default {defaults['lr_lora']:g}")
    p.add_argument("--lr-full", type=float, default=defaults["lr_full"], help=f"default {defaults['lr_full']:g}")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads on every side (default 2)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="on every side: auto = bf16 autocast where the device runs bf16 natively (AMX / AVX512-BF16 "
                        "CPU, CUDA), else fp32 (default auto)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    p.add_argument("--no-bf16-weights-trainer", action="store_true",
                   help="skip the Trainer row whose LoRA base is loaded in bf16 (bf16 runs only; fewer runs)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {quick_examples} train examples, fewer test examples, 1 epoch, 1 repeat, results "
                        "file *-quick.md (explicit flags still win)")
    p.add_argument("--output", help=f"markdown output, JSON beside it (default {output.relative_to(ROOT)}; with "
                   f"--quick {output.with_name(output.stem + '-quick.md').relative_to(ROOT)})")
    p.set_defaults(default_output=str(output))
    p.add_argument("--render", metavar="JSON",
                   help="measure nothing: write the results file of an earlier invocation's complete JSON again "
                        "(this code's table and verdicts; --output, default the JSON's .md)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def measured_before(a: Any) -> tuple[Path, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]],
                                     dict[str, Any], dict[str, Any]]:
    """``--render``: (results file, settings, runs, matmul probes, FLOPs, environment) of an earlier invocation's
    complete JSON, to write its results file again under this code's table and verdicts."""
    path = Path(a.render)
    payload = json.loads(path.read_text())
    if not payload.get("complete"):
        raise SystemExit(f"--render {path}: not the complete JSON of a finished invocation")
    out = Path(a.output) if a.output else path.with_suffix(".md")
    return (out, payload["settings"], payload["runs"], payload["matmul_probes"], payload["flops"],
            payload["environment"])


@dataclass
class Measured:
    """One comparison's measurements and their summary rows: what its results file is written from."""
    out: Path
    settings: dict[str, Any]
    runs: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    flops: dict[str, Any]
    env: dict[str, Any]
    rates: dict[str, Any]
    rows: list[dict[str, Any]]

    def payload(self) -> dict[str, Any]:
        """The results JSON's fields (besides ``complete``)."""
        return {"settings": self.settings, "environment": self.env, "flops": self.flops,
                "matmul_rates": self.rates, "matmul_probes": self.probes, "summary": self.rows, "runs": self.runs}


def measured(a: Any, argv: Any, measure: Callable[[Any, Any], tuple[Any, ...]], quality: str,
             frameworks: tuple[str, ...]) -> Measured:
    """``measure(a, argv)`` now, or an earlier invocation's JSON (``--render``), summarised: medians per row and
    MFU against the pooled matmul rates (``flops.pooled_rates``)."""
    from flops import pooled_rates

    out, settings, runs, probes, flops, env = measured_before(a) if a.render else measure(a, argv)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    rates = pooled_rates(probes)
    rows = summarise(runs, methods, frameworks, quality, {m: flops[m]["per_token"] for m in methods}, rates,
                     settings["precision"])
    return Measured(out, settings, runs, probes, flops, env, rates, rows)


def output_path(a: Any) -> Path:
    """``--output``, or the default results file (``-quick`` beside it for a smoke test)."""
    if a.output:
        return Path(a.output)
    default = Path(a.default_output)
    return default.with_name(default.stem + "-quick.md") if a.quick else default


def results_file(a: Any) -> Path:
    """The parent side's start: tuneforge importable from this repository, the Hub offline, and this invocation's
    results file (:func:`output_path`) with its folder made."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = output_path(a)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def comparison_settings(a: Any, defaults: dict[str, Any], quick_examples: int, quick_test: int = 0
                        ) -> tuple[dict[str, Any], list[str]]:
    """(settings, methods) from parsed ``comparison_parser`` flags; ``--quick`` fills what was not given."""
    quick = ({"train_examples": quick_examples, "epochs": 1.0, "repeats": 1, "test_examples": quick_test}
             if a.quick else {})
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ("lora", "full")]
    if bad:
        raise SystemExit(f"--methods: unknown method '{bad[0]}'; choose from lora, full")
    settings = {**defaults, "repeats": a.repeats or quick.get("repeats", MIN_REPEATS), "threads": a.threads,
                "seed": a.seed, "epochs": a.epochs or quick.get("epochs", defaults["epochs"]),
                "batch_size": a.batch_size, "lr_lora": a.lr_lora, "lr_full": a.lr_full, "device": a.device,
                "precision": resolve_precision(a.precision, a.device), "requested_precision": a.precision,
                "train_examples": a.train_examples if a.train_examples is not None
                else quick.get("train_examples", defaults["train_examples"]),
                "test_examples": a.test_examples if a.test_examples is not None else quick.get("test_examples", 0),
                "quick": bool(a.quick)}
    return settings, methods


def write_results(out: Path, text: str, payload: dict[str, Any]) -> None:
    """Print the markdown, write it to ``out`` and the complete JSON beside it."""
    print(text)
    out.write_text(text)
    write_json(out.with_suffix(".json"), {"complete": True, **payload})
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
