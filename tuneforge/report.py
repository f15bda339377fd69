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
    rows += [
        ("trainable parameters", "", f"{p['trainable']:,} / {p['total']:,} ({p['trainable_pct']:.2f}%)"),
        ("train seconds", "", f"{metrics['train_seconds']:.1f}"),
        ("real tokens/s", "", f"{metrics['tokens_per_second']:,.0f}"),
        ("peak memory (MiB)", "", f"{metrics['peak_memory_mb']:,.0f}"),
    ]
    title = f"{metrics['method']} on {metrics['task']} ({metrics['precision']}, {metrics['device']})"
    return title + "\n\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
