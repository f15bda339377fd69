"""Shared pieces of the tuneforge-vs-Trainer benchmarks: worker processes, clocks, probes, environment.

Every configuration runs in a fresh subprocess of the benchmark script (``launch``), so peak memory is per
run; the worker prints one ``BENCH_RESULT {json}`` line that the parent collects.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "
FRAMEWORKS = ("tuneforge", "trainer", "trainer_grouped", "trainer_flat")
LABELS = {
    "tuneforge": "tuneforge",
    "trainer": "Trainer + PEFT (defaults: random batches)",
    "trainer_grouped": "Trainer + PEFT, train_sampling_strategy=group_by_length",
    "trainer_flat": "Trainer + PEFT, DataCollatorWithFlattening (padding-free)",
}


class FirstLinearDtype:
    """Records the output dtype of the first nn.Linear called in training mode (is autocast on?), then
    removes its global hook so it costs nothing afterwards."""

    def __init__(self) -> None:
        import torch
        self.dtype: str | None = None
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        import torch
        if self.dtype is None and isinstance(module, torch.nn.Linear) and module.training and torch.is_tensor(output):
            self.dtype = str(output.dtype).replace("torch.", "")
            self.handle.remove()


class ListDataset:
    """A plain map-style dataset over tuneforge's tokenised examples (dicts of lists)."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clock_tuneforge_fit() -> dict[str, float]:
    """Wrap ``tuneforge.run.fit`` so the returned dict receives the CPU and wall time of the training loop
    (a cross-check of tuneforge's own ``train_seconds``) and the torch thread count inside it."""
    import torch
    import tuneforge.run

    clock: dict[str, float] = {}
    fit = tuneforge.run.fit

    def timed_fit(*args: Any, **kwargs: Any) -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        out = fit(*args, **kwargs)
        clock.update(cpu=time.process_time() - cpu, wall=time.perf_counter() - wall, threads=torch.get_num_threads())
        return out

    tuneforge.run.fit = timed_fit
    return clock


def trainer_clock():
    """A transformers ``TrainerCallback`` class whose attributes hold on_train_begin..on_train_end wall and CPU
    time and the torch thread count (a cross-check of Trainer's own ``train_runtime``)."""
    import torch
    from transformers import TrainerCallback

    class LoopClock(TrainerCallback):
        begin = end = cpu_begin = cpu_end = 0.0
        threads = 0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            LoopClock.begin, LoopClock.cpu_begin = time.perf_counter(), time.process_time()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            LoopClock.end, LoopClock.cpu_end = time.perf_counter(), time.process_time()
            LoopClock.threads = torch.get_num_threads()

    return LoopClock


def count_forward_tokens(model: Any) -> dict[str, int]:
    """Forward pre-hook on ``model`` summing the attention mask (real tokens) and its size (padded tokens) of
    every training-mode forward: the batches the model actually saw. A batch without a mask (flattened,
    padding-free) counts all its tokens as real."""
    counts = {"real": 0, "padded": 0, "forwards": 0}

    def hook(module: Any, fargs: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and kwargs.get("position_ids") is not None:
            mask = kwargs["input_ids"].new_ones(kwargs["input_ids"].shape)
        if module.training and mask is not None:
            counts["real"] += int(mask.sum())
            counts["padded"] += mask.numel()
            counts["forwards"] += 1

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return counts


def worker_main(spec_json: str, worker: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Worker side: run one configuration and print its result line (plus the per-run common measures)."""
    res = worker(json.loads(spec_json))
    res["peak_memory_mb"] = peak_rss_mib()  # same measure on every side: this process's peak RSS
    res["tokens_per_second"] = res["real_tokens"] / res["train_seconds"]
    res["padding_factor"] = res["padded_tokens"] / max(1, res["real_tokens"])
    res["tokens_per_cpu_second"] = res["real_tokens"] / max(1e-9, res["loop_cpu_seconds"])
    print(RESULT_PREFIX + json.dumps(res), flush=True)


def launch(script: str | Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Parent side: run ``script --worker SPEC`` in a fresh process with ``spec['threads']`` threads."""
    threads = str(spec["threads"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"worker failed: {spec['method']} / {spec['framework']} (exit {proc.returncode})")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)][-1]
    res = json.loads(line[len(RESULT_PREFIX):])
    res["process_seconds"] = time.perf_counter() - started
    res["load_1min_before"], res["load_1min_after"] = load_before, os.getloadavg()[0]
    return res


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (an interrupted benchmark never leaves half a file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarise(runs: list[dict[str, Any]], methods: list[str], frameworks: tuple[str, ...],
              quality: str) -> list[dict[str, Any]]:
    """Median (and min-max) of each (method, framework) over its repeats; ``quality`` names the per-run
    quality metric (e.g. ``test_accuracy``). Adds tuneforge's speed-up over every row."""
    rows = []
    for method in methods:
        for fw in frameworks:
            rs = [r for r in runs if r["method"] == method and r["framework"] == fw]
            if not rs:
                continue
            row = {"method": method, "framework": fw, "repeats": len(rs),
                   "max_load": max(max(r["load_1min_before"], r["load_1min_after"]) for r in rs),
                   "trainable_parameters": rs[0]["trainable_parameters"]}
            for key in ("tokens_per_second", quality):
                row[key] = median([r[key] for r in rs])
                row[key + "_range"] = [min(r[key] for r in rs), max(r[key] for r in rs)]
            for key in ("train_seconds", "peak_memory_mb", "padding_factor", "tokens_per_cpu_second", "real_tokens"):
                row[key] = median([r[key] for r in rs])
            rows.append(row)
    for row in rows:
        tf = next(r for r in rows if r["method"] == row["method"] and r["framework"] == "tuneforge")
        row["tuneforge_speedup"] = tf["tokens_per_second"] / row["tokens_per_second"]
        row["tuneforge_cpu_speedup"] = tf["tokens_per_cpu_second"] / row["tokens_per_cpu_second"]
    return rows


def environment() -> dict[str, Any]:
    """Machine and package versions for the results file."""
    import accelerate
    import peft
    import torch
    import transformers
    cpu = platform.processor() or platform.machine()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__,
            "bf16_cpu": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def run_interleaved(script: str | Path, settings: dict[str, Any], methods: list[str], frameworks: tuple[str, ...],
                    data: dict[str, Any], out: Path, quality: str) -> list[dict[str, Any]]:
    """Every (repeat, method, framework) in a fresh worker, repeats interleaved so machine drift spreads over
    all configurations; repeat i trains with seed + i. The raw runs are written to ``out``'s JSON after each
    run, so an interrupted invocation keeps what it measured."""
    runs: list[dict[str, Any]] = []
    total = settings["repeats"] * len(methods) * len(frameworks)
    print(f"{total} runs: {methods} × {list(frameworks)} × {settings['repeats']} repeats, "
          f"{settings['n_train']} train examples", file=sys.stderr)
    for rep in range(settings["repeats"]):
        for method in methods:
            for fw in frameworks:
                spec = {**settings, **data, "method": method, "framework": fw, "repeat": rep,
                        "seed": settings["seed"] + rep, "lr": settings[f"lr_{method}"]}
                res = launch(script, spec)
                res.update(method=method, framework=fw, repeat=rep)
                runs.append(res)
                print(f"[{len(runs)}/{total}] {method:4s} {fw:16s} {res['tokens_per_second']:8.0f} tok/s "
                      f"{res['train_seconds']:7.1f} s {res['peak_memory_mb']:6.0f} MiB  {quality} {res[quality]:.4f}  "
                      f"pad {res['padding_factor']:.2f}  autocast {res['autocast_dtype']}  "
                      f"({res['process_seconds']:.0f} s process)", file=sys.stderr, flush=True)
                write_json(out.with_suffix(".json"), {"complete": False, "settings": settings, "runs": runs})
    return runs


def comparison_table(rows: list[dict[str, Any]], labels: dict[str, str], quality: str, quality_name: str,
                     fmt: str, lower_is_better: bool) -> list[str]:
    """Markdown table of ``summarise`` rows, then one verdict line per method against the issue's target
    (≥ 1.5× Trainer + PEFT's real tokens/s at equal or better ``quality``)."""
    lines = [f"| method | framework | real tokens/s (median, min–max) | train s | peak MiB | {quality_name} (median, "
             "min–max) | tuneforge tokens/s ÷ this row | padded/real tokens | real tokens per CPU-s | trainable params "
             "| max load |", "|" + "---|" * 11]
    for r in rows:
        lo, hi = r["tokens_per_second_range"]
        qlo, qhi = r[quality + "_range"]
        lines.append(
            f"| {r['method']} | {labels[r['framework']]} | {r['tokens_per_second']:,.0f} ({lo:,.0f}–{hi:,.0f}) "
            f"| {r['train_seconds']:.1f} | {r['peak_memory_mb']:,.0f} | {r[quality]:{fmt}} ({qlo:{fmt}}–{qhi:{fmt}}) "
            f"| {'—' if r['framework'] == 'tuneforge' else format(r['tuneforge_speedup'], '.2f') + '×'} "
            f"| {r['padding_factor']:.2f} | {r['tokens_per_cpu_second']:,.0f} | {r['trainable_parameters']:,} "
            f"| {r['max_load']:.1f} |")
    lines.append("")
    for method in dict.fromkeys(r["method"] for r in rows):
        tf = next(r for r in rows if r["method"] == method and r["framework"] == "tuneforge")
        hf = next((r for r in rows if r["method"] == method and r["framework"] == "trainer"), None)
        if hf is None:
            continue
        as_good = tf[quality] <= hf[quality] if lower_is_better else tf[quality] >= hf[quality]
        ok = hf["tuneforge_speedup"] >= 1.5 and as_good
        lines.append(
            f"- **{method}**: tuneforge {hf['tuneforge_speedup']:.2f}× the real tokens/s of Trainer + PEFT "
            f"(default random batches); {quality_name} {tf[quality]:{fmt}} vs {hf[quality]:{fmt}} "
            f"→ target (≥ 1.5× at equal or better {quality_name}) **{'met' if ok else 'not met'}** "
            f"(per CPU-second of the loop: {hf['tuneforge_cpu_speedup']:.2f}×).")
    return lines


def comparison_parser(doc: str, defaults: dict[str, Any], quick_examples: int, examples_help: str,
                      output: Path) -> Any:
    """The flags both Trainer comparisons take; callers add their own before parsing."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="lora,full", help="comma-separated: lora, full (default: lora,full)")
    p.add_argument("--repeats", type=int, help="runs per configuration, interleaved (default 3)")
    p.add_argument("--train-examples", type=int, help=examples_help)
    p.add_argument("--seed", type=int, default=defaults["seed"],
                   help=f"training seed of the first repeat; repeat i uses seed + i on every side (default {defaults['seed']})")
    p.add_argument("--epochs", type=float, help=f"default {defaults['epochs']:g}")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"], help=f"default {defaults['batch_size']}")
    p.add_argument("--lr-lora", type=float, default=defaults["lr_lora"], help=f"default {defaults['lr_lora']:g}")
    p.add_argument("--lr-full", type=float, default=defaults["lr_full"], help=f"default {defaults['lr_full']:g}")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads on every side (default 2)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {quick_examples} train examples, 1 epoch, 1 repeat (explicit flags still win)")
    p.add_argument("--output", default=str(output), help="markdown output (JSON beside it)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def comparison_settings(a: Any, defaults: dict[str, Any], quick_examples: int) -> tuple[dict[str, Any], list[str]]:
    """(settings, methods) from parsed ``comparison_parser`` flags; ``--quick`` fills what was not given."""
    quick = {"train_examples": quick_examples, "epochs": 1.0, "repeats": 1} if a.quick else {}
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ("lora", "full")]
    if bad:
        raise SystemExit(f"--methods: unknown method '{bad[0]}'; choose from lora, full")
    settings = {**defaults, "repeats": a.repeats or quick.get("repeats", 3), "threads": a.threads, "seed": a.seed,
                "epochs": a.epochs or quick.get("epochs", defaults["epochs"]), "batch_size": a.batch_size,
                "lr_lora": a.lr_lora, "lr_full": a.lr_full,
                "train_examples": a.train_examples if a.train_examples is not None
                else quick.get("train_examples", defaults["train_examples"])}
    return settings, methods


def run_tuneforge(config: dict[str, Any], threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Worker side: one ``tuneforge.run.train`` in a temporary run directory -> (the common measures, the
    run's metrics.json content)."""
    import tempfile

    import torch
    from tuneforge.run import train

    torch.set_num_threads(threads)
    clock = clock_tuneforge_fit()
    probe = FirstLinearDtype()
    with tempfile.TemporaryDirectory(prefix="bench-tf-") as out:
        m = train({**config, "output_dir": out}, overwrite=True, progress=False).metrics
    return {
        "loop_cpu_seconds": clock["cpu"], "fit_wall_seconds": clock["wall"], "threads_in_loop": clock["threads"],
        "train_seconds": m["train_seconds"],  # tuneforge's own: the loop only (no setup, no evaluation)
        "real_tokens": m["real_tokens"], "padded_tokens": m["padded_tokens"], "steps": m["steps"],
        "trainable_parameters": m["parameters"]["trainable"], "tuneforge_peak_memory_mb": m["peak_memory_mb"],
        "autocast_dtype": probe.dtype, "precision": m["precision"],
    }, m


def dispatch_worker(spec_json: str, tuneforge_side: Callable[[dict[str, Any]], dict[str, Any]],
                    trainer_side: Callable[..., dict[str, Any]]) -> None:
    """Worker side of both Trainer comparisons: tuneforge, Trainer, or Trainer with group_by_length."""
    worker_main(spec_json, lambda spec: tuneforge_side(spec) if spec["framework"] == "tuneforge"
                else trainer_side(spec, grouped=spec["framework"] == "trainer_grouped"))


def write_results(out: Path, text: str, payload: dict[str, Any]) -> None:
    """Print the markdown, write it to ``out`` and the complete JSON beside it."""
    print(text)
    out.write_text(text)
    write_json(out.with_suffix(".json"), {"complete": True, **payload})
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
