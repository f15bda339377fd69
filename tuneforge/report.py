"""Human-readable result tables."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

FIXES = "try more steps (train.epochs / train.max_steps), a higher train.lr, or check the labels"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _majority(metrics: dict[str, Any]) -> float | None:
    """Accuracy of always predicting the most frequent test class (classification), else None."""
    per_class = metrics.get("per_class") or {}
    supports = [c.get("support", 0) for c in per_class.values()]
    return max(supports) / sum(supports) if supports and sum(supports) else None


def learned_warning(metrics: dict[str, Any], task: Any) -> str | None:
    """One line when nothing (clearly) was learned, else None: the test metric after training is not clearly
    better than the untrained model's (for accuracies also the majority class), beyond two standard errors of
    the test set, or, where the test metric cannot tell (no untrained measurement) or did not clearly improve, the
    training loss did not fall. A test metric clearly better is never contradicted by a flat training loss."""
    verdict = _test_verdict(metrics, task)
    if verdict == "better":
        return None
    loss = metrics.get("training_loss") or {}
    first, last = loss.get("first"), loss.get("last")
    if first is not None and last is not None and math.isfinite(first) and last > 0.98 * first and \
            loss.get("logged", 0) > 1:
        return f"the training loss did not clearly fall ({first:.4f} -> {last:.4f}, under 2 %): {FIXES}"
    return verdict


def _test_verdict(metrics: dict[str, Any], task: Any) -> str | None:
    """'better' when the test metric clearly beats the untrained model's (and the majority class), the warning
    when it does not, None when there is nothing to compare it with."""
    before, after = metrics.get("test_before") or {}, metrics.get("test_after") or {}
    name = task.metric
    if name not in after:
        return None
    value, sign = after[name], (1 if task.greater_is_better else -1)
    if sign > 0 and value == 0 and not before:
        return f"test {name} is 0 after training: {FIXES}"
    bars = [before.get(name)]
    majority = _majority(after)
    if majority is not None and name == "accuracy":
        bars.append(majority)
    bars = [b for b in bars if b is not None]
    if not bars:
        return None
    bar = max(bars) if sign > 0 else min(bars)
    n = after.get("n") or 0
    if 0 <= value <= 1 and n:  # a proportion: two standard errors of the test set, at least one point
        margin = max(0.01, 2 * math.sqrt(max(value * (1 - value), 1e-4) / n))
    else:  # a loss: one per cent
        margin = 0.01 * abs(bar)
    if sign * (value - bar) > margin:
        return "better"
    untrained = before.get(name)
    what = " / ".join(([] if untrained is None else ["the untrained model"]) +
                      ([] if majority not in bars else [f"the majority class ({majority:.4f})"]))
    change = f"{value:.4f}" if untrained is None else f"{untrained:.4f} -> {value:.4f}"  # eval.before=false: none
    return f"the model learned little: test {name} {change} is not clearly better than {what}: {FIXES}"


def result_table(metrics: dict[str, Any], task_metrics: Sequence[str]) -> str:
    """Markdown table: test metrics before/after training, then cost figures."""
    before, after = metrics.get("test_before") or {}, metrics.get("test_after") or {}
    p = metrics["parameters"]
    rows = [("metric", "before", "after"), ("---", "---", "---")]
    for name in task_metrics:
        if name in before or name in after:
            rows.append((f"test {name}", _fmt(before.get(name)), _fmt(after.get(name))))
    types = {**(before.get("per_type") or {}), **(after.get("per_type") or {})}  # entity types (token tasks)
    for name in sorted(types, key=lambda t: (-types[t].get("support", 0), t)):
        old, new = (before.get("per_type") or {}).get(name, {}), (after.get("per_type") or {}).get(name, {})
        rows.append((f"test f1: {name} ({types[name].get('support', 0)} entities)", _fmt(old.get("f1")),
                     _fmt(new.get("f1"))))
    f = metrics.get("forgetting") or {}
    for probe in f.get("probes", [f] if f else []):
        rows.append((f"forgetting probe: {probe['reference']}", _fmt(probe["before"]), _fmt(probe["after"])))
    best = metrics.get("best_validation") or {}
    if best.get("trained") is not None:  # forgetting.interpolate: before = as trained, after = moved back
        name = next(k for k in best if k not in ("step", "trained", "interpolate"))
        rows.append((f"validation {name}: trained / interpolated (keep {best['interpolate']:g})",
                     _fmt(best["trained"]), _fmt(best[name])))
    rows += [
        ("trainable parameters", "", f"{p['trainable']:,} / {p['total']:,} ({p['trainable_pct']:.2f}%)"),
        ("train seconds", "", f"{metrics['train_seconds']:.1f}"),
        ("real tokens/s", "", f"{metrics['tokens_per_second']:,.0f}"),
        ("peak memory (MiB)", "", f"{metrics['peak_memory_mb']:,.0f}"),
    ]
    examples = metrics.get("examples") or {}
    for key, label in (("duplicates", "duplicate examples (kept in one split)"),
                       ("skipped_invalid", "invalid rows skipped"),
                       ("dropped_overlap", "validation/test rows dropped (repeat training rows)")):
        if examples.get(key):
            rows.append((label, "", f"{examples[key]:,}"))
    title = f"{metrics['method']} on {metrics['task']} ({metrics['precision']}, {metrics['device']})"
    warning = f"\n\nwarning: {metrics['warning']}" if metrics.get("warning") else ""
    return (title + "\n\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows) + warning
            + _samples(before, after))


def _samples(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Generated test answers (causal LM), before and after training, beside the reference."""
    if not after.get("samples"):
        return ""
    old = {s["prompt"]: s["generated"] for s in before.get("samples", [])}
    tagged = all(s.get("tagged") for s in after["samples"])  # words tagged, not answers generated
    lines = ["", "", "example predictions (test split):" if tagged else "example answers (test split, greedy):"]
    for s in after["samples"]:
        more = f"  (+{len(s['references']) - 1} other reference(s))" if "references" in s else ""
        asked = f"  {'input: ' if tagged else 'prompt:'}    {s['prompt']}"
        lines += ["", asked, f"  reference: {s['reference']}{more}"]
        if s["prompt"] in old:
            lines.append(f"  before:    {old[s['prompt']]}")
        lines.append(f"  after:     {s['generated']}")
    return "\n".join(lines)
