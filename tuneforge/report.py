"""Human-readable result tables."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def result_table(metrics: dict[str, Any], task_metrics: Sequence[str]) -> str:
    """Markdown table: test metrics before/after training, then cost figures."""
    before, after = metrics.get("test_before") or {}, metrics.get("test_after") or {}
    p = metrics["parameters"]
    rows = [("metric", "before", "after"), ("---", "---", "---")]
    for name in task_metrics:
        if name in before or name in after:
            rows.append((f"test {name}", _fmt(before.get(name)), _fmt(after.get(name))))
    f = metrics.get("forgetting") or {}
    if f:
        rows.append((f"forgetting: {f['reference']}", _fmt(f["before"]), _fmt(f["after"])))
    rows += [
        ("trainable parameters", "", f"{p['trainable']:,} / {p['total']:,} ({p['trainable_pct']:.2f}%)"),
        ("train seconds", "", f"{metrics['train_seconds']:.1f}"),
        ("real tokens/s", "", f"{metrics['tokens_per_second']:,.0f}"),
        ("peak memory (MiB)", "", f"{metrics['peak_memory_mb']:,.0f}"),
    ]
    title = f"{metrics['method']} on {metrics['task']} ({metrics['precision']}, {metrics['device']})"
    return title + "\n\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows) + _samples(before, after)


def _samples(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Generated test answers (causal LM), before and after training, beside the reference."""
    if not after.get("samples"):
        return ""
    old = {s["prompt"]: s["generated"] for s in before.get("samples", [])}
    lines = ["", "", "example answers (test split, greedy):"]
    for s in after["samples"]:
        lines += ["", f"  prompt:    {s['prompt']}", f"  reference: {s['reference']}"]
        if s["prompt"] in old:
            lines.append(f"  before:    {old[s['prompt']]}")
        lines.append(f"  after:     {s['generated']}")
    return "\n".join(lines)
