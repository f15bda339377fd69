"""Token classification end to end on tiny model folders: CoNLL / JSONL token lists / character-offset spans ->
train -> metrics.json -> evaluate -> predict (text and --json offsets) -> merge -> PEFT export -> compare;
sentences longer than max_length are windowed and every word gets a tag; invalid I- starts are counted.
(Every method on tiny in-memory token classifiers: test_token_classification.py.)"""
import json
import random

import pytest
import torch
import yaml
from transformers import AutoModel, AutoModelForTokenClassification

from conftest import tiny_batch, tiny_config
from lm_helpers import single_thread
from tiny import model_dir, word_tokenizer
from tuneforge import cli
from tuneforge.config import ConfigError
from tuneforge.run import load, train
from tuneforge.tasks import get
from tuneforge.tasks.token_classification import tagged


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


FILLER = "the a is was it this that and but not very so too movie film plot".split()


def sentence(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    """A learnable sentence of about ``n`` words: w0-w9 start a person (w10-w14 continue it), w20-w29 are places."""
    words, tags = [], []
    while len(words) < n:
        r = rng.random()
        if r < 0.15:
            words.append(f"w{rng.randrange(0, 10)}")
            tags.append("B-person")
            if rng.random() < 0.5:
                words.append(f"w{rng.randrange(10, 15)}")
                tags.append("I-person")
        elif r < 0.25:
            words.append(f"w{rng.randrange(20, 30)}")
            tags.append("B-loc")
        else:
            words.append(rng.choice(FILLER))
            tags.append("O")
    return words, tags


def sentences(n: int, seed: int = 0, long_every: int = 20) -> list[tuple[list[str], list[str]]]:
    """``n`` sentences of 4-12 words; every ``long_every``-th has 30 (over max_length 16: windows)."""
    rng = random.Random(seed)
    return [sentence(rng, 30 if i % long_every == long_every - 1 else rng.randint(4, 12)) for i in range(n)]


def write_conll(path, rows) -> str:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(*row)) + "\n" for row in rows))
    return str(path)


def spans_row(words: list[str], tags: list[str]) -> dict:
    """A JSONL row of raw text (words joined by one or two spaces) with character-offset entities."""
    text, offsets = "", []
    for i, w in enumerate(words):
        text += (" " * (1 + i % 2) if i else "")
        offsets.append((len(text), len(text) + len(w)))
        text += w
    entities = []
    for i, tag in enumerate(tags):
        if tag.startswith("B-"):
            entities.append({"start": offsets[i][0], "end": offsets[i][1], "label": tag[2:]})
        elif tag.startswith("I-"):
            entities[-1]["end"] = offsets[i][1]
    return {"text": text, "entities": entities}


def config(folder, dataset: str, out, method: str = "lora", **extra) -> dict:
    cfg = {"model": {"name": str(folder), "task": "token_classification", "max_length": 16},
           "data": {"dataset": dataset, "stride": 4},
           "method": {"name": method, **({"rank": 4} if method == "lora" else {})},
           "train": {"epochs": 10, "batch_size": 16, "lr": 1e-2, "precision": "fp32", "log_every": 5},
           "output_dir": str(out)}
    for section, values in extra.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def same(a, b) -> bool:
    """Equal metrics: the same keys, numbers equal to float rounding (nested dicts and lists alike)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return b == pytest.approx(a, rel=1e-5, abs=1e-9)
    return a == b


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("bert") / "model", "bert", dropout=0.0)


@pytest.fixture(scope="module")
def conll_run(tmp_path_factory, bert):
    """LoRA on a tiny BERT folder from a CoNLL file (one sentence starts with an I- tag)."""
    tmp = tmp_path_factory.mktemp("conll")
    rows = sentences(240)
    words, tags = rows[3]
    rows[3] = (["w25"] + words, ["I-loc"] + tags)  # an invalid start: accepted, repaired to B-loc, counted
    data = write_conll(tmp / "train.conll", rows)
    out = train(config(bert, data, tmp / "run"), progress=False)
    return tmp, out


def test_metrics_and_meta(conll_run):
    _, out = conll_run
    saved = json.loads((out.run_dir / "metrics.json").read_text())
    after, before = saved["test_after"], saved["test_before"]
    for key in ("f1", "precision", "recall", "token_accuracy", "per_type", "loss"):
        assert key in after and key in before
    assert set(after["per_type"]) == {"person", "loc"}
    assert after["f1"] > 0.7 and after["f1"] > before["f1"] + 0.3
    assert after["token_accuracy"] > 0.9
    assert saved["best_validation"]["f1"] is not None and saved["real_tokens"] > 0
    meta = json.loads((out.run_dir / "meta.json").read_text())
    assert meta["labels"][0] == "O" and set(meta["labels"]) == {"O", "B-person", "I-person", "B-loc"}
    counts = meta["label_counts"]  # labelled training sub-tokens per tag: the fresh head starts at their log prior
    assert len(counts) == 4 and counts[0] == max(counts) and min(counts) > 0
    assert before["f1"] == 0 and before["token_accuracy"] > 0.6  # so the untrained model tags every word O
    assert meta["invalid_sequences"] == 1 and meta["scheme"] == "BIO"
    assert "invalid_gold" not in after and "invalid_pred" in after  # the file's count is meta's, not a 0 here
    for line in ("test f1", "test precision", "test recall", "test token_accuracy"):
        assert line in out.table
    for name, scores in after["per_type"].items():  # per-type F1 rows, with the gold entity count
        assert f"| test f1: {name} ({scores['support']} entities) |" in out.table
    # tagged test sentences, gold beside predicted (not for the untrained model: its fresh head tags at random)
    assert after["samples"] and {"prompt", "reference", "generated"} <= set(after["samples"][0])
    assert all("](" in s["reference"] for s in after["samples"]) and "samples" not in before
    assert "reference: " in out.table


def test_tagged_marks_entities_in_the_words():
    words = ["Barack", "Obama", "visited", "the", "Empire", "State", "Building", "in", "NY"]
    tags = ["B-person", "I-person", "O", "O", "B-facility", "I-facility", "I-facility", "O", "B-geo-loc"]
    assert tagged(words, tags) == ("[Barack Obama](person) visited the [Empire State Building](facility) in "
                                   "[NY](geo-loc)")
    assert tagged(["a", "b"], ["O", "O"]) == "a b"


def test_evaluate_reproduces_the_run_metrics(conll_run):
    _, out = conll_run
    again = load(out.run_dir, "cpu").evaluate()
    saved = out.metrics["test_after"]
    for key in ("f1", "precision", "recall", "token_accuracy", "n"):
        assert again[key] == pytest.approx(saved[key], abs=1e-9)
    assert same(again, saved)


def test_predict_cli_prints_entities_and_json_offsets(conll_run, capsys):
    """The CLI prints the entities the run's model finds (the tiny model misses an entity now and then: what it
    found is read from the Python API), one line per text, and their character offsets under --json."""
    _, out = conll_run
    text = "the w3 w11 was so  w25 movie"
    texts = [text, "so w7 and w22"]
    found = [[(e["label"], e["text"]) for e in row["entities"]] for row in load(out.run_dir, "cpu").predict(texts)]
    assert ("person", "w3 w11") in found[0] and found[1] == [("person", "w7"), ("loc", "w22")]
    assert cli.main(["predict", str(out.run_dir), *texts]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines() == [f"{t}\t" + " | ".join(f"{label}: {words}" for label, words in f)
                                    for t, f in zip(texts, found)]
    assert cli.main(["predict", str(out.run_dir), text, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == text
    entities = [(e["label"], e["start"], e["end"], e["text"]) for e in row["entities"]]
    assert ("person", 4, 10, "w3 w11") in entities and [(e[0], e[3]) for e in entities] == found[0]
    assert all(text[start:end] == words for _, start, end, words in entities)
    punctuated = "the w3 w11, was so (w25)."  # words as NER data splits them: the marks stay out of the entities
    assert cli.main(["predict", str(out.run_dir), punctuated, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)  # (the tiny model never saw punctuation: it may tag a mark alone)
    entities = [(e["label"], e["start"], e["end"], e["text"]) for e in row["entities"] if e["text"][0].isalnum()]
    assert ("person", 4, 10, "w3 w11") in entities
    assert all(punctuated[start:end] == words and words.replace(" ", "").isalnum() for _, start, end, words in entities)
    assert {words for _, _, _, words in entities} <= {"w3 w11", "w25"}


def test_long_sentences_are_windowed_and_every_word_tagged(conll_run):
    tmp, out = conll_run
    run = load(out.run_dir, "cpu")
    long_rows = sentences(6, seed=7, long_every=1)  # 30 words each: several windows of <= 16 tokens
    long_rows = [(w * 2, t * 2) for w, t in long_rows]  # 60 words
    examples = run.task.encode([{"tokens": w, "tags": t} for w, t in long_rows], run.cfg, run.tokenizer, run.meta,
                               ["long"] * 6)
    assert len(examples) > 4 * 6 and max(len(e["input_ids"]) for e in examples) <= 16
    metrics = run.evaluate(write_conll(tmp / "long.conll", long_rows))  # stitched back: one tag per word
    assert metrics["n"] == 6 and metrics["recall"] > 0.7 and metrics["token_accuracy"] > 0.9
    words = ["the"] * 50 + ["w4", "w12", "was", "so", "w27"]
    (row,) = run.predict([" ".join(words)])
    assert [(e["label"], e["text"]) for e in row["entities"]] == [("person", "w4 w12"), ("loc", "w27")]


def test_evaluating_a_file_with_entity_types_the_run_never_saw_warns(conll_run, capsys):
    tmp, out = conll_run
    rows = [(w, [t.replace("loc", "gpe") for t in tags]) for w, tags in sentences(6, seed=3)]
    metrics = load(out.run_dir, "cpu").evaluate(write_conll(tmp / "gpe.conll", rows))
    assert (f"warning: {tmp / 'gpe.conll'}: entity type(s) gpe of the evaluated data never occur in training (loc, "
            "person)") in capsys.readouterr().err
    assert metrics["n"] == 6
    rows = [(w, [t.replace("loc", "gpe").replace("person", "per") for t in tags]) for w, tags in rows]
    with pytest.raises(ConfigError, match=r"entity type\(s\) gpe, per of the evaluated data never occur in training "
                                          r"\(loc, person\).*write them as the training file does"):  # none known
        load(out.run_dir, "cpu").evaluate(write_conll(tmp / "other.conll", rows))


@torch.no_grad()
def test_merge_gives_the_run_logits(conll_run, tmp_path, capsys):
    _, out = conll_run
    run = load(out.run_dir, "cpu")
    assert cli.main(["merge", str(out.run_dir), str(tmp_path / "merged")]) == 0
    merged = AutoModelForTokenClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.id2label[1] == run.meta["labels"][1]
    batch = tiny_batch()
    torch.testing.assert_close(merged(**batch).logits, run.model(**batch).logits, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@torch.no_grad()
def test_peft_export_loads_in_peft_with_equal_logits(conll_run, tmp_path, capsys):
    from peft import PeftModel

    _, out = conll_run
    run = load(out.run_dir, "cpu")
    assert cli.main(["export", str(out.run_dir), str(tmp_path / "peft"), "--format", "peft"]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["task_type"] == "TOKEN_CLS" and config["modules_to_save"] == ["classifier"]
    labels = run.meta["labels"]
    base = AutoModelForTokenClassification.from_pretrained(config["base_model_name_or_path"], num_labels=len(labels))
    theirs = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    batch = tiny_batch()
    torch.testing.assert_close(theirs(**batch).logits, run.model(**batch).logits, rtol=0, atol=1e-4)


def test_compare_two_methods(conll_run, bert, tmp_path, capsys):
    tmp, _ = conll_run
    cfg = config(bert, str(tmp / "train.conll"), "unused", train={"epochs": 2})
    del cfg["output_dir"]
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["compare", "-c", str(tmp_path / "base.yaml"), "--methods", "lora,bitfit", "--in-process",
                     "-o", str(tmp_path / "cmp"), "-q"]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "f1 before" in table and "f1 after" in table and "token_accuracy after" in table
    rows = [line for line in table.splitlines() if line.startswith("| lora") or line.startswith("| bitfit")]
    assert len(rows) == 2 and all(row.rstrip().endswith("| ok |") for row in rows)


def test_hugging_face_exports_load_as_they_are(tmp_path):
    """``tokens`` + integer ``ner_tags``: a Parquet export names the ids in its features, a JSONL one through
    data.tag_names; ``--label-column`` names the tags column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tuneforge.config import load_config

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rows = {"tokens": [["John", "lives", "in", "New", "York"]], "ner_tags": [[1, 0, 0, 3, 4]]}
    meta = {"info": {"features": {"ner_tags": {"feature": {"names": names, "_type": "ClassLabel"}, "_type": "List"}}}}
    parquet, jsonl = tmp_path / "d.parquet", tmp_path / "d.jsonl"
    pq.write_table(pa.table(rows).replace_schema_metadata({b"huggingface": json.dumps(meta).encode()}), parquet)
    jsonl.write_text(json.dumps({"tokens": rows["tokens"][0], "ner_tags": rows["ner_tags"][0], "pos": [1] * 5}) + "\n")
    task = get("token_classification")
    expected = [{"tokens": rows["tokens"][0], "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]}]
    assert task.read_source(str(parquet), load_config(None, {})) == expected
    assert task.read_source(str(jsonl), load_config(None, {"data": {"tag_names": names}})) == expected
    with pytest.raises(ConfigError, match="tag 1 is a number"):
        task.read_source(str(jsonl), load_config(None, {}))
    cfg = load_config(None, {"data": {"label_column": "pos", "tag_names": ["X", "NOUN"]}})
    assert task.read_source(str(jsonl), cfg)[0]["tags"] == ["NOUN"] * 5


def test_jsonl_token_lists_full_fine_tuning_of_gpt2(tmp_path):
    """Named columns of word/tag lists; a decoder (GPT-2) as token classifier."""
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"words": w, "ner": t}) + "\n" for w, t in sentences(160, seed=1)))
    folder = model_dir(tmp_path / "gpt2", "gpt2")
    columns = {"tokens_column": "words", "tags_column": "ner"}
    out = train(config(folder, str(path), tmp_path / "run", "full", data=columns, train={"epochs": 6, "lr": 3e-3}),
                progress=False)
    after = out.metrics["test_after"]
    assert after["f1"] > 0.8 and out.metrics["test_before"]["f1"] == 0  # the fresh head's prior: all O
    run = load(out.run_dir, "cpu")
    assert same(run.evaluate(), after)
    assert run.evaluate(str(path))["n"] == 160  # any file of the run's layout


def test_character_offset_spans_with_prompt_tuning_on_llama(tmp_path):
    """Raw text + character-offset entities in, character offsets out; virtual tokens on a decoder."""
    path = tmp_path / "d.jsonl"
    rows = [spans_row(w, t) for w, t in sentences(160, seed=2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)  # weights drawn wider than usual (std 0.2): frozen features tell the words apart
    AutoModel.from_config(tiny_config("llama", initializer_range=0.2)).save_pretrained(tmp_path / "llama")
    folder = tmp_path / "llama"
    word_tokenizer().save_pretrained(folder)
    out = train(config(folder, str(path), tmp_path / "run", "prompt", train={"epochs": 6, "lr": 3e-2}),
                progress=False)
    after = out.metrics["test_after"]
    assert after["f1"] > 0.5 and after["f1"] > out.metrics["test_before"]["f1"] + 0.3
    run = load(out.run_dir, "cpu")
    assert same(run.evaluate(), after)
    (pred,) = run.predict([rows[0]["text"]])
    assert all(pred["text"][e["start"]:e["end"]] == e["text"] for e in pred["entities"])
    gold = {(e["start"], e["end"], e["label"]) for r in rows[:40] for e in r["entities"]}
    found = {(e["start"], e["end"], e["label"]) for r, p in zip(rows[:40], run.predict([r["text"] for r in rows[:40]]))
             for e in p["entities"]}
    assert len(gold & found) > 0.5 * len(gold)  # offsets in the original text, double spaces included
