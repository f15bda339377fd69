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
    every training-mode forward: the batches the model actually saw."""
    counts = {"real": 0, "padded": 0, "forwards": 0}

    def hook(module: Any, fargs: Any, kwargs: dict[str, Any]) -> None:
        if module.training and kwargs.get("attention_mask") is not None:
            mask = kwargs["attention_mask"]
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
