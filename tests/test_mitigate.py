"""Mitigations that choose their own strength: the choice on a constructed case, the Pareto front, the plot,
and a whole (tiny) sweep through the CLI."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tiny import model_dir, sentiment_rows
from tuneforge.mitigate import choose, pareto_front, plot_tradeoff, quality_gap

PROBED = ["forgetting.previous_run=earlier-run"]  # a classifier measures forgetting on its earlier task (faked here)


def test_quality_gap_in_points_and_in_per_cent_of_perplexity():
    assert quality_gap(0.78, 0.80, "accuracy", True) == pytest.approx(2.0)
    assert quality_gap(2.03, 2.0, "loss", False) == pytest.approx((2.718281828 ** 0.03 - 1) * 100, rel=1e-6)


def test_choose_picks_the_least_forgetting_within_the_margin():
    baseline = {"label": "none", "validation": 0.800, "forgotten": 5.0}
    rows = [{"label": "ewc=1e2", "validation": 0.801, "forgotten": 4.0},
            {"label": "ewc=1e3", "validation": 0.795, "forgotten": 2.5},  # 0.5 points worse: allowed
            {"label": "ewc=1e4", "validation": 0.780, "forgotten": 0.1},  # 2 points worse: beyond margin 1
            {"label": "ewc=1e5", "validation": 0.700, "forgotten": -0.2}]
    assert choose(rows, baseline, 1.0, "accuracy", True)["label"] == "ewc=1e3"
    assert choose(rows, baseline, 3.0, "accuracy", True)["label"] == "ewc=1e4"
    assert choose(rows[2:], baseline, 1.0, "accuracy", True) is None
    lm = [{"label": "a", "validation": 2.02, "forgotten": 10.0}, {"label": "b", "validation": 2.05, "forgotten": 1.0}]
    assert choose(lm, {"validation": 2.0}, 3.0, "loss", False)["label"] == "a"  # b: +5.1 % perplexity
    worse = [{"label": "replay=0.2", "validation": 0.805, "forgotten": 6.0}]  # within the margin, forgets more
    assert choose(worse, baseline, 1.0, "accuracy", True) is None


def test_pareto_front_and_plot(tmp_path):
    points = [(5.0, 10.0), (2.0, 9.0), (3.0, 8.0), (0.5, 4.0), (6.0, 9.5)]
    assert pareto_front(points) == [3, 1, 0]
    rows = [{"label": str(i), "forgotten": f, "gain": g} for i, (f, g) in enumerate(points)]
    plot_tradeoff(rows, tmp_path / "t.png", "test accuracy", "task 1 accuracy")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_mitigate_cli_trains_candidates_and_chooses(tmp_path, capsys, monkeypatch):
    from tuneforge.cli import main

    root = tmp_path
    bert = model_dir(root / "bert", "bert")
    pd.DataFrame(sentiment_rows(120)).to_csv(root / "sent.csv", index=False)
    topics = [{"text": f"the {w} story {i}", "label": w} for i in range(60) for w in [["ball", "bread", "code"][i % 3]]]
    pd.DataFrame(topics).to_csv(root / "topics.csv", index=False)
    base = ["--model", str(bert), "model.max_length=32", "train.precision=fp32", "train.batch_size=16", "-q"]
    assert main(["train", "--data", str(root / "sent.csv"), "--method", "full", "-o", str(root / "t1"),
                 "train.epochs=2", "train.lr=1e-3"] + base) == 0
    capsys.readouterr()
    code = main(["mitigate", "--kind", "l2sp", "--values", "1,1e4", "--margin", "50", "-o", str(root / "mit"),
                 "model.name=" + str(bert), "model.max_length=32", "data.dataset=" + str(root / "topics.csv"),
                 "method.name=full", "train.max_steps=4", "train.lr=1e-3", "train.precision=fp32",
                 "train.batch_size=16", "forgetting.previous_run=" + str(root / "t1"), "-q"])
    out = capsys.readouterr().out
    assert "chosen:" in out and "| none |" in out and "l2sp=1" in out
    assert code == (0 if "chosen: l2sp" in out else 1)  # exit 1: no candidate forgot less within the margin
    assert (root / "mit" / "tradeoff.png").is_file() and (root / "mit" / "runs" / "l2sp-10000" / "metrics.json").is_file()
    summary = json.loads((root / "mit" / "mitigation.json").read_text())  # the table for scripts
    assert summary["kind"] == "l2sp" and summary["metric"] == "accuracy" and list(summary["runs"]) == [
        "none", "l2sp=1", "l2sp=10000"] and [r["label"] for r in summary["rows"]] == list(summary["runs"])
    assert (f"chosen: {summary['chosen']}" if summary["chosen"] else "nothing chosen") in out
    for row in summary["rows"]:
        metrics = json.loads((Path(summary["runs"][row["label"]]) / "metrics.json").read_text())
        assert row["validation"] == metrics["best_validation"]["accuracy"]
    for run in ("none", "l2sp-10000"):  # chosen on the probes' validation side, never on the reported test side
        metrics = json.loads((root / "mit" / "runs" / run / "metrics.json").read_text())
        assert "validation accuracy" in metrics["forgetting"]["reference"]
    again = ["mitigate", "--kind", "l2sp", "--values", "1,1e4", "--margin", "50", "-o", str(root / "mit"),
             "model.name=" + str(bert), "model.max_length=32", "data.dataset=" + str(root / "topics.csv"),
             "method.name=full", "train.max_steps=4", "train.precision=fp32",
             "train.batch_size=16", "forgetting.previous_run=" + str(root / "t1"), "-q"]
    from tuneforge import compare
    monkeypatch.setattr(compare, "_train_subprocess", lambda *a, **k: pytest.fail("retrained a finished run"))
    assert main(again + ["train.lr=1e-3"]) == code and capsys.readouterr().out == out  # the same sweep: reused
    assert main(again + ["train.lr=2e-3"]) == 2  # another config: refused before anything is reused or trained
    assert "was trained with another config (train.lr: 0.001 -> 0.002)" in capsys.readouterr().err


def test_every_mitigation_kind_is_offered_by_the_cli():
    from tuneforge.cli import build_parser
    from tuneforge.mitigate import SWEEPS

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    kind = next(a for a in sub.choices["mitigate"]._actions if a.dest == "kind")
    assert list(kind.choices) == list(SWEEPS)


def test_bad_candidates_margin_or_folder_fail_before_any_training(tmp_path, monkeypatch):
    from tuneforge import compare
    from tuneforge.config import ConfigError
    from tuneforge.mitigate import mitigate

    monkeypatch.setattr(compare, "_train_subprocess", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(ConfigError, match=r"forgetting.interpolate must be in \(0, 1\], got 1.5"):
        mitigate(None, PROBED, "interpolate", [0.5, 1.5], 1.0, tmp_path / "a", progress=False)
    for kind, value in (("interpolate", 1.0), ("l2sp", 0.0), ("replay", 0.0)):  # the unmitigated run again
        with pytest.raises(ConfigError, match=rf"--values: {kind} at {value:g} is the run without mitigation"):
            mitigate(None, PROBED, kind, [0.5, value], 1.0, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="--margin must be a finite number >= 0"):
        mitigate(None, PROBED, "interpolate", [0.5], -1.0, tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match=r"mitigate chooses on validation data, and these runs have none"):
        mitigate(None, PROBED + ["data.split=0.9,0,0.1"], "l2sp", [10], 1.0, tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "mitigation.md").write_text("my notes")
    with pytest.raises(ConfigError, match="not made by tuneforge"):
        mitigate(None, PROBED, "interpolate", [0.5], 1.0, mine, progress=False)
    assert (mine / "mitigation.md").read_text() == "my notes"
    from tuneforge.cli import main
    for values in ("", "0.5,,0.9"):  # an empty --values ran the whole default grid
        assert main(["mitigate", "--kind", "interpolate", "--values", values, "-o", str(tmp_path / "c"), *PROBED]) == 2
    assert not (tmp_path / "c").exists()


def test_a_comparison_folder_or_one_holding_the_sweeps_data_is_never_replaced(tmp_path, monkeypatch):
    from tuneforge import compare
    from tuneforge.config import ConfigError
    from tuneforge.files import write_marker
    from tuneforge.mitigate import mitigate

    monkeypatch.setattr(compare, "_train_subprocess", lambda *a, **k: pytest.fail("trained before checking"))
    exp = tmp_path / "exp"  # a `compare` folder: its runs are no candidates of a sweep, nor removed by one
    (exp / "runs" / "full").mkdir(parents=True)
    write_marker(exp, "comparison")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is a tuneforge folder of kind 'comparison', not 'mitigation'"):
            mitigate(None, PROBED, "interpolate", [0.5], 1.0, exp, progress=False, overwrite=overwrite)
    sweep = tmp_path / "sweep"  # an earlier sweep's folder that holds the data this one trains on
    sweep.mkdir()
    write_marker(sweep, "mitigation")
    (sweep / "data.csv").write_text("text,label\n")
    with pytest.raises(ConfigError, match=r"data.dataset=.*data.csv lies inside .*sweep, which --overwrite would "
                                          "replace"):
        mitigate(None, PROBED + [f"data.dataset={sweep / 'data.csv'}"], "interpolate", [0.5], 1.0, sweep,
                 progress=False, overwrite=True)
    assert (exp / "runs" / "full").is_dir() and (sweep / "data.csv").is_file()


def test_runs_that_measure_no_forgetting_fail_before_any_training(tmp_path, monkeypatch):
    from tuneforge import compare
    from tuneforge.config import ConfigError
    from tuneforge.mitigate import mitigate

    monkeypatch.setattr(compare, "_train_subprocess", lambda *a, **k: pytest.fail("trained before checking"))
    for overrides in ([], ["forgetting.probes=none"]):  # a classifier without its earlier task's run; no probe
        with pytest.raises(ConfigError, match="mitigate chooses by what each setting forgets, and these runs measure "
                                              "no forgetting: set forgetting.previous_run"):
            mitigate(None, overrides, "interpolate", [0.5], 1.0, tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()


def test_ewc_without_data_for_its_fisher_or_a_file_as_folder_fails_before_any_training(tmp_path, monkeypatch):
    from tuneforge import compare
    from tuneforge.config import ConfigError
    from tuneforge.mitigate import mitigate

    monkeypatch.setattr(compare, "_train_subprocess", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(ConfigError, match=r"forgetting.regularize.kind=ewc estimates its Fisher on reference data or "
                                          r"on task 1's, and this run has neither: set "
                                          r"forgetting.previous_run \(a sequential run\)$"):
        mitigate(None, [], "ewc", [1.0], 1.0, tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        mitigate(None, PROBED, "interpolate", [0.5], 1.0, tmp_path / "afile", progress=False)


def test_a_failing_candidate_is_a_failed_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from tuneforge import compare
    from tuneforge.config import ConfigError
    from tuneforge.mitigate import mitigate

    def train(label, data, out, resume, restart, progress):
        if label == "interpolate=0.5":
            raise ConfigError("the training process was killed by SIGKILL (out of memory?)")
        forgot = {"none": 6.0, "interpolate=0.9": 3.0}[label]
        return {"best_validation": {"accuracy": 0.8}, "forgetting": {"forgotten": forgot, "reference": "probe"}}

    monkeypatch.setattr(compare, "_train_subprocess", train)
    result = mitigate(None, PROBED, "interpolate", [0.9, 0.5], 1.0, tmp_path / "m", progress=False)
    assert result["chosen"]["label"] == "interpolate=0.9" and result["rows"][2]["error"].startswith("the training")
    report = (tmp_path / "m" / "mitigation.md").read_text()
    assert "| interpolate=0.5 (failed) |" in report
    assert "failed: interpolate=0.5: the training process was killed by SIGKILL (out of memory?)" in report
    monkeypatch.setattr(compare, "_train_subprocess", lambda label, *a: train("interpolate=0.5", *a))
    with pytest.raises(ConfigError, match="the unmitigated run failed: the training process was killed"):
        mitigate(None, PROBED, "interpolate", [0.9], 1.0, tmp_path / "m2", progress=False)
    monkeypatch.setattr(compare, "_train_subprocess", lambda label, *a: train(
        "interpolate=0.5" if label != "none" else label, *a))
    mitigate(None, PROBED, "interpolate", [0.9, 0.5], 1.0, tmp_path / "m3", progress=False)
    assert "chosen: every candidate failed" in (tmp_path / "m3" / "mitigation.md").read_text()


def test_an_interrupted_candidate_is_resumed_and_a_finished_one_reused(tmp_path, monkeypatch):
    import yaml

    from tuneforge import checkpoint, compare
    from tuneforge.mitigate import mitigate

    calls = []

    def train(label, data, out, resume, restart, progress):
        calls.append((label, resume))
        run_dir = tmp_path / "m" / "runs" / label.replace("=", "-")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(data))
        metrics = {"best_validation": {"accuracy": 0.8}, "forgetting": {"forgotten": 2.0, "reference": "probe"}}
        if label == "interpolate=0.5" and resume is None:  # killed after its first checkpoint
            (run_dir / checkpoint.RESUME).write_bytes(b"state")
            raise compare.ConfigError("the training process was killed by SIGKILL (out of memory?)")
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(compare, "_train_subprocess", train)
    mitigate(None, PROBED, "interpolate", [0.9, 0.5], 1.0, tmp_path / "m", progress=False)
    assert [resume for _, resume in calls] == [None, None, None]
    calls.clear()
    mitigate(None, PROBED, "interpolate", [0.9, 0.5], 1.0, tmp_path / "m", progress=False)
    assert calls == [("interpolate=0.5", tmp_path / "m" / "runs" / "interpolate-0.5")]  # the others reused
    (tmp_path / "m" / "runs" / "interpolate-0.5" / "metrics.json").unlink()
    (tmp_path / "m" / "runs" / "interpolate-0.5" / checkpoint.RESUME).write_bytes(b"damaged")

    def damaged(label, data, out, resume, restart, progress):
        raise compare.ConfigError(f"cannot resume {resume}: its checkpoint is damaged; start the run again")

    monkeypatch.setattr(compare, "_train_subprocess", damaged)
    rows = mitigate(None, PROBED, "interpolate", [0.9, 0.5], 1.0, tmp_path / "m", progress=False)["rows"]
    assert rows[2]["error"].endswith(f"(resuming it; delete {tmp_path / 'm' / 'runs' / 'interpolate-0.5'} to "
                                     "retrain this candidate alone)")


def test_overwrite_keeps_the_earlier_sweep_until_each_run_is_retrained(tmp_path, monkeypatch):
    """``--overwrite`` removed the whole earlier sweep before anything trained: a new sweep that failed (or was
    stopped) at its first run left nothing. Each run is now retrained with ``train --overwrite`` (which sets the
    earlier run aside until the new one trains) and the rest stays."""
    from tuneforge import compare, interrupts
    from tuneforge.config import ConfigError
    from tuneforge.mitigate import mitigate

    def train(label, data, out, resume, restart, progress):
        run_dir = tmp_path / "m" / "runs" / label.replace("=", "-")
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = {"best_validation": {"accuracy": 0.8}, "forgetting": {"forgotten": 2.0, "reference": "probe"}}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(compare, "_train_subprocess", train)
    mitigate(None, PROBED, "interpolate", [0.9, 0.5], 1.0, tmp_path / "m", progress=False)
    kept = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "m").rglob("*") if p.is_file())
    restarts = []

    def failing(label, data, out, resume, restart, progress):
        restarts.append(restart)
        raise ConfigError("training diverged")

    monkeypatch.setattr(compare, "_train_subprocess", failing)
    with pytest.raises(ConfigError, match="the unmitigated run failed"):
        mitigate(None, PROBED + ["train.lr=1e8"], "interpolate", [0.9, 0.5], 1.0, tmp_path / "m", progress=False,
                 overwrite=True)
    assert restarts == [True]  # retrained, not reused
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "m").rglob("*") if p.is_file()) == kept
    assert "m/mitigation.md" in kept and "m/runs/interpolate-0.5/metrics.json" in kept
    said = interrupts.stopped(interrupts.Terminated(), "mitigate", overwrite=True)
    assert said == ("terminated (SIGTERM); running the same `tuneforge mitigate` command again without --overwrite "
                    "skips the runs it finished and resumes the interrupted one, where the folder's other runs have "
                    "the same config (else it says so: use --overwrite again)")
    assert "again skips the finished runs and resumes" in interrupts.stopped(KeyboardInterrupt(), "mitigate")


def test_ties_go_to_the_weaker_setting_and_every_value_is_its_own_candidate(tmp_path, monkeypatch):
    import yaml

    from tuneforge import compare
    from tuneforge.config import load_config
    from tuneforge.mitigate import mitigate

    task1 = tmp_path / "t1"  # a sequential run's model is task 1's: the report names it
    task1.mkdir()
    (task1 / "config.yaml").write_text(yaml.safe_dump(load_config(None, {"model": {"name": "my-bert"}}).to_dict()))
    trained = {}

    def train(label, data, out, resume, restart, progress):
        trained[label] = data["forgetting"]
        forgot = 6.0 if label == "none" else 3.0  # every candidate ties
        return {"best_validation": {"accuracy": 0.8}, "forgetting": {"forgotten": forgot, "reference": "probe"}}

    monkeypatch.setattr(compare, "_train_subprocess", train)
    probed = [f"forgetting.previous_run={task1}"]
    result = mitigate(None, probed, "interpolate", [0.2, 0.25], 1.0, tmp_path / "i", progress=False)
    assert [r["label"] for r in result["rows"]] == ["none", "interpolate=0.25", "interpolate=0.2"]
    assert result["chosen"]["label"] == "interpolate=0.25"  # keeps more of training: the weaker one
    assert "# interpolate: candidates on my-bert" in (tmp_path / "i" / "mitigation.md").read_text()
    result = mitigate(None, probed, "l2sp", [10.0, 1.0], 1.0, tmp_path / "l", progress=False)
    assert result["chosen"]["label"] == "l2sp=1"
    result = mitigate(None, probed, "interpolate", [0.3, 0.3000001, 0.3], 1.0, tmp_path / "c", progress=False)
    assert [r["label"] for r in result["rows"]][1:] == ["interpolate=0.3000001", "interpolate=0.3"]
    assert trained["interpolate=0.3000001"]["interpolate"] == 0.3000001  # the value trained is the one named


def test_self_replay_on_a_classifier_fails_before_any_training(tmp_path, monkeypatch):
    from tuneforge import compare
    from tuneforge.config import ConfigError
    from tuneforge.mitigate import mitigate

    monkeypatch.setattr(compare, "_train_subprocess", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(ConfigError, match="--kind self-replay replays the model's own answers: causal LM runs only"):
        mitigate(None, PROBED, "self-replay", [0.2], 1.0, tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("kind, overrides, named", [
    ("interpolate", ["forgetting.regularize.kind=l2sp", "forgetting.regularize.strength=1000"],
     "forgetting.regularize.kind=l2sp (strength 1000)"),
    ("replay", ["forgetting.replay.data=rotten_tomatoes", "forgetting.replay.ratio=0.4"], "forgetting.replay.ratio=0.4"),
    ("ewc", ["forgetting.interpolate=0.5"], "forgetting.interpolate=0.5"),
])
def test_a_config_that_already_mitigates_is_refused(tmp_path, monkeypatch, kind, overrides, named):
    """Its unmitigated baseline ("none") kept the config's own mitigation, so the choice was made against it."""
    from tuneforge import compare
    from tuneforge.config import ConfigError
    from tuneforge.mitigate import mitigate

    monkeypatch.setattr(compare, "_train_subprocess", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(ConfigError, match=f"mitigate compares runs without mitigation and with {kind} alone, but the "
                                          f"config sets {re.escape(named)}; leave it out"):
        mitigate(None, PROBED + overrides, kind, [0.5], 1.0, tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()


def test_a_missing_replay_file_fails_before_the_baseline_trains(tmp_path, monkeypatch):
    from tuneforge import compare
    from tuneforge.config import ConfigError
    from tuneforge.mitigate import mitigate

    monkeypatch.setattr(compare, "_train_subprocess", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(ConfigError, match=r"^forgetting.replay.data: .*missing.csv does not exist"):
        mitigate(None, PROBED + [f"forgetting.replay.data={tmp_path / 'missing.csv'}"], "replay", [0.2], 1.0,
                 tmp_path / "a", progress=False)


def test_a_replay_sweep_whose_candidates_all_fail_exits_2_and_its_baseline_replays_nothing(tmp_path, monkeypatch,
                                                                                             capsys):
    """Replay data whose labels the run lacks failed every candidate after the baseline trained: the command
    exited 1, the status of 'no candidate forgets less'. The baseline kept replay.data at ratio 0 and warned
    that nothing was replayed, which in a sweep is meant."""
    from tuneforge import compare
    from tuneforge.cli import main
    from tuneforge.config import ConfigError

    pd.DataFrame(sentiment_rows(20)).to_csv(tmp_path / "old.csv", index=False)
    configs = {}

    def train(label, data, out, resume, restart, progress):
        configs[label] = data
        if label != "none":
            raise ConfigError("forgetting.replay.data: label 'pos' was not seen in training")
        return {"best_validation": {"accuracy": 0.8}, "forgetting": {"forgotten": 4.0, "reference": "probe"}}

    monkeypatch.setattr(compare, "_train_subprocess", train)
    pd.DataFrame(sentiment_rows(20)).to_csv(tmp_path / "new.csv", index=False)
    code = main(["mitigate", "--kind", "replay", "--values", "0.2,0.4", "-o", str(tmp_path / "m"), "-q",
                 *PROBED, f"forgetting.replay.data={tmp_path / 'old.csv'}", f"data.train_file={tmp_path / 'new.csv'}"])
    out = capsys.readouterr().out
    assert code == 2 and "nothing chosen: every candidate failed" in out
    assert f"({tmp_path / 'new.csv'}), margin" in out  # the data trained on, not data.dataset's default
    assert configs["none"]["forgetting"]["replay"]["data"] is None
    assert configs["replay=0.2"]["forgetting"]["replay"] == {"data": str(tmp_path / "old.csv"), "ratio": 0.2}
