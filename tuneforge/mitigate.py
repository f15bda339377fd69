"""Mitigations that choose their own strength, and the picture of what each costs.

``mitigate`` trains one run without mitigation and one per candidate strength of a mitigation (EWC or L2-SP
strength, replay or self-replay ratio, share kept by interpolation) and picks, on validation data, the
candidate that forgets least among those whose task quality stays within a stated margin of the unmitigated
run (``choose``). Task quality is the
best validation metric of each run (accuracy-like metrics: ``margin`` in points; losses: per cent of
perplexity); forgetting is the run's first probe (``metrics.json`` ``forgetting.forgotten``: per cent for
perplexities, points for accuracies), measured on its validation side (``forgetting.probe_split=validation``:
examples disjoint from the test-side ones), so the chosen setting's test-side numbers are not chosen on. ``plot_tradeoff`` draws task gain against forgetting, one point per
run, with the Pareto front.

    tuneforge mitigate -c configs/demo-chat.yaml --kind ewc --values 1e2,1e3,1e4 --margin 3 -o mit/
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneforge import checkpoint, tasks
from tuneforge.config import ConfigError, RunConfig, load_config
from tuneforge.files import output_folder
from tuneforge.forgetting import pipeline as forgetting
from tuneforge.run_dir import check_inputs_outside

# kind -> (fixed settings, the swept key, default candidates)
SWEEPS: dict[str, tuple[list[str], str, list[float]]] = {
    "ewc": (["forgetting.regularize.kind=ewc"], "forgetting.regularize.strength", [1e2, 1e3, 1e4, 1e5]),
    "l2sp": (["forgetting.regularize.kind=l2sp"], "forgetting.regularize.strength", [1e-2, 1e-1, 1.0, 10.0]),
    "replay": ([], "forgetting.replay.ratio", [0.1, 0.2, 0.4]),
    "self-replay": (["forgetting.replay.data=self"], "forgetting.replay.ratio", [0.05, 0.1, 0.2]),
    "interpolate": ([], "forgetting.interpolate", [0.9, 0.75, 0.5]),
}


def mitigations(cfg: RunConfig) -> list[str]:
    """The mitigations ``cfg`` turns on, as settings (empty: none)."""
    f, out = cfg.forgetting, []
    if f.regularize.kind != "none" and f.regularize.strength != 0:
        out.append(f"forgetting.regularize.kind={f.regularize.kind} (strength {f.regularize.strength:g})")
    if f.replay.ratio > 0:
        out.append(f"forgetting.replay.ratio={f.replay.ratio:g}")
    if f.interpolate != 1:
        out.append(f"forgetting.interpolate={f.interpolate:g}")
    if f.augment.copies > 0:
        out.append(f"forgetting.augment.copies={f.augment.copies}")
    return out


def quality_gap(value: float, baseline: float, metric: str, greater_is_better: bool) -> float:
    """How much worse ``value`` is than ``baseline``: points (x100) for accuracy-like metrics in [0, 1], per cent
    of perplexity for a loss (metric ``loss``: exp of the difference)."""
    if metric == "loss":
        return (math.exp(value - baseline) - 1) * 100
    worse = baseline - value if greater_is_better else value - baseline
    return worse * 100


def choose(rows: Sequence[dict[str, Any]], baseline: dict[str, Any], margin: float, metric: str,
           greater_is_better: bool) -> dict[str, Any] | None:
    """The row that forgets least (smallest ``forgotten``) among those whose validation ``metric`` is within
    ``margin`` of ``baseline``'s (see :func:`quality_gap`) and that forget less than ``baseline``; ties: the
    weaker mitigation (earlier row). None when no candidate does both."""
    ok = [r for r in rows if r.get("forgotten") is not None and r.get("validation") is not None
          and (baseline.get("forgotten") is None or r["forgotten"] < baseline["forgotten"])
          and quality_gap(r["validation"], baseline["validation"], metric, greater_is_better) <= margin]
    return min(ok, key=lambda r: r["forgotten"]) if ok else None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (forgetting, task gain) that no other point beats on both (less forgetting and
    more gain), sorted by forgetting."""
    front = [i for i, (f, g) in enumerate(points)
             if not any((f2 <= f and g2 >= g) and (f2 < f or g2 > g) for f2, g2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: str | Path, task_label: str, forgetting_label: str) -> None:
    """Task gain (y) against forgetting (x), one labelled point per row (``label``, ``gain``, ``forgotten``),
    the Pareto front as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("gain") is not None and r.get("forgotten") is not None]
    points = [(r["forgotten"], r["gain"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (x, y), r in zip(points, rows):
        ax.scatter(x, y, color="tab:blue")
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="tab:orange",
                label="Pareto front")
        ax.legend(fontsize=8)
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.set_xlabel(f"forgetting: {forgetting_label} (right: forgets more)")
    ax.set_ylabel(f"task gain: {task_label} (up: better)")
    ax.set_title("what fine-tuning gained against what it forgot")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_row(label: str, metrics: dict[str, Any], task: Any) -> dict[str, Any]:
    """label, validation metric, test before/after, gain (after - before, sign: better is positive; for a loss,
    per cent lower perplexity), forgetting (first probe) of one finished run."""
    before, after = metrics.get("test_before") or {}, metrics.get("test_after") or {}
    m = task.metric
    gain = None
    if m in before and m in after:
        gain = ((1 - math.exp(after[m] - before[m])) * 100 if m == "loss"  # per cent lower perplexity
                else (after[m] - before[m]) * (100 if task.greater_is_better else -100))
    f = metrics.get("forgetting") or {}
    return {"label": label, "validation": (metrics.get("best_validation") or {}).get(m),
            f"test_{m}": after.get(m), "gain": gain, "forgotten": f.get("forgotten"), "probe": f.get("reference")}


def mitigate(config: str | Path | dict[str, Any] | None, overrides: Sequence[str], kind: str,
             values: Sequence[float] | None, margin: float, out_dir: str | Path, progress: bool = True,
             overwrite: bool = False) -> dict[str, Any]:
    """Train the unmitigated run and one run per candidate of ``kind`` (see ``SWEEPS``) in subprocesses
    (``out_dir/runs/<label>``; finished ones are reused), choose on validation data, write ``mitigation.md``,
    ``mitigation.json`` and ``tradeoff.png``; returns {"rows", "chosen", "baseline"}."""
    from tuneforge.compare import _base_config, _check_same_config, claim_folder

    if kind not in SWEEPS:
        raise ConfigError(f"--kind: unknown mitigation '{kind}'; choose one of {', '.join(SWEEPS)}")
    fixed, key, default = SWEEPS[kind]
    # weakest first (interpolation keeps more of training the higher its share): ties go to the earlier row
    values = sorted(set(values or default), reverse=kind == "interpolate")
    if (none := 1.0 if kind == "interpolate" else 0.0) in values:  # keep all of training; no strength, no replay
        raise ConfigError(f"--values: {kind} at {_label(none)} is the run without mitigation, which the sweep trains "
                          "anyway (its 'none' row); leave it out")
    if not (math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"--margin must be a finite number >= 0, got {margin}")
    base = _base_config(config, list(overrides))
    if already := mitigations(base):
        raise ConfigError(f"mitigate compares runs without mitigation and with {kind} alone, but the config sets "
                          f"{', '.join(already)}; leave it out (the sweep sets {key} itself)")
    if not base.data.validation_file and base.data.split[1] == 0:
        raise ConfigError("mitigate chooses on validation data, and these runs have none (data.split gives it 0): "
                          "give data.split a validation share (e.g. 0.8,0.1,0.1) or data.validation_file")
    if kind == "replay" and not base.forgetting.replay.data:
        raise ConfigError("--kind replay needs forgetting.replay.data (the data to replay)")
    task = tasks.get(base.model.task)
    if kind == "self-replay" and not task.generates:
        raise ConfigError("--kind self-replay replays the model's own answers: causal LM runs only (a classifier: "
                          "--kind replay with forgetting.replay.data)")
    out = output_folder(out_dir)
    side = ["forgetting.probe_split=validation"]  # choose on validation-side probes, never on the reported ones
    unmitigated = side + (["forgetting.replay.data=null"] if kind == "replay" else [])  # no 'ratio 0' warning
    variants = {"none": unmitigated} | {f"{kind}={_label(v)}": side + fixed + [f"{key}={v!r}"] for v in values}
    runs = {}  # every candidate's config, checked before anything trains (a bad value fails at once)
    for label, extra in variants.items():
        run_dir = out / "runs" / label.replace("=", "-")
        data = load_config(None, {**base.to_dict(), "output_dir": str(run_dir)}).to_dict()
        cfg = _base_config(data, extra)
        forgetting.check_probes(cfg, task)
        forgetting.check_sources(cfg, task)  # a missing replay file fails now, not after the baseline trained
        runs[label] = run_dir, cfg.to_dict()
    if not forgetting.has_probe(base, task):
        raise ConfigError("mitigate chooses by what each setting forgets, and these runs measure no forgetting: set "
                          f"{forgetting.measured_by(task)}{' or forgetting.probes' if task.generates else ''}")
    if overwrite:
        check_inputs_outside(out, base)  # the run to mitigate, the data: never replaced with a candidate's run
    claim_folder(out, "mitigation")  # new, empty or an earlier sweep's folder, never one of the user's
    if not overwrite:  # before any training: a changed config is never reused
        for run_dir, data in runs.values():
            _check_same_config(run_dir, data)
    rows = []
    for label, (run_dir, data) in runs.items():
        try:
            metrics = _finished_or_trained(label, run_dir, data, out, progress, overwrite)
        except ConfigError as exc:
            if label == "none":
                raise ConfigError(f"the unmitigated run failed: {exc}") from None
            rows.append({**summary_row(label, {}, task), "error": str(exc).splitlines()[0]})
            continue
        rows.append(summary_row(label, metrics, task))
    baseline, candidates = rows[0], rows[1:]
    chosen = choose(candidates, baseline, margin, task.metric, task.greater_is_better)
    unit = "points" if task.metric != "loss" else "% perplexity"
    lines = [f"# {kind}: candidates on {base.model.name} ({base.data.source}), margin {margin:g} {unit}", "",
             "Forgetting is measured on the probes' validation side (chosen on; the test-side numbers come from a "
             "run of the chosen setting with `forgetting.probe_split=test`, the default).", "",
             f"| run | validation {task.metric} | test {task.metric} | task gain | forgetting ({rows[0]['probe']}) |",
             "|---|---|---|---|---|"]
    for r in rows:
        mark = " **chosen**" if chosen is not None and r is chosen else " (failed)" if "error" in r else ""
        lines.append(f"| {r['label']}{mark} | {_f(r['validation'])} | {_f(r[f'test_{task.metric}'])} | "
                     f"{_f(r['gain'])} | {_f(r['forgotten'])} |")
    none = ("every candidate failed" if all("error" in r for r in candidates) else
            "no run has a validation metric to choose on (its validation split is empty)"
            if all(r.get("validation") is None for r in rows) else
            "no candidate forgets less than the run without mitigation while keeping the task within the margin")
    lines += ["", ("chosen: " + chosen["label"]) if chosen else "nothing chosen: " + none]
    lines += [f"failed: {r['label']}: {r['error']}" for r in rows if "error" in r]
    checkpoint.atomic_write_text(out / "mitigation.md", "\n".join(lines) + "\n")
    checkpoint.save_json({"kind": kind, "margin": margin, "metric": task.metric, "chosen": chosen and chosen["label"],
                          "runs": {r["label"]: str(runs[r["label"]][0]) for r in rows}, "rows": rows},
                         out / "mitigation.json")  # the same for scripts
    plot_tradeoff(rows, out / "tradeoff.png", f"test {task.metric}", rows[0]["probe"] or "probe")
    return {"rows": rows, "chosen": chosen, "baseline": baseline}


def _finished_or_trained(label: str, run_dir: Path, data: dict[str, Any], out: Path, progress: bool,
                         overwrite: bool) -> dict[str, Any]:
    """The metrics of a candidate's run: reused when it finished (same config, checked before), else trained
    (``compare.train_run``: resumed when it was interrupted)."""
    from tuneforge.compare import train_run

    if (run_dir / "metrics.json").is_file() and not overwrite:
        return json.loads((run_dir / "metrics.json").read_text())
    resuming = (run_dir / checkpoint.RESUME).is_file() and not overwrite
    try:
        return train_run(label, run_dir, data, out, progress, overwrite)
    except ConfigError as exc:
        if not resuming:
            raise
        raise ConfigError(f"{exc} (resuming it; delete {run_dir} to retrain this candidate alone)") from None


def _label(value: float) -> str:
    """A candidate's name: short where that is the value itself (1e+03, 0.5), else every digit (0.3000001)."""
    return f"{value:g}" if float(f"{value:g}") == value else repr(value)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
