"""The console script: --help everywhere, one-line errors (exit 2, no traceback), train/predict/evaluate/merge."""
import io
import json
import subprocess
import sys

import pandas as pd
import pytest

from tiny import model_dir, sentiment_rows
from tuneforge.cli import build_parser, main
from tuneforge.config import ConfigError
from tuneforge.methods import registry


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)


@pytest.mark.parametrize("command", [None] + _commands())
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main(([command] if command else []) + ["--help"])
    assert exc.value.code == 0
    assert "usage: tuneforge" in capsys.readouterr().out


def test_console_script_is_installed():
    from pathlib import Path

    script = Path(sys.executable).parent / "tuneforge"  # the console script pip installed beside the interpreter
    assert script.is_file()
    out = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--resume" in out.stdout and "dotted overrides" in out.stdout
    out = subprocess.run([sys.executable, "-m", "tuneforge", "methods"], capture_output=True, text=True)
    assert out.returncode == 0 and "lora" in out.stdout  # python -m tuneforge (what torchrun -m runs)
    assert "fresh task head" in out.stdout and "and 0.003 or the floor shown (train.head_lr)" in out.stdout
    bitfit = next(line for line in out.stdout.splitlines() if line.startswith("bitfit "))
    head = registry.train_defaults("bitfit", "classification")["head_lr"]
    assert f"a fresh head at least classification {head:g}" in bitfit  # a method's own head floor, shown
    assert "(train.pooler_with_head)" in out.stdout
    assert "method.rank = 8  # r: inner dimension of the low-rank update" in out.stdout  # each option explained


@pytest.mark.parametrize("argv, message", [
    (["train", "train.bogus=1"], "unknown config key 'train.bogus'"),
    (["train", "--model", "/no/such/folder"], "neither an embedded model"),
    (["train", "--data", "missing.csv", "--model", "minilm"], "data file missing.csv does not exist"),
    (["evaluate", "/no/run"], "run directory /no/run does not exist"),
    (["predict", "/no/run", "text"], "run directory /no/run does not exist"),
])
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuneforge: error:") and message in err and len(err.splitlines()) == 1


def test_a_file_given_for_the_run_directory_says_so(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood film,positive\n")
    for argv, fix in ((["evaluate", data], f"the run directory comes first: `tuneforge evaluate RUN --data {data}`"),
                      (["predict", data, "good"], "the run directory comes first: `tuneforge predict RUN TEXT...`"),
                      (["generate", data], "the run directory comes first: `tuneforge generate RUN PROMPT...`"),
                      (["merge", data, tmp_path / "m"], "give the folder `tuneforge train` wrote")):
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"tuneforge: error: {data} is a file, not a run directory; ")
        assert len(err.splitlines()) == 1
        assert fix in err and "does not exist" not in err
    assert not (tmp_path / "m").exists()


def test_train_predict_evaluate_merge(tmp_path, capsys, monkeypatch):
    model = model_dir(tmp_path / "m", "bert")
    pd.DataFrame(sentiment_rows(80)).to_csv(tmp_path / "d.csv", index=False)
    run = tmp_path / "run"
    assert main(["train", "--model", str(model), "--data", str(tmp_path / "d.csv"), "--method", "lora",
                 "-o", str(run), "-q", "method.rank=2", "train.max_steps=3", "train.precision=fp32",
                 "model.max_length=32"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "trainable parameters" in out and str(run) in out
    assert main(["train", "--model", str(model), "--data", str(tmp_path / "d.csv"), "-o", str(run), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["predict", str(run), "--json", "the movie was great", "awful film"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["the movie was great", "awful film"]
    assert all(set(r["probabilities"]) == {"negative", "positive"} for r in rows)
    assert main(["predict", str(run), "--json", "great", " ", "awful film"]) == 2  # not a shifted output
    assert capsys.readouterr().err.strip() == "tuneforge: error: text 2 is empty; give text to predict for"
    assert main(["predict", str(run), "great", "caf\udce9"]) == 2  # bytes of another encoding in argv
    assert capsys.readouterr().err.strip() == ("tuneforge: error: text 2 is not UTF-8 text (bytes of another "
                                               "encoding?); give it as UTF-8")
    monkeypatch.setattr(sys, "stdin", io.StringIO("great\n\ncaf\udce9\n"))  # standard input: its line number
    assert main(["predict", str(run)]) == 2
    assert capsys.readouterr().err.strip() == ("tuneforge: error: standard input line 3 is not UTF-8 text (bytes "
                                               "of another encoding?); give it as UTF-8")
    assert main(["evaluate", str(run), "--data", str(tmp_path / "d.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 80
    assert main(["merge", str(run), str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()


def test_predict_text_pairs_from_flags_and_tab_separated_stdin(tmp_path, capsys, monkeypatch):
    model = model_dir(tmp_path / "m", "bert")
    rows = [{"a": r["text"], "b": "so it is", "y": r["label"]} for r in sentiment_rows(60)]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    run = str(tmp_path / "run")
    # overrides on both sides of a flag
    assert main(["train", "data.text_pair_column=b", "--model", str(model), "--data", str(tmp_path / "d.csv"),
                 "--text-column", "a", "--label-column", "y", "-o", run, "-q", "train.max_steps=2",
                 "train.precision=fp32", "model.max_length=32"]) == 0
    capsys.readouterr()
    assert main(["predict", run, "--json", "great film", "--pair", "so it is", "dull", "--pair", "not at all"]) == 0
    by_flags = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["text"], r["pair"]) for r in by_flags] == [("great film", "so it is"), ("dull", "not at all")]
    monkeypatch.setattr("sys.stdin", io.StringIO("great film\tso it is\n\ndull\tnot at all\n"))
    assert main(["predict", run, "--json"]) == 0  # a blank line stays a line of its own: outputs match inputs
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [by_flags[0], None, by_flags[1]]
    assert main(["predict", run, "great film"]) == 2
    assert "trained on text pairs" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("great film\tso it is\n\ndull film\n"))  # no second text
    assert main(["predict", run]) == 2
    assert capsys.readouterr().err == ("tuneforge: error: standard input line 3 has no tab: this run classifies text "
                                       "pairs, one FIRST<TAB>SECOND a line (a third column, such as a gold label, "
                                       "would become part of the second text)\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("great film\tso it is\tpositive\n"))  # a TSV's gold label column
    assert main(["predict", run]) == 2  # it became part of the second text
    assert capsys.readouterr().err.startswith("tuneforge: error: standard input line 1 has 2 tabs: ")
    for lines, which in (("great film\tso it is\n\tnot at all\n", "line 2's first text"),
                         ("great film\t\n", "line 1's second text")):  # named as the line's part, not pairs[i]
        monkeypatch.setattr("sys.stdin", io.StringIO(lines))
        assert main(["predict", run]) == 2
        assert capsys.readouterr().err.startswith(f"tuneforge: error: standard input {which} is empty")
    assert main(["predict", run, "great film", "--pair", " "]) == 2
    assert capsys.readouterr().err.startswith("tuneforge: error: --pair 1 is empty; give every text its second text")
    monkeypatch.setattr("sys.stdin", io.StringIO("good " * 40 + "\tso it is\n"))
    assert main(["predict", run]) == 0
    assert ("note: 1 input(s) longer than model.max_length=32 tokens are classified from their first 32 (as in "
            "training): the rest is not read") in capsys.readouterr().err  # cut without a word before


def test_dotted_overrides_beat_flags_on_either_side(monkeypatch):
    """As documented: defaults < YAML < flags < dotted overrides (a flag used to win, silently)."""
    from tuneforge import run
    from tuneforge.config import load_config
    seen = []
    monkeypatch.setattr(run, "train", lambda cfg, overrides, **kwargs: seen.append(overrides) or
                        type("Out", (), {"table": ""})())
    for argv in (["train.lr=0.5", "--lr", "0.001", "--epochs", "1"], ["--lr", "0.001", "train.lr=0.5", "--epochs", "1"]):
        assert main(["train", *argv, "train.epochs=2", "--method", "lora", "method.rank=4"]) == 0
        cfg = load_config(None, seen[-1])
        assert (cfg.train.lr, cfg.train.epochs, cfg.method) == (0.5, 2, {"name": "lora", "rank": 4})


def test_compares_task_flag_yields_to_a_dotted_override(monkeypatch, tmp_path):
    """compare --task X model.task=Y compared on task X: its flag was appended after the overrides."""
    from tuneforge import compare
    from tuneforge.config import load_config
    seen = []

    def fake(methods, config, overrides, out_dir, **kwargs):
        seen.append(overrides)
        (tmp_path / "comparison.md").write_text("table")
        return []

    monkeypatch.setattr(compare, "compare", fake)
    assert main(["compare", "--task", "causal_lm", "-o", str(tmp_path), "model.task=seq2seq"]) == 0
    assert load_config(None, seen[-1]).model.task == "seq2seq"


def test_a_flag_value_outside_the_basic_plane_is_read_as_written(monkeypatch):
    """--data 'rev😀.csv' became 'rev\\ud83d\\ude00.csv' (json.dumps escapes it, YAML reads lone surrogates)."""
    from tuneforge import run
    from tuneforge.config import load_config
    seen = []
    monkeypatch.setattr(run, "train", lambda cfg, overrides, **kwargs: seen.append(overrides) or
                        type("Out", (), {"table": ""})())
    assert main(["train", "--data", "rev😀.csv", "-o", "runs/nb😀"]) == 0
    cfg = load_config(None, seen[-1])
    assert (cfg.data.dataset, cfg.output_dir) == ("rev😀.csv", "runs/nb😀")


def test_a_sampling_setting_means_sampling():
    from tuneforge.commands import _sampling

    def settings(*flags):
        return _sampling(build_parser().parse_args(["generate", "run", *flags]))

    assert settings() == {"max_new_tokens": 128, "sample": False, "seed": None}  # greedy; Sampling's defaults
    assert settings("--temperature", "0.7") == {"max_new_tokens": 128, "sample": True, "temperature": 0.7, "seed": None}
    assert settings("--top-k", "5", "--seed", "3")["sample"] is True
    assert settings("--sample")["sample"] is True


def test_an_unknown_flag_is_named_with_the_commands_usage_and_its_overrides_are_not(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "-o", str(tmp_path / "cmp"), "--batch-size", "8", "method.rank=4"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "usage: tuneforge compare" in err
    assert "tuneforge compare: error: unrecognized arguments: --batch-size (see `tuneforge compare --help`)" in err
    assert "method.rank=4" not in err.splitlines()[-1] and not (tmp_path / "cmp").exists()


def test_an_interrupted_training_run_points_to_resume(monkeypatch, capsys, tmp_path):
    """The message named a placeholder RUN_DIR, also where the run directory had been removed (interrupted before
    training started); a Ctrl-C while the command still imported was a traceback. Exit status 130, as shells
    report Ctrl-C (2 is a configuration error)."""
    from tuneforge import resume_check

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(resume_check, "_RUN", [])
    monkeypatch.setattr("tuneforge.cli.cmd_train", interrupted)
    assert main(["train", "train.max_steps=1"]) == 130
    assert capsys.readouterr().err.strip() == "tuneforge: error: interrupted before training started; nothing was kept"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    resume_check.started(run, "{}")
    assert main(["train", "train.max_steps=1"]) == 130
    assert capsys.readouterr().err.strip() == (f"tuneforge: error: interrupted; `tuneforge train --resume {run}` "
                                               "continues from the run's last checkpoint")
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: rank 0 names the launch that resumes it
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert main(["train", "train.max_steps=1"]) == 130
    assert capsys.readouterr().err.strip() == (f"tuneforge: error: interrupted; `torchrun --nproc_per_node=2 -m tuneforge "
                                               f"train --resume {run}` continues from the run's last checkpoint")
    monkeypatch.setenv("RANK", "1")  # the other ranks say nothing (they do not know the run: 'nothing was kept')
    assert main(["train", "train.max_steps=1"]) == 130 and capsys.readouterr().err == ""
    for key in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key)
    (run / "metrics.json").write_text("{}")  # finished: no checkpoint left
    assert main(["train", "train.max_steps=1"]) == 130
    assert capsys.readouterr().err.strip() == f"tuneforge: error: interrupted after the run finished; its results are in {run}"
    monkeypatch.setattr("tuneforge.cli.cmd_methods", interrupted)
    assert main(["methods"]) == 130
    assert capsys.readouterr().err.strip() == "tuneforge: error: interrupted"
    monkeypatch.setattr("tuneforge.cli.build_parser", lambda: interrupted(None))  # still importing
    assert main(["methods"]) == 130
    assert capsys.readouterr().err.strip() == "tuneforge: error: interrupted"


def test_a_sigterm_ends_a_command_as_ctrl_c_does():
    """SIGTERM (a scheduler's pre-emption, docker stop) killed the process without a word; now one line and exit
    status 143. In a child process, so that a regression cannot kill the test run."""
    child = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys, time\n"
        "from tuneforge import cli\n"
        "before = signal.getsignal(signal.SIGTERM)\n"
        "cli.cmd_methods = lambda args: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(30))\n"
        "code = cli.main(['methods'])\n"
        "print(signal.getsignal(signal.SIGTERM) is before)\n"
        "sys.exit(code)\n")], capture_output=True, text=True, timeout=120)
    assert child.returncode == 143 and child.stdout.strip() == "True"  # the handler before is put back
    assert child.stderr.strip() == "tuneforge: error: terminated (SIGTERM)"


def test_a_reader_that_goes_away_ends_the_output_quietly():
    """`tuneforge methods | head -1`: the pipe's reader has gone; no BrokenPipeError traceback."""
    child = subprocess.Popen([sys.executable, "-m", "tuneforge", "methods"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.close()  # before the child writes anything: its first write (or flush) meets a closed pipe
    err = child.stderr.read().decode()
    assert child.wait() == 1 and err == ""


def test_predict_works_through_large_inputs_a_chunk_at_a_time_in_order(monkeypatch):
    """50k standard-input lines of a 500-label run held 2 GB at once: texts go to the run a chunk at a time and
    each chunk's lines are printed before the next is predicted."""
    from tuneforge import commands

    calls = []

    class Run:
        def predict(self, texts, pairs):
            calls.append((texts, pairs))
            return [{"text": t, "pair": p} for t, p in zip(texts, pairs)]

    monkeypatch.setattr(commands, "PREDICT_CHUNK", 2)
    rows = commands._predictions(Run(), list("abcde"), list("12345"))
    assert next(rows) == {"text": "a", "pair": "1"} and len(calls) == 1  # lazily, chunk by chunk
    assert [r["text"] for r in rows] == list("bcde")
    assert calls == [(["a", "b"], ["1", "2"]), (["c", "d"], ["3", "4"]), (["e"], ["5"])]
    for pairs in (list("1234"), list("123456")):  # counted whole, before any chunk is predicted
        with pytest.raises(ConfigError, match=f"5 texts but {len(pairs)} second texts"):
            next(commands._predictions(Run(), list("abcde"), pairs))


def test_predict_says_each_note_once_for_every_chunk_together(monkeypatch, capsys):
    """100k lines printed 98 notes, one per chunk of 1,024 with its own count, and no total."""
    import sys as system

    from tuneforge import commands

    class Run:
        def predict(self, texts, pairs):
            print(f"note: {len(texts)} input(s) longer than model.max_length=8 tokens are cut", file=system.stderr)
            print("warning: something else", file=system.stderr)
            return [{"text": t} for t in texts]

    monkeypatch.setattr(commands, "PREDICT_CHUNK", 2)
    assert [r["text"] for r in commands._predictions(Run(), list("abcde"), None)] == list("abcde")
    assert capsys.readouterr().err.splitlines() == [
        "warning: something else", "note: 5 input(s) longer than model.max_length=8 tokens are cut"]
