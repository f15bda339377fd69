"""`tuneforge calibrate`: prompt classification of a data file by a tiny random Llama, with and without
contextual calibration; every setting error is one line."""
import json

import pytest
from transformers import AutoModelForCausalLM

from lm_helpers import model_folder, single_thread
from tuneforge.cli import main
from tuneforge.prompting.calibration import PromptClassifier
from tuneforge.models import load_pretrained, load_tokenizer

POS, NEG = "good fine yes please thanks".split(), "bad no stop why because".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    folder = model_folder(root / "llama", "llama")
    rows = []
    for i in range(60):  # a word-level vocabulary: every text word is a known token
        words = POS if i % 2 else NEG
        text = " ".join(words[(i + j) % 5] for j in range(2 + i % 4))
        rows.append({"review": f"the cat {text}", "stars": "positive" if i % 2 else "negative"})
    data = root / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with single_thread():
        yield root, folder, data


def _args(folder, data, *extra):
    return ["calibrate", "--model", str(folder), "--data", str(data), "--text-column", "review",
            "--label-column", "stars", "--template", "review : {text} .\\nit was", "--label-words", "bad,good",
            *extra]


def test_calibrate_writes_metrics_of_real_predictions(setup, capsys):
    root, folder, data = setup
    out = root / "result.json"
    assert main(_args(folder, data, "--shots", "2", "--limit", "5", "-o", str(out))) == 0
    printed = capsys.readouterr().out
    assert "uncalibrated" in printed and "| calibrated |" in printed and "content-free" in printed
    result = json.loads(out.read_text())
    assert result["n"] == 5 and len(result["predictions"]) == 5 and result["labels"] == ["negative", "positive"]
    assert result["label_words"] == [" bad", " good"]
    assert result["template"] == "review : {text} .\nit was"  # typed as backslash-n
    assert len(result["demonstrations"]) == 2 and result["content_free"] == ["N/A", "[MASK]", ""]
    assert sum(result["p_content_free"].values()) == pytest.approx(1.0)
    # the stored predictions are the classifier's own, and both accuracies are computed from them
    model, _ = load_pretrained(AutoModelForCausalLM, folder)
    demos = [(d["text"], result["labels"].index(d["label"])) for d in result["demonstrations"]]
    clf = PromptClassifier(model, load_tokenizer(folder), result["template"], result["label_words"], demos)
    texts = [p["text"] for p in result["predictions"]]
    for name in ("uncalibrated", "calibrated"):
        expected = [result["labels"][i] for i in clf.predict(texts, calibrate=name == "calibrated")]
        assert [p[name] for p in result["predictions"]] == expected
        correct = sum(p[name] == p["label"] for p in result["predictions"])
        assert result[name]["accuracy"] == pytest.approx(correct / 5)
        assert sum(result[name]["predicted_share"].values()) == pytest.approx(1.0)
    # seeded: the same command gives the same sample, demonstrations and predictions
    assert main(_args(folder, data, "--shots", "2", "--limit", "5", "-o", str(out), "--overwrite")) == 0
    again = json.loads(out.read_text())
    assert again["predictions"] == result["predictions"] and again["demonstrations"] == result["demonstrations"]


@pytest.mark.parametrize("extra, message", [
    (["--template", "no slot here"], "has no '{text}'"),
    (["--label-words", "good"], "gives 1 words for 2 labels (negative, positive)"),
    (["--label-words", "bad,good,fine"], "gives 3 words for 2 labels"),
    (["--label-words", "bad,zebra"], "label word 'zebra' cannot be encoded"),
    (["--label-words", "bad,"], "label word '' cannot be encoded"),
    (["--shots", "1000"], "more than the"),
    (["--label-words", "good, good"], "label word 'good' is given for two labels"),
])
def test_bad_settings_are_one_line_errors(setup, capsys, extra, message):
    _, folder, data = setup
    assert main(_args(folder, data, "--limit", "2", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuneforge: error:") and message in err and len(err.splitlines()) == 1


def test_default_label_words_are_the_label_names(setup, capsys):
    _, folder, data = setup  # "negative"/"positive" are not in the tiny vocabulary
    argv = [a for a in _args(folder, data, "--limit", "2") if a not in ("--label-words", "bad,good")]
    assert main(argv) == 2
    assert "label word 'negative' cannot be encoded" in capsys.readouterr().err


def test_existing_output_is_refused_unless_overwrite(setup, capsys):
    root, folder, data = setup
    out = root / "exists.json"
    out.write_text("{}")
    assert main(_args(folder, data, "--limit", "2", "-o", str(out))) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "{}"
    assert main(_args(folder, data, "--limit", "2", "-o", str(out), "--overwrite")) == 0
    assert json.loads(out.read_text())["n"] == 2


def test_an_output_that_cannot_be_written_is_refused_before_any_scoring(setup, capsys, monkeypatch):
    from tuneforge.prompting import classify

    root, folder, data = setup
    (root / "a-folder").mkdir()
    (root / "a-file").write_text("mine")
    monkeypatch.setattr(classify, "evaluate_prompting", lambda *a, **k: pytest.fail("scored before the check"))
    for out, said in ((root / "a-folder", "is a folder"), (root / "a-file" / "x.json", "is a file, not a folder"),
                      ("/proc/tuneforge-x.json", "cannot write /proc/tuneforge-x.json")):  # takes no files
        assert main(_args(folder, data, "--limit", "2", "-o", str(out), "--overwrite")) == 2
        err = capsys.readouterr().err
        assert err.startswith("tuneforge: error:") and said in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--limit", "0"), ("--shots", "-1")])
def test_counts_below_their_least_are_refused_by_the_parser(setup, capsys, flag, value):
    _, folder, data = setup
    with pytest.raises(SystemExit) as exc:
        main(_args(folder, data, flag, value))
    assert exc.value.code == 2 and f"{flag}: must be at least" in capsys.readouterr().err


def test_an_encoder_is_refused_as_not_a_causal_lm(setup, bert_dir, capsys):
    _, _, data = setup
    args = _args(bert_dir, data, "--limit", "2")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a trained causal language model" in err and len(err.splitlines()) == 1, err


def test_the_python_api_refuses_a_batch_size_below_one():
    from tuneforge.config import ConfigError
    from tuneforge.prompting.classify import evaluate_prompting
    with pytest.raises(ConfigError, match="--batch-size positive"):
        evaluate_prompting(batch_size=0)


def test_the_data_file_is_never_the_output(setup, capsys):
    root, folder, data = setup
    before = data.read_text()
    assert main(_args(folder, data, "--limit", "2", "-o", str(data), "--overwrite")) == 2
    assert "is the --data file" in capsys.readouterr().err and data.read_text() == before


def test_data_notes_are_printed_and_invalid_rows_can_be_skipped(setup, tmp_path, capsys):
    _, folder, data = setup
    rows = data.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows + [rows[0].replace('"negative"', '"positive"'), '{"review": "the cat", "stars": ""}']))
    assert main(_args(folder, bad, "--limit", "2")) == 2
    assert "calibrate: --skip-invalid" in capsys.readouterr().err
    assert main(_args(folder, bad, "--limit", "2", "--skip-invalid")) == 0
    err = capsys.readouterr().err
    assert "1 invalid row(s) skipped" in err and "occur with different labels" in err and "validation" not in err
