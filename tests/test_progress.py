"""Progress bars as suit stderr: live on a terminal; in a log file no short bars and plain lines for long ones."""
import sys

from tuneforge import progress


def test_in_a_log_file_a_bar_writes_a_few_plain_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_terminal", lambda: False)
    for _ in progress.bar(range(5000), desc="evaluate", leave=False):  # LOG_INTERVAL (60 s) apart: its start only
        pass
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("evaluate:   0%|") and line.endswith("| 0/5000 [00:00<?, ?it/s]")
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    for _ in progress.bar(range(3), desc="train"):
        pass
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and lines and all(line.strip() for line in lines)
    assert lines[-1].startswith("train: 100%") and "3/3" in lines[-1]


def test_on_a_terminal_the_bar_redraws_in_place(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_terminal", lambda: True)
    for _ in progress.bar(range(3), desc="evaluate", leave=False, file=sys.stderr):
        pass
    assert "\r" in capsys.readouterr().err


def test_a_disabled_bar_writes_nothing_anywhere(capsys, monkeypatch):
    for terminal in (True, False):
        monkeypatch.setattr(progress, "_terminal", lambda: terminal)
        for _ in progress.bar(range(3), desc="train", disable=True):
            pass
    assert capsys.readouterr().err == ""
