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
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tuneforge import checkpoint, interrupts, tasks
from tuneforge.config import ConfigError, RunConfig, load_config, merge_dicts, parse_overrides
from tuneforge.compare_report import failed_row, row_from_metrics, write_outputs
from tuneforge.files import check_replaceable, is_ours, output_folder, write_marker
from tuneforge.methods import registry
from tuneforge.progress import bar as progress_bar
from tuneforge.strict import name_key


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
    unused = [k for k in base.method_options() if not any(k in _options(n) for n in names)]
    if unused:
        raise ConfigError(f"method.{unused[0]} is an option of none of the compared methods ({', '.join(names)})")
    task = tasks.get(base.model.task)
    out = output_folder(out_dir)
    claim_folder(out)
    if not overwrite:  # before any training: a changed config must not be mixed into an old comparison
        for name in names:
            _check_same_config(out / "runs" / name, method_config(base, name, out / "runs" / name))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    rows = []
    bar = progress_bar(names, desc="compare", unit="method", disable=not progress)
    for name in bar:
        bar.set_description(f"compare: {name}")
        rows.append(_run_method(name, base, out, task, progress, in_process, overwrite))
    bar.close()
    write_outputs(rows, task, out, base, in_process)
    return rows


def claim_folder(out: Path, kind: str = "comparison") -> None:
    """Make ``out`` a comparison's (or ``kind``'s: mitigate's sweep) folder: new, empty, or an earlier one of the
    same kind (its marker); a folder of the user's (a project folder with the ``runs/`` that ``train`` writes, say)
    or another kind of tuneforge folder is refused, so that nothing in it is overwritten or later replaced by
    ``--overwrite``."""
    check_replaceable(out, True, "output folder", kind)
    out.mkdir(parents=True, exist_ok=True)
    if not is_ours(out):
        write_marker(out, kind)


def _method_list(methods: Sequence[str] | str | None) -> list[str]:
    """Method names from a list or a comma-separated string (None: all); unknown names fail before training."""
    if methods is None:
        return registry.names()
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names = list(dict.fromkeys(name_key(m) for m in items if m.strip()))
    if not names:
        raise ConfigError(f"compare needs at least one method; choose from {', '.join(registry.names())}")
    unknown = [m for m in names if m not in registry.names()]
    if unknown:
        raise ConfigError(f"--methods: unknown method '{unknown[0]}'; choose from {', '.join(registry.names())}")
    return names


def _base_config(config: str | Path | dict[str, Any] | None, overrides: list[str]) -> RunConfig:
    """The shared config, validated once up front (a bad key fails before the first run); a sequential run's
    ``model.name`` is task 1's (:func:`checkpoint.task1_model`)."""
    if isinstance(config, dict):
        cfg = load_config(None, merge_dicts(config, parse_overrides(overrides)))
    else:
        cfg = load_config(config, overrides)
    if cfg.forgetting.previous_run:
        checkpoint.task1_model(cfg)
    return cfg


def _options(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(registry.get(name).Config)}


def method_config(base: RunConfig, name: str, run_dir: Path) -> dict[str, Any]:
    """The base config with ``method.name`` set and those of its method options that method ``name`` has
    (``method.num_virtual_tokens`` goes to prompt tuning and P-tuning, not to LoRA)."""
    data = base.to_dict()
    data["method"] = {"name": name, **{k: v for k, v in base.method_options().items() if k in _options(name)}}
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


DERIVED = ("train.head_lr:", "train.pooler_with_head:")  # filled in from train.lr and the method's defaults


def _check_same_config(run_dir: Path, wanted: dict[str, Any]) -> None:
    """Refuse to reuse or resume a run that was started with another config (it would mix settings)."""
    from tuneforge.run import resolve_config

    kept = [run_dir / f for f in ("metrics.json", checkpoint.RESUME)]
    if not (run_dir / "config.yaml").is_file() or not any(f.is_file() for f in kept):
        return  # nothing to reuse or resume: the run restarts

    stored_cfg = resolve_config(checkpoint.stored_config(run_dir))
    stored, want = stored_cfg.to_dict(), resolve_config(wanted).to_dict()
    diff = _differences({**stored, "output_dir": None}, {**want, "output_dir": None})
    diff.sort(key=lambda d: d.startswith(DERIVED))  # name train.lr, not the head rate that follows it
    if diff:
        raise ConfigError(f"{run_dir} was trained with another config ({diff[0]}); use another output folder "
                          "or --overwrite to retrain")
    changed = _changed_input(run_dir, stored_cfg)
    if changed:
        raise ConfigError(f"{run_dir} was trained on {changed}, which changed since (its files differ), so its "
                          "results would sit beside others of other data; use another output folder or --overwrite "
                          "to retrain")


def _changed_input(run_dir: Path, cfg: RunConfig) -> str | None:
    """The data file, replay/reference data, model folder or task 1's run that differs from what ``run_dir``
    recorded when it started (``split.json``, ``base_model.json``, ``previous_run.json``); None when each is as it
    was (or gone: training says so)."""
    from tuneforge import assets, resume_check
    from tuneforge.data.readers import file_digest
    from tuneforge.forgetting.pipeline import source_digests
    split = run_dir / checkpoint.SPLIT
    manifest = json.loads(split.read_text()) if split.is_file() else {}
    for source in manifest.get("sources", []):
        path = Path(source.get("path") or "")
        if source.get("path") and path.is_file() and file_digest(path) != source.get("fingerprint"):
            return str(path)
    now = source_digests(cfg)
    then = manifest.get("forgetting") or {}
    key = next((k for k in then if k in now and now[k] != then[k]), None)
    if key is not None:
        return f"the {key} data"
    if cfg.forgetting.previous_run:  # task 1's run, whose merged model the run started from
        return resume_check.base_changed(run_dir, Path(), cfg.forgetting.previous_run)
    try:
        folder = assets.resolve_model(cfg.model.name)
    except ConfigError:
        return None
    return resume_check.base_changed(run_dir, folder) if Path(folder).is_dir() else None


def _run_method(name: str, base: RunConfig, out: Path, task: Any, progress: bool, in_process: bool,
                overwrite: bool) -> dict[str, Any]:
    """Reuse, resume, or (re)start one method's run; returns its row."""
    run_dir = out / "runs" / name
    wanted = method_config(base, name, run_dir)
    if (run_dir / "metrics.json").is_file() and not overwrite:
        row = row_from_metrics(name, json.loads((run_dir / "metrics.json").read_text()), task, run_dir)
        return {**row, "reused": True}
    try:
        metrics = train_run(name, run_dir, wanted, out, progress, overwrite, in_process)
    except ConfigError as exc:
        return failed_row(name, task, run_dir, str(exc))
    return row_from_metrics(name, metrics, task, run_dir)


def train_run(name: str, run_dir: Path, wanted: dict[str, Any], out: Path, progress: bool, overwrite: bool,
              in_process: bool = False) -> dict[str, Any]:
    """Train one run of a comparison or sweep (config ``wanted``) and return its metrics: resumed where it was
    interrupted (unless ``overwrite``), else started afresh over whatever an earlier attempt left."""
    resume = run_dir if (run_dir / checkpoint.RESUME).is_file() and not overwrite else None
    restart = run_dir.exists() and resume is None
    if not in_process:
        return _train_subprocess(name, wanted, out, resume, restart, progress)
    from tuneforge import run as run_module
    if resume is not None:
        return run_module.train({}, resume=resume, progress=progress).metrics
    return run_module.train(wanted, overwrite=restart, progress=progress).metrics


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
    code, tail = _stream([sys.executable, "-m", "tuneforge.cli", *args] + ([] if progress else ["-q"]), progress,
                         f"{name}: ")
    metrics_file = Path(wanted["output_dir"]) / "metrics.json"
    if code == 0 and metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    raise ConfigError(failure(code, tail))


def failure(code: int, tail: str) -> str:
    """Why a training process failed, in one line, from its exit code and the end of its stderr: its own error
    line, a crash's exception (the traceback's last line), or the signal that ended it."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", tail) if line.strip()]
    errors = [line for line in lines if line.startswith("tuneforge: error: ")]
    if errors:
        return errors[-1][len("tuneforge: error: "):]
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return f"the training process was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    if "Traceback (most recent call last)" in tail:  # the exception: the first unindented line after the frames
        trace = tail.rsplit("Traceback (most recent call last)", 1)[1].splitlines()[1:]
        exception = next((line for line in trace if line.strip() and not line[0].isspace()), None)
        if exception:
            return f"the training process crashed: {exception.strip()}"
    return f"the training process exited with code {code}" + (f"; its last output: {lines[-1]}" if lines else "")


def _stream(cmd: list[str], echo: bool, label: str = "") -> tuple[int, str]:
    """Run ``cmd``; pass its stderr (progress bars, errors) through when ``echo``, else only its warnings and notes,
    each after ``label`` (``-q`` keeps them); return (exit code, stderr tail). A terminal's Ctrl-C reaches the child
    too; it stops without a word, and this process says in one line how to continue (the child's checkpoints
    resume it)."""
    env = {**os.environ, interrupts.PARENT_SAYS: "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    decoder, tail, partial = codecs.getincrementaldecoder("utf-8")(errors="replace"), "", ""
    try:
        assert proc.stderr is not None
        while chunk := proc.stderr.read1(4096):
            text = decoder.decode(chunk)
            if echo:
                sys.stderr.write(text)
                sys.stderr.flush()
            else:
                *lines, partial = re.split(r"[\r\n]", partial + text)  # a bar's line ends in \r
                said = [f"{label}{line}\n" for line in lines if line.startswith(("warning: ", "note: "))]
                sys.stderr.write("".join(said))
                sys.stderr.flush()
            tail = (tail + text)[-8192:]
        return proc.wait(), tail
    except BaseException:
        proc.kill()
        proc.wait()
        raise
