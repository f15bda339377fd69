"""The markdown and the plots of bench_forgetting.py: per setting, medians over seeds of task quality and
forgetting for every row, each mitigation's cut and cost against full fine-tuning, issue 15's targets."""
from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT = {
    "sequential": ("Sequential classification: sentiment, then topics",
                   "task-2 test accuracy, points over untrained", "task-1 accuracy lost (points)"),
    "chat": ("Chat model: ChatterBot tuning of SmolLM2", "ChatterBot test perplexity, % below untrained",
             "own-answers perplexity rise (%)"),
}


def cost(row: dict[str, Any], full: dict[str, Any], part: str) -> float:
    """Task quality given up against full fine-tuning: accuracy points, or per cent higher perplexity."""
    if part == "sequential":
        return (full["test"] - row["test"]) * 100
    return (row["test"] / full["test"] - 1) * 100


def gain(row: dict[str, Any], part: str) -> float:
    """Task gain of training: accuracy points over the untrained model, or per cent lower perplexity."""
    if part == "sequential":
        return (row["test"] - row["test_before"]) * 100
    return (1 - row["test"] / row["test_before"]) * 100


def cut(row: dict[str, Any], full: dict[str, Any]) -> float | None:
    """Share of full fine-tuning's forgetting that the row avoids (per cent); None when full did not forget."""
    if full["forgotten"] is None or full["forgotten"] <= 0 or row["forgotten"] is None:
        return None
    return (1 - row["forgotten"] / full["forgotten"]) * 100


def _f(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x + 0.0, spec)


def rows_table(part: str, rows: list[dict[str, Any]]) -> list[str]:
    full = rows[0]
    probes = list(full["probes"])
    metric = "accuracy" if part == "sequential" else "perplexity"
    lines = [f"| row | test {metric} (median) | task cost vs full | forgetting (median) | per seed | cut vs full | "
             + "".join(f"{p} | " for p in probes[1:]) + "trainable % | train s |",
             "|---|" + "---|" * (7 + len(probes[1:]))]
    for r in rows:
        seeds = " / ".join(_f(x["forgotten"], ".1f") for x in r["runs"])
        lines.append(f"| {r['row']} | {_f(r['test'], '.4f')} | {_f(cost(r, full, part), '+.2f')} | "
                     f"{_f(r['forgotten'], '+.2f')} | {seeds} | {_f(cut(r, full), '.0f')}{'' if cut(r, full) is None else ' %'} | "
                     + "".join(f"{_f(r['probes'][p], '+.2f')} | " for p in probes[1:])
                     + f"{r['trainable_pct']:.2f} | {r['train_seconds']:.0f} |")
    return lines


def sweep_lines(kind: str, sweep: dict[str, Any]) -> list[str]:
    chosen = (sweep["chosen"] or {}).get("label")
    cells = [f"{r['label']}{' **chosen**' if r['label'] == chosen else ''}: validation {_f(r['validation'], '.4g')}, "
             f"forgetting {_f(r['forgotten'], '+.2f')}" for r in sweep["rows"]]
    return [f"- {kind}: " + "; ".join(cells) + ("" if chosen else " (none within the margin)")]


def matched_lines(m: dict[str, Any] | None) -> list[str]:
    if not m:
        return []
    cands = ", ".join(f"{k}: {v:.4g}" for k, v in m["candidates"].items())
    return [f"LoRA at matched quality: the setting whose best validation metric (seed 42) is closest to full "
            f"fine-tuning's ({m['full']:.4g}) among {cands} → **{m['chosen']}**.\n"]


def targets(part: str, rows: list[dict[str, Any]], limit: float) -> list[str]:
    full, out = rows[0], []
    for r in rows[1:]:
        c, k = cut(r, full), cost(r, full, part)
        if r.get("mitigation"):
            met = c is not None and c >= 30 and k <= limit
            out.append(f"{r['row']}: forgetting cut {_f(c, '.0f')} % at a task cost of {k:+.2f} "
                       f"{'points' if part == 'sequential' else '% perplexity'} (target ≥ 30 % at ≤ {limit:g}): "
                       f"{'met' if met else 'not met'}.")
    lora = [r for r in rows if r["row"].startswith("LoRA")]
    for r in lora:
        less = r["forgotten"] is not None and full["forgotten"] is not None and r["forgotten"] < full["forgotten"]
        out.append(f"{r['row']} vs full: task cost {cost(r, full, part):+.2f}, forgetting {_f(r['forgotten'], '+.2f')} "
                   f"vs {_f(full['forgotten'], '+.2f')}: LoRA forgets {'less' if less else 'more (or as much)'}.")
    return out


def markdown(payload: dict[str, Any], out: Path) -> str:
    from tuneforge.mitigate import plot_tradeoff

    env = payload["environment"]
    text = [f"# Forgetting benchmark\n\nCommand: `{payload['command']}`  \nWall time {env['wall_seconds'] / 60:.1f} min "
            f"(runs reused from the work folder are not re-timed); seeds {payload['seeds']} per row, medians.  \n"
            f"Machine: {env['cpu']}, {env['cores']} cores; load {env['load_before']:.1f} before, "
            f"{env['load_after']:.1f} after  \nVersions: Python {env['python']}, torch {env['torch']}, "
            f"transformers {env['transformers']}\n"]
    for part, res in payload["parts"].items():
        title, task_label, forget_label = TEXT[part]
        s, rows = res["settings"], res["rows"]
        png = out.with_name(f"{out.stem}-{part}.png")
        plot_tradeoff([{"label": r["row"], "gain": gain(r, part), "forgotten": r["forgotten"]} for r in rows], png,
                      task_label, forget_label)
        text += [f"## {title}\n", f"Settings: `{s}`\n", f"Forgetting: {forget_label}; cut = share of full "
                 f"fine-tuning's forgetting avoided. Task cost against full: "
                 f"{'accuracy points' if part == 'sequential' else 'per cent higher test perplexity'}.\n",
                 *rows_table(part, rows), "", f"![task gain against forgetting]({png.name})\n",
                 *matched_lines(res.get("matched_lora")),
                 "Strengths chosen by `tuneforge mitigate` on seed 42 (validation metric within "
                 f"{s['margin']:g} {s['task_unit']} of the unmitigated run, least forgetting on the probes' "
                 "validation side):\n", *(line for k, v in res["sweeps"].items() for line in sweep_lines(k, v)), "",
                 "Against issue 15's targets:\n", *(f"- {t}" for t in targets(part, rows, s["cost_limit"])), ""]
    return "\n".join(text)
