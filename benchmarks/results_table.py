"""The results table of the tuneforge-vs-Trainer benchmarks: medians per row, achieved FLOP/s and MFU, and the
verdict (met / not met) on every target of the "Faster per real token" issue; the machine line."""
from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

# The targets: tuneforge's real tokens/s over the fastest Trainer (+ PEFT) row, at equal or better quality
# (worse by no more than either side's seed-to-seed spread counts as equal: quality_holds); peak memory no
# higher than any Trainer row's; medians of at least MIN_REPEATS interleaved repeats.
SPEED_TARGETS = {"lora": 1.5, "full": 1.3}
MIN_REPEATS = 3
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarise(runs: list[dict[str, Any]], methods: list[str], frameworks: tuple[str, ...], quality: str,
              flops_per_token: dict[str, float], rates: dict[str, dict[str, float]], precision: str
              ) -> list[dict[str, Any]]:
    """Median (and min-max) of each (method, framework) over its repeats; ``quality`` names the per-run
    quality metric (e.g. ``test_accuracy``). Adds tuneforge's speed-up over every row and, per row, achieved
    FLOP/s (``flops_per_token[method]`` x median tokens/s) and MFU against the matmul rate of the run's
    precision and against the bf16 rate."""
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
            gpu = [r["peak_gpu_memory_mb"] for r in rs if r.get("peak_gpu_memory_mb") is not None]
            row["peak_gpu_memory_mb"] = median(gpu) if gpu else None
            row["achieved_flops"] = flops_per_token[method] * row["tokens_per_second"]
            row["mfu"] = row["achieved_flops"] / rates[DTYPES[precision]]["flops"]
            row["mfu_vs_bf16"] = row["achieved_flops"] / rates["bfloat16"]["flops"]
            row["mfu_vs_fp32"] = row["achieved_flops"] / rates["float32"]["flops"] if "float32" in rates else None
            rows.append(row)
    for row in rows:
        tf = next(r for r in rows if r["method"] == row["method"] and r["framework"] == "tuneforge")
        row["tuneforge_speedup"] = tf["tokens_per_second"] / row["tokens_per_second"]
        row["tuneforge_cpu_speedup"] = tf["tokens_per_cpu_second"] / row["tokens_per_cpu_second"]
    return rows


def quality_holds(tf: dict[str, Any], hf: dict[str, Any], quality: str, lower_is_better: bool, fmt: str
                  ) -> tuple[bool, str]:
    """(is tuneforge's median quality equal or better, and how it reads): better, or worse by no more than the
    spread (max - min) of either side's repeats, where seed-to-seed noise alone moves a median of 3 that far;
    worse by more than that is worse."""
    gap = (tf[quality] - hf[quality]) * (1 if lower_is_better else -1)  # > 0: tuneforge's is worse
    spread = max(r[quality + "_range"][1] - r[quality + "_range"][0] for r in (tf, hf))
    if gap <= 0:
        return True, "better" if gap < 0 else "equal"
    if gap <= spread:
        return True, f"worse by {gap:{fmt}}, within the repeats' spread of {spread:{fmt}}: equal within noise"
    return False, f"worse by {gap:{fmt}}, beyond the repeats' spread of {spread:{fmt}}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def comparison_table(rows: list[dict[str, Any]], labels: dict[str, str], quality: str, quality_name: str,
                     fmt: str, lower_is_better: bool, settings: dict[str, Any], rates: dict[str, dict[str, float]],
                     best: str, mfu_targets: dict[str, float] | None = None) -> list[str]:
    """Markdown table of ``summarise`` rows, then the verdict (met / not met) on every target of the issue:
    speed over the fastest Trainer row that ran (``SPEED_TARGETS``, at equal or better ``quality``; ``best``, the
    issue's best-configured row, is named where it did not run), peak memory (RSS, and on CUDA GPU memory too)
    no higher than any Trainer row's, MFU (``mfu_targets`` per method, against the rate of the run's
    precision), and medians of at least ``MIN_REPEATS`` interleaved repeats."""
    precision = settings["precision"]
    bf16_native = rates.get("bfloat16", {}).get("native", True)
    cuda = settings.get("device") == "cuda"
    mem = "peak RSS MiB / GPU MiB" if cuda else "peak RSS MiB"
    other = "fp32" if precision == "bf16" else "bf16"  # the second MFU column: the other precision's rate
    lines = [f"| method | framework | real tokens/s (median, min–max) | train s | {mem} | {quality_name} (median, "
             "min–max) | tuneforge tokens/s ÷ this row | padded/real tokens | train GFLOP/s | MFU "
             f"({precision} rate) | MFU ({other} rate) | real tokens per CPU-s | trainable params | max load |",
             "|" + "---|" * 14]
    for r in rows:
        lo, hi = r["tokens_per_second_range"]
        qlo, qhi = r[quality + "_range"]
        memory = f"{r['peak_memory_mb']:,.0f}" + (f" / {r['peak_gpu_memory_mb']:,.0f}" if cuda else "")
        vs_bf16 = _pct(r["mfu_vs_bf16"]) if bf16_native else "— (bf16 emulated)"
        if other == "fp32":
            vs_bf16 = _pct(r["mfu_vs_fp32"]) if r.get("mfu_vs_fp32") is not None else "—"
        lines.append(
            f"| {r['method']} | {labels[r['framework']]} | {r['tokens_per_second']:,.0f} ({lo:,.0f}–{hi:,.0f}) "
            f"| {r['train_seconds']:.1f} | {memory} | {r[quality]:{fmt}} ({qlo:{fmt}}–{qhi:{fmt}}) "
            f"| {'—' if r['framework'] == 'tuneforge' else format(r['tuneforge_speedup'], '.2f') + '×'} "
            f"| {r['padding_factor']:.2f} | {r['achieved_flops'] / 1e9:,.1f} | {_pct(r['mfu'])} | {vs_bf16} "
            f"| {r['tokens_per_cpu_second']:,.0f} | {r['trainable_parameters']:,} | {r['max_load']:.1f} |")
    lines += ["", "**Targets** (each stated against this invocation's own rows):", ""]
    verdict = (lambda ok: "**met**" if ok else "**not met**")
    for method in dict.fromkeys(r["method"] for r in rows):
        tf = next(r for r in rows if r["method"] == method and r["framework"] == "tuneforge")
        trainers = [r for r in rows if r["method"] == method and r["framework"] != "tuneforge"]
        if trainers:  # the reference: the fastest Trainer row that ran, whichever configuration it is
            hf = max(trainers, key=lambda r: r["tokens_per_second"])
            as_good, how = quality_holds(tf, hf, quality, lower_is_better, fmt)
            target = SPEED_TARGETS[method]
            lines.append(
                f"- {method}, speed: tuneforge {hf['tuneforge_speedup']:.2f}× the real tokens/s of the fastest "
                f"Trainer + PEFT row ({labels[hf['framework']]}); {quality_name} {tf[quality]:{fmt}} vs "
                f"{hf[quality]:{fmt}} ({how}) → target ≥ {target}× at equal or better {quality_name}: "
                f"{verdict(hf['tuneforge_speedup'] >= target and as_good)}"
                f"{'' if as_good else ' (quality worse)'} (per CPU-second of the loop: "
                f"{hf['tuneforge_cpu_speedup']:.2f}×).")
            others = ", ".join(f"{labels[r['framework']]}: {r['tuneforge_speedup']:.2f}×"
                               for r in trainers if r is not hf)
            if others:
                lines.append(f"  (against the other Trainer rows: {others}.)")
            ran = [r["framework"] for r in trainers]
            missing = [labels[f] for f in dict.fromkeys(("trainer", best)) if f not in ran]  # e.g. --no-default-trainer
            keys = ["peak_memory_mb"] + (["peak_gpu_memory_mb"] if cuda else [])
            for key in keys:
                worst = min(trainers, key=lambda r: r[key])
                what = "GPU memory" if key == "peak_gpu_memory_mb" else "RSS"
                lines.append(
                    f"- {method}, memory: tuneforge peak {what} {tf[key]:,.0f} MiB vs the lowest Trainer row's "
                    f"{worst[key]:,.0f} MiB ({labels[worst['framework']]}) → target no higher than Trainer's in any "
                    f"row: {verdict(tf[key] <= worst[key])}"
                    + (f" (of the rows that ran; not run: {', '.join(missing)})" if missing else "") + ".")
        if mfu_targets and method in mfu_targets:
            lines.append(
                f"- {method}, MFU: tuneforge {_pct(tf['mfu'])} of the measured {precision} matmul rate ("
                + (f"{_pct(tf['mfu_vs_bf16'])} of the bf16 rate" if bf16_native else
                   "no native bf16 here, so no bf16 MFU") + ") → target "
                f"≥ {_pct(mfu_targets[method])} (against the rate of the precision the run uses): "
                f"{verdict(tf['mfu'] >= mfu_targets[method])}.")
    repeats = min(r["repeats"] for r in rows)
    lines.append(f"- method: medians of {repeats} interleaved repeat(s) per row → target ≥ {MIN_REPEATS}: "
                 f"{verdict(repeats >= MIN_REPEATS)}"
                 f"{'' if repeats >= MIN_REPEATS else ' (a smoke test: no verdict above is a measurement)'}.")
    return lines


def flops_text(flops: dict[str, Any], rates: dict[str, dict[str, float]], precision: str, probes: int) -> list[str]:
    """The FLOP-counting and matmul-rate paragraph of a results file."""
    from flops import CONVENTION

    methods = [m for m in ("lora", "full") if m in flops]
    per_token = "; ".join(
        f"{m}: {flops[m]['per_token'] / 1e6:,.1f} MFLOP per real token (blocks {_pct(flops[m]['share_blocks'])}, "
        f"head {_pct(flops[m]['share_head'])}, attention {_pct(flops[m]['share_attention'])}"
        + (f", adapters {_pct(flops[m]['share_adapters'])}" if m == "lora" else "") + ")" for m in methods)
    any_m = flops[methods[0]]
    rate = "; ".join(f"{name} {r['flops'] / 1e9:,.1f} GFLOP/s (probes {r['min'] / 1e9:,.1f}–{r['max'] / 1e9:,.1f}, "
                     f"{r.get('size', 2048)}² products, {'native' if r.get('native', True) else 'emulated: no native bf16'})"
                     for name, r in rates.items())
    return [
        f"**FLOPs and MFU.** {CONVENTION}. Here: {per_token}; mean example length {any_m['mean_length']:.1f} tokens, "
        f"attention seq (token-weighted) {any_m['attention_seq']:.1f}, head positions per real token "
        f"{any_m['head_positions_per_token']:.3f}. train GFLOP/s = that × the row's median real tokens/s. "
        f"Matmul rate measured by this invocation ({probes} probes: before the first run and after each round of "
        f"repeats, torch.mm of 2048×2048 matrices, median of 5 per probe, in a fresh process with the runs' "
        f"thread count; MFU divides by the highest probe): {rate}. MFU ({precision} rate) divides by the rate of the precision these runs use "
        f"({precision}, the same on every side); MFU ({'fp32' if precision == 'bf16' else 'bf16'} rate) divides by the "
        f"{'float32' if precision == 'bf16' else 'bf16'} rate."]


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
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__,
            "bf16_cpu": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "gpu": gpu,
            "gpus": torch.cuda.device_count() if gpu else 0}


def machine_line(env: dict[str, Any]) -> str:
    gpu = f", GPU {env['gpu']} ×{env['gpus']}" if env.get("gpu") else ""
    return (f"Machine: {env['cpu']}, {env['cores']} cores (native bf16: {'yes' if env['bf16_cpu'] else 'no'}){gpu}; "
            f"python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
            f"accelerate {env['accelerate']}. Benchmark wall time {env['wall_seconds'] / 60:.1f} min. "
            f"Command: `{env['command']}`.")
