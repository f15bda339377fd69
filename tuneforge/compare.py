"""Many methods on one task, side by side: quality, trainable share, time, speed, memory and forgetting.

    from tuneforge.compare import compare
    rows = compare(["lora", "prompt", "full"], overrides=["train.epochs=1"], out_dir="cmp")

Each method trains with its own defaults: only ``method.name`` changes (options under ``method`` in the base
config or overrides apply to the method they name, default lora). The learning rate is the method's own
default unless ``train.lr`` is set. Runs go to ``OUT_DIR/runs/<method>``; ``OUT_DIR`` receives
``comparison.md``, ``comparison.csv`` and PNG plots. Calling again skips finished methods, resumes
interrupted ones from their checkpoint and restarts the rest. Each run is a separate process by default, so
that its peak memory is its own.
"""
from __future__ import annotations

import codecs
import csv
import json
import math
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from tuneforge import checkpoint, tasks
from tuneforge.config import ConfigError, RunConfig, load_config, merge_dicts, parse_overrides
from tuneforge.methods import registry

PLOTS = ("quality_vs_trainable_pct.png", "quality_vs_train_time.png", "forgetting.png", "peak_memory.png")


def compare(methods: Sequence[str] | str | None, config: str | Path | dict[str, Any] | None = None,
            overrides: Sequence[str] = (), out_dir: str | Path = "comparison", progress: bool = True,
            in_process: bool = False, overwrite: bool = False) -> list[dict[str, Any]]:
    """Train each of ``methods`` (a list, a comma-separated string, or None for all registered methods) on the
    task of ``config`` + ``overrides``; write the table and plots into ``out_dir`` and return one row per
    method (see :func:`row_from_metrics`). ``overwrite`` retrains every method; otherwise finished runs are
    reused and interrupted ones resumed. A method that fails with a :class:`ConfigError` (or, in a
    subprocess, fails at all) is recorded as failed and the others go on."""
    names = _method_list(methods)
    base = _base_config(config, list(overrides))
    task = tasks.get(base.model.task)
    out = Path(out_dir)
    if not overwrite:  # before any training: a changed config must not be mixed into an old comparison
        for name in names:
            _check_same_config(out / "runs" / name, method_config(base, name, out / "runs" / name))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(names, desc="compare", unit="method", disable=not progress)
    for name in bar:
        bar.set_description(f"compare: {name}")
        rows.append(_run_method(name, base, out, task, progress, in_process, overwrite))
    bar.close()
    write_outputs(rows, task, out, base, in_process)
    return rows


def _method_list(methods: Sequence[str] | str | None) -> list[str]:
    """Method names from a list or a comma-separated string (None: all); unknown names fail before training."""
    if methods is None:
        return registry.names()
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names = list(dict.fromkeys(m.strip() for m in items if m.strip()))
    if not names:
        raise ConfigError(f"compare needs at least one method; choose from {', '.join(registry.names())}")
    unknown = [m for m in names if m not in registry.names()]
    if unknown:
        raise ConfigError(f"--methods: unknown method '{unknown[0]}'; choose from {', '.join(registry.names())}")
    return names


def _base_config(config: str | Path | dict[str, Any] | None, overrides: list[str]) -> RunConfig:
    """The shared config, validated once up front (a bad key fails before the first run)."""
    if isinstance(config, dict):
        return load_config(None, merge_dicts(config, parse_overrides(overrides)))
    return load_config(config, overrides)


def method_config(base: RunConfig, name: str, run_dir: Path) -> dict[str, Any]:
    """The base config with ``method.name`` set (keeping the base's options only for its own method)."""
    data = base.to_dict()
    if data["method"].get("name") != name:
        data["method"] = {"name": name}
    data["output_dir"] = str(run_dir)
    return data


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def _check_same_config(run_dir: Path, wanted: dict[str, Any]) -> None:
    """Refuse to reuse or resume a run that was started with another config (it would mix settings)."""
    from tuneforge.run import resolve_config

    kept = [run_dir / f for f in ("metrics.json", checkpoint.RESUME)]
    if not (run_dir / "config.yaml").is_file() or not any(f.is_file() for f in kept):
        return  # nothing to reuse or resume: the run restarts

    stored = resolve_config(checkpoint.stored_config(run_dir)).to_dict()
    want = resolve_config(wanted).to_dict()
    diff = _differences({**stored, "output_dir": None}, {**want, "output_dir": None})
    if diff:
        raise ConfigError(f"{run_dir} was trained with another config ({diff[0]}); use another output folder "
                          "or --overwrite to retrain")


def _run_method(name: str, base: RunConfig, out: Path, task: Any, progress: bool, in_process: bool,
                overwrite: bool) -> dict[str, Any]:
    """Reuse, resume, or (re)start one method's run; returns its row."""
    run_dir = out / "runs" / name
    wanted = method_config(base, name, run_dir)
    done, resumable = (run_dir / "metrics.json").is_file(), (run_dir / checkpoint.RESUME).is_file()
    if done and not overwrite:
        row = row_from_metrics(name, json.loads((run_dir / "metrics.json").read_text()), task, run_dir)
        return {**row, "reused": True}
    resume = run_dir if resumable and not overwrite else None
    restart = run_dir.exists() and resume is None
    try:
        if in_process:
            from tuneforge import run as run_module
            if resume is not None:
                metrics = run_module.train({}, resume=resume, progress=progress).metrics
            else:
                metrics = run_module.train(wanted, overwrite=restart, progress=progress).metrics
        else:
            metrics = _train_subprocess(name, wanted, out, resume, restart, progress)
    except ConfigError as exc:
        return failed_row(name, task, run_dir, str(exc))
    return row_from_metrics(name, metrics, task, run_dir)


def _train_subprocess(name: str, wanted: dict[str, Any], out: Path, resume: Path | None, restart: bool,
                      progress: bool) -> dict[str, Any]:
    """``python -m tuneforge.cli train`` in a child process (its own peak memory); reads metrics.json."""
    if resume is not None:
        args = ["train", "--resume", str(resume)]
    else:
        cfg_file = out / "configs" / f"{name}.yaml"
        cfg_file.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_text(cfg_file, yaml.safe_dump(wanted, sort_keys=False))
        args = ["train", "-c", str(cfg_file)] + (["--overwrite"] if restart else [])
    code, tail = _stream([sys.executable, "-m", "tuneforge.cli", *args] + ([] if progress else ["-q"]), progress)
    metrics_file = Path(wanted["output_dir"]) / "metrics.json"
    if code == 0 and metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    lines = [line.strip() for line in re.split(r"[\r\n]+", tail) if line.strip()]
    errors = [line for line in lines if line.startswith("tuneforge: error: ")]
    if errors:
        raise ConfigError(errors[-1][len("tuneforge: error: "):])
    raise ConfigError(f"training process exited with code {code}" + (f": {lines[-1]}" if lines else ""))


def _stream(cmd: list[str], echo: bool) -> tuple[int, str]:
    """Run ``cmd``; pass its stderr (progress bars, errors) through when ``echo``; return (exit code, stderr tail)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    decoder, tail = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
    try:
        assert proc.stderr is not None
        while chunk := proc.stderr.read1(4096):
            text = decoder.decode(chunk)
            if echo:
                sys.stderr.write(text)
                sys.stderr.flush()
            tail = (tail + text)[-8192:]
        return proc.wait(), tail
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def row_from_metrics(name: str, metrics: dict[str, Any], task: Any, run_dir: Path) -> dict[str, Any]:
    """One table row: ``<metric>_before``/``_after`` for the task's table metrics, cost figures, forgetting."""
    before, after = metrics.get("test_before") or {}, metrics.get("test_after") or {}
    params = metrics.get("parameters") or {}
    forgetting = metrics.get("forgetting")
    row: dict[str, Any] = {"method": name, "status": "ok", "error": None, "run_dir": str(run_dir), "reused": False}
    for m in task.table_metrics:
        row[f"{m}_before"], row[f"{m}_after"] = before.get(m), after.get(m)
    row.update({"trainable_params": params.get("trainable"), "total_params": params.get("total"),
                "trainable_pct": params.get("trainable_pct"), "train_seconds": metrics.get("train_seconds"),
                "tokens_per_second": metrics.get("tokens_per_second"), "peak_memory_mb": metrics.get("peak_memory_mb"),
                "forgetting_change": forgetting.get("change") if isinstance(forgetting, dict) else None})
    return row


def failed_row(name: str, task: Any, run_dir: Path, reason: str) -> dict[str, Any]:
    """A row for a method that could not run: no figures, the one-line reason."""
    row = row_from_metrics(name, {}, task, run_dir)
    return {**row, "status": "failed", "error": reason.splitlines()[0] if reason else "failed"}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]], task: Any) -> str:
    """The comparison as a markdown table (``-`` where a figure is absent)."""
    head = ["method"] + [f"{m} {w}" for m in task.table_metrics for w in ("before", "after")]
    head += ["trainable params", "trainable %", "train s", "real tokens/s", "peak MiB", "forgetting", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"]] + [_fmt(r[f"{m}_{w}"]) for m in task.table_metrics for w in ("before", "after")]
        cells += [_fmt(r["trainable_params"]), _num(r["trainable_pct"], ".3f"), _num(r["train_seconds"], ".1f"),
                  _num(r["tokens_per_second"], ",.0f"), _num(r["peak_memory_mb"], ",.0f"), _fmt(r["forgetting_change"]),
                  "ok" if r["status"] == "ok" else f"failed: {r['error']}"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def write_outputs(rows: list[dict[str, Any]], task: Any, out: Path, base: RunConfig, in_process: bool) -> None:
    """comparison.csv, comparison.md and the PNG plots."""
    with open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    notes = plot_comparison(rows, task, out)
    if in_process:
        notes.append("All runs shared one process: peak memory is that process's running maximum, not each "
                     "method's own (the default subprocess mode measures each run alone).")
    reused = [r["method"] for r in rows if r.get("reused")]
    if reused:
        notes.append(f"Reused from an earlier call (timings from another sitting may differ): {', '.join(reused)}.")
    title = f"# {task.name}: {len(rows)} methods on {base.model.name} ({base.data.dataset})"
    text = f"{title}\n\n{markdown_table(rows, task)}\n" + "".join(f"\n- {n}" for n in notes)
    checkpoint.atomic_write_text(out / "comparison.md", text + ("\n" if notes else ""))


def plot_comparison(rows: list[dict[str, Any]], task: Any, out: Path) -> list[str]:
    """Quality vs trainable % (log x) and vs train time, forgetting and peak memory per method; returns notes
    on plots that were skipped."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in PLOTS:  # no stale plot from an earlier call
        (out / name).unlink(missing_ok=True)
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return ["No method finished: no plots."]
    quality = f"test {task.metric} after ({'higher' if task.greater_is_better else 'lower'} is better)"
    notes = []

    def scatter(x_key: str, xlabel: str, path: str, log: bool) -> None:  # one labelled point per method
        pts = [(r[x_key], r[f"{task.metric}_after"], r["method"]) for r in ok
               if r[x_key] is not None and r[f"{task.metric}_after"] is not None and (r[x_key] > 0 or not log)]
        fig, ax = plt.subplots(figsize=(6, 4))
        for x, y, label in pts:
            ax.scatter(x, y)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if log and pts:
            log_axis(ax, [p[0] for p in pts])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(quality)
        ax.set_title(f"{task.name}: {task.metric} vs {xlabel}")
        fig.tight_layout()
        fig.savefig(out / path, dpi=100)
        plt.close(fig)

    def bars(key: str, ylabel: str, path: str) -> None:
        pts = [(r["method"], r[key]) for r in ok if r[key] is not None]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.bar([p[0] for p in pts], [p[1] for p in pts])
        ax.set_ylabel(ylabel)
        ax.set_title(f"{task.name}: {ylabel} per method")
        ax.tick_params(axis="x", labelrotation=30)
        fig.tight_layout()
        fig.savefig(out / path, dpi=100)
        plt.close(fig)

    scatter("trainable_pct", "trainable parameters (%)", PLOTS[0], log=True)
    scatter("train_seconds", "train seconds", PLOTS[1], log=False)
    if any(r["forgetting_change"] is not None for r in ok):
        bars("forgetting_change", "forgetting (change on the earlier task)", PLOTS[2])
    else:
        notes.append("No run measured forgetting (metrics.json has no `forgetting`): no forgetting plot.")
    bars("peak_memory_mb", "peak memory (MiB)", PLOTS[3])
    return notes


def log_axis(ax: Any, xs: list[float]) -> None:
    """A log x axis labelled only at powers of ten, as plain numbers (0.01, 0.1, 1, 10, 100), and spanning
    at least the decades around ``xs`` so two labels always show; minor ticks stay unlabelled (matplotlib
    labels them on short spans, where their labels overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    first, last = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    lo, hi = ax.get_xlim()
    ax.set_xlim(min(lo, 10.0 ** first), max(hi, 10.0 ** max(last, first + 1)))
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
