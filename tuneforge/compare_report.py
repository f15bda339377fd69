"""What :func:`tuneforge.compare.compare` writes: one row per method (quality before/after, trainable share,
time, speed, peak memory, forgetting), ``comparison.csv``, ``comparison.md`` and the PNG plots."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from tuneforge import checkpoint
from tuneforge.config import RunConfig

PLOTS = ("quality_vs_trainable_pct.png", "quality_vs_train_time.png", "forgetting.png", "peak_memory.png")


def row_from_metrics(name: str, metrics: dict[str, Any], task: Any, run_dir: Path) -> dict[str, Any]:
    """One table row: ``<metric>_before``/``_after`` for the task's table metrics, cost figures, forgetting."""
    before, after = metrics.get("test_before") or {}, metrics.get("test_after") or {}
    params = metrics.get("parameters") or {}
    forgetting = metrics.get("forgetting") if isinstance(metrics.get("forgetting"), dict) else {}
    row: dict[str, Any] = {"method": name, "status": "ok", "error": None, "run_dir": str(run_dir), "reused": False}
    for m in task.table_metrics:
        row[f"{m}_before"], row[f"{m}_after"] = before.get(m), after.get(m)
    row.update({"trainable_params": params.get("trainable"), "total_params": params.get("total"),
                "trainable_pct": params.get("trainable_pct"), "train_seconds": metrics.get("train_seconds"),
                "tokens_per_second": metrics.get("tokens_per_second"), "peak_memory_mb": metrics.get("peak_memory_mb"),
                "forgotten": forgetting.get("forgotten"), "forgotten_unit": forgetting.get("unit"),
                "forgetting_probe": forgetting.get("reference")})
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


def _probe(rows: list[dict[str, Any]]) -> str:
    """What the forgetting column measures: the runs' first probe (they share a config), and its sign."""
    name = next((r["forgetting_probe"] for r in rows if r.get("forgetting_probe")), None)
    return f"{name}; positive: worse after training" if name else "no probe"


def _forgotten(row: dict[str, Any]) -> str:
    """How much worse the first probe got: ``+2.10 %`` of perplexity, ``+3.00 points`` of accuracy, ``-`` if not
    measured."""
    return "-" if row["forgotten"] is None else f"{row['forgotten']:+.2f} {row['forgotten_unit']}"


def markdown_table(rows: list[dict[str, Any]], task: Any) -> str:
    """The comparison as a markdown table (``-`` where a figure is absent)."""
    head = ["method"] + [f"{m} {w}" for m in task.table_metrics for w in ("before", "after")]
    head += ["trainable params", "trainable %", "train s", "real tokens/s", "peak MiB", f"forgotten ({_probe(rows)})",
             "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"]] + [_fmt(r[f"{m}_{w}"]) for m in task.table_metrics for w in ("before", "after")]
        cells += [_fmt(r["trainable_params"]), _num(r["trainable_pct"], ".3f"), _num(r["train_seconds"], ".1f"),
                  _num(r["tokens_per_second"], ",.0f"), _num(r["peak_memory_mb"], ",.0f"), _forgotten(r),
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
    title = f"# {task.name}: {len(rows)} methods on {base.model.name} ({base.data.source})"
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
        ax.set_title(f"{task.name}, per method")  # the y label says what (a long title is cut)
        ax.tick_params(axis="x", labelrotation=30)
        fig.tight_layout()
        fig.savefig(out / path, dpi=100)
        plt.close(fig)

    scatter("trainable_pct", "trainable parameters (%)", PLOTS[0], log=True)
    scatter("train_seconds", "train seconds", PLOTS[1], log=False)
    if any(r["forgotten"] is not None for r in ok):
        unit = next(r["forgotten_unit"] for r in ok if r["forgotten"] is not None)
        bars("forgotten", f"forgotten ({'% perplexity' if unit == '%' else 'points'}, higher: worse)", PLOTS[2])
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
