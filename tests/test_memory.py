"""A run's peak memory is its own: not its parent process's, not an earlier run's in the same process."""
import subprocess
import sys

import torch

from tuneforge import memory
from tuneforge.run import train
from tiny import reviews_csv

GIB = 2**30


def _peak_of_a_gib_and_a_half() -> float:
    """Touch 1.5 GiB (returned to the system when freed) and return the peak it left, in MiB."""
    big = torch.ones(3 * GIB // 2 // 4)
    del big
    return memory.peak_rss_mb()


def test_a_child_process_reports_its_own_peak_not_its_parents():
    parent = _peak_of_a_gib_and_a_half()
    out = subprocess.run([sys.executable, "-c", "from tuneforge.memory import peak_rss_mb; print(peak_rss_mb())"],
                         capture_output=True, text=True, check=True).stdout
    assert float(out) < parent - 1024, (float(out), parent)  # ru_maxrss started from the parent's peak


def test_the_peak_starts_afresh_at_a_reset():
    before = _peak_of_a_gib_and_a_half()
    memory.reset_peak()
    assert memory.peak_rss_mb() < before - 1024


def test_a_second_run_in_one_process_reports_its_own_peak(bert_dir, tmp_path):
    before = _peak_of_a_gib_and_a_half()  # an earlier, larger job of this process (a notebook's)
    cfg = {"model": {"name": str(bert_dir), "max_length": 32},
           "data": {"dataset": str(reviews_csv(tmp_path / "r.csv", 80))},
           "train": {"max_steps": 2, "batch_size": 16}, "output_dir": str(tmp_path / "run")}
    peak = train(cfg, progress=False).metrics["peak_memory_mb"]
    assert peak < before - 1024, (peak, before)
