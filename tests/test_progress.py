"""Progress bars as suit stderr: live on a terminal; in a log file no short bars and plain lines for long ones."""
import sys

from tuneforge import progress


def test_in_a_log_file_a_bar_writes_a_few_plain_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_terminal", lambda: False)
    for _ in progress.bar(range(5000), desc="evaluate", leave=False):  # shorter than LOG_INTERVAL (60 s): silent
        pass
    for _ in progress.bar(range(5000), desc="train"):  # LOG_INTERVAL apart: its start and its end
        pass
    first, last = capsys.readouterr().err.splitlines()
    assert first.startswith("train:   0%|") and first.endswith("| 0/5000 [00:00<?, ?it/s]")
    assert last.startswith("train: 100%|") and "5000/5000" in last
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


def test_a_bar_given_its_own_file_is_left_as_asked(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_terminal", lambda: False)
    for _ in progress.bar(range(3), desc="train", file=sys.stderr):
        pass
    assert "\r" in capsys.readouterr().err  # tqdm's own drawing, not the log lines


def test_nested_bars_leave_no_cursor_moves_in_a_log_file(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_terminal", lambda: False)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # the inner bar drawn at once
    outer = progress.bar(total=2, desc="train")
    for _ in progress.bar(range(2), desc="evaluate", leave=False):  # tqdm moves the cursor for the inner bar
        pass
    outer.update(2)
    outer.close()
    err = capsys.readouterr().err
    assert "\x1b" not in err and "[A" not in err and "evaluate:" in err and "train: 100%" in err


def test_an_interrupted_command_closes_its_bars_before_its_one_line(capsys, monkeypatch):
    from tuneforge import interrupts

    monkeypatch.setattr(progress, "_terminal", lambda: False)
    open_bar = progress.bar(total=10, desc="train")
    open_bar.update(3)
    assert interrupts.report(KeyboardInterrupt(), "compare") == 130
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("tuneforge: error: interrupted") and lines[-2].startswith("train:  30%")
