"""benchmarks/bench_defaults.py's table: what counts as met, n/a and not run."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("bench_defaults", ROOT / "benchmarks" / "bench_defaults.py")
bd = sys.modules["bench_defaults"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bd)


def run(test: float, validation: float) -> dict:
    return {"test": test, "validation": validation, "train_examples": 500, "steps": 10}


def rows(tmp_path: Path, results: dict, cells: list, table_only: bool) -> tuple[dict, str]:
    """The table's row per (task, method) and the whole text, for runs keyed at rate 1e-3 (the default) or others."""
    args = argparse.Namespace(table_only=table_only, output=str(tmp_path / "t.md"))
    default_lr = {(t, m): 1e-3 for t, _, m in cells}
    bd.write_table(results, cells, default_lr, args, tmp_path / "t.json")
    text = (tmp_path / "t.md").read_text()
    cols = [line.split(" | ") for line in text.splitlines() if line.startswith("| rt |")]
    return {(c[0][2:], c[2]): c for c in cols}, text


def test_met_needs_a_sweep_and_a_gap_within_the_target():
    assert bd.met(0.0, 2, runs=1) == "no sweep"  # the default alone is measured against nothing
    assert bd.met(1.9, 2, runs=2) == "yes" and bd.met(2.1, 2, runs=2) == "NO"


def test_the_table_marks_no_sweep_misses_and_a_default_that_erred(tmp_path):
    key = lambda m, lr: bd.key("rt", 500, m, lr, 250)  # noqa: E731
    results = {key("lora", 1e-3): run(0.80, 0.80),  # the default alone
               key("full", 1e-3): run(0.70, 0.70), key("full", 3e-3): run(0.75, 0.76),  # x 3 wins by 5 points
               key("ia3", 1e-3): {"error": "IA3Model has nothing to rescale"}}
    cells = [("rt", 500, m) for m in ("lora", "full", "ia3", "prompt")]
    got, text = rows(tmp_path, results, cells, table_only=True)
    assert got["rt", "lora"][-2] == "no sweep"
    assert got["rt", "full"][-4:-1] == ["+5.00", "2", "NO"]
    assert got["rt", "ia3"][-2:] == ["n/a", "IA3Model has nothing to rescale |"]
    assert ("rt", "prompt") not in got and "(1 cells): rt 500 prompt." in text  # never run: listed, not a row


def test_a_run_without_its_default_says_so(tmp_path):
    results = {bd.key("rt", 500, "lora", 3e-3, 250): run(0.8, 0.8)}  # only the x 3 run of this invocation
    got, _ = rows(tmp_path, results, [("rt", 500, "lora")], table_only=False)
    assert got["rt", "lora"][-2:] == ["", "no default run |"]
