"""resume_check: what --resume must find unchanged, and which run this process trains."""
import pytest

from tuneforge import interrupts, resume_check
from tuneforge.config import ConfigError

STARTED = "train:\n  lr: 0.001\n  epochs: 2\n"


def test_an_edit_is_a_changed_setting_and_a_broken_file_is_left_to_the_loader(tmp_path):
    resume_check.refuse_edited(tmp_path, STARTED, "# a note\ntrain: {lr: 1.0e-3, epochs: 2}\n")  # same settings
    resume_check.refuse_edited(tmp_path, None, "train:\n  lr: 0.5\n")  # a checkpoint from before 2026-12-07
    with pytest.raises(ConfigError, match=r"edited since the run started \(train\.lr: 0\.001 when it started, 0\.5 "
                                          r"now\)"):
        resume_check.refuse_edited(tmp_path, STARTED, "train:\n  lr: 0.5\n  epochs: 2\n")
    for broken in ["train:\n\tlr: 1\n", "", "- 1\n- 2\n"]:  # said as what it is when loaded, not as an edit
        resume_check.refuse_edited(tmp_path, STARTED, broken)


def test_an_interrupted_resume_names_its_run_before_anything_is_imported(monkeypatch):
    monkeypatch.setattr(resume_check, "_RUN", [])
    assert interrupts.stopped(KeyboardInterrupt(), "train", "runs/mine") == (
        "interrupted; `tuneforge train --resume runs/mine` continues from the run's last checkpoint")
    assert interrupts.stopped(KeyboardInterrupt(), "train") == "interrupted before training started; nothing was kept"
    assert interrupts.status(KeyboardInterrupt()) == 130 and interrupts.status(interrupts.Terminated()) == 143
