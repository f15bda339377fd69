"""Seq2seq task (T5, BART): the loss is Hugging Face's, outputs end in EOS and are cut keeping it, decoder labels
pad to their own length, training learns, predictions and exports reload, wrong models and rows are refused."""
import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM

from lm_helpers import QA, ending, model_folder, seq2seq_folder, single_thread, tiny_tokenizer, write_sources
from tuneforge.config import ConfigError, load_config
from tuneforge.data import pairs
from tuneforge.data.batching import collate
from tuneforge.evaluate import bleu, rouge_l
from tuneforge.data.dataset import prepare
from tuneforge.models import load_tokenizer
from tuneforge.run import load, train
from tuneforge.tasks import Runtime, get

CPU = Runtime(device=torch.device("cpu"), bf16=False, pad_id=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def _cfg(tmp_path, folder, **extra):
    data = {"model": {"name": str(folder), "task": "seq2seq", "max_length": 32},
            "data": {"dataset": str(write_sources(tmp_path / "pairs.jsonl"))},
            "method": {"name": "full"},
            "train": {"epochs": 40, "batch_size": 8, "lr": 1e-2, "precision": "fp32", "log_every": 5},
            "eval": {"generate_samples": 4, "max_new_tokens": 6}, "output_dir": str(tmp_path / "run")}
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def meta(tok, start=7, last_first=False):
    return {"eos": tok.eos_token_id, "decoder_start": start, "last_first": last_first}


def test_outputs_end_in_eos_and_a_cut_keeps_it():
    tok = tiny_tokenizer(template=False)
    eos = tok.eos_token_id
    long = " ".join(["one"] * 40)
    ex = pairs.encode_pairs([("say hello", "hello !"), (long, long)], tok, 8, meta(tok))
    assert ex[0]["labels"] == tok("hello !")["input_ids"] + [eos] and "_cut" not in ex[0]
    assert ex[0]["decoder_input_ids"] == [7] + ex[0]["labels"][:-1]  # teacher forcing: one place right
    assert len(ex[1]["input_ids"]) == 8 and len(ex[1]["labels"]) == 8 and ex[1]["labels"][-1] == eos
    assert ex[1]["_cut"]


@pytest.mark.parametrize("suffix", ["<|end|>", "<|end|> <|system|>"])
def test_a_tokenizer_that_ends_outputs_itself_keeps_its_ending(suffix):
    """No second end-of-sequence token, and a cut output keeps the tokenizer's ending (mBART-cc25's language code
    after </s>, which its decoder starts from: ``last_first``)."""
    tok = ending(tiny_tokenizer(template=False), suffix)
    marks = tok.convert_tokens_to_ids(suffix.split())
    last_first = len(marks) > 1
    long = " ".join(["one"] * 40)
    ex = pairs.encode_pairs([("say hello", "hello !"), (long, long)], tok, 8, meta(tok, 7, last_first))
    words = tok("hello !", add_special_tokens=False)["input_ids"]
    assert ex[0]["labels"] == words + marks
    assert ex[0]["decoder_input_ids"] == [marks[-1] if last_first else 7] + ex[0]["labels"][:-1]
    assert len(ex[1]["labels"]) == 8 and ex[1]["labels"][-len(marks):] == marks and ex[1]["_cut"]
    assert ex[1]["input_ids"][-len(marks):] == marks and len(ex[1]["input_ids"]) == 8


def test_decoder_labels_pad_to_their_own_length():
    tok = tiny_tokenizer(template=False)
    ex = pairs.encode_pairs([("what is the capital of france ?", "paris ."), ("say hi", "hi")], tok, 32, meta(tok, 1))
    batch = collate(ex, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 7) and batch["labels"].shape == (2, 3)
    assert batch["labels"][1].tolist()[-1] == -100 and batch["decoder_input_ids"][1].tolist()[-1] == 1
    assert batch["attention_mask"].sum().item() == 7 + 2


def test_the_models_end_of_sequence_token_stands_in_for_a_tokenizers(tmp_path):
    folder = seq2seq_folder(tmp_path / "t5")
    cfg = load_config(None, _cfg(tmp_path, folder))
    tok = tiny_tokenizer(template=False)
    eos = tok.eos_token_id
    tok.eos_token = None
    assert pairs.decoding(folder, cfg, tok) == {"eos": eos, "decoder_start": tok.pad_token_id, "last_first": False}
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": None}))
    (folder / "generation_config.json").unlink()
    with pytest.raises(ConfigError, match="names no end-of-sequence token .* would never end"):
        pairs.decoding(folder, cfg, tok)


@pytest.mark.parametrize("family", ["t5", "bart", "mbart"])
def test_the_loss_is_hugging_faces_and_its_gradients(family, tmp_path):
    """Summed over output tokens / their number = the model's own loss given ``labels`` (it shifts them itself),
    gradients included: our teacher-forced decoder inputs are the model's (mBART's start from the output's last
    token, its language code)."""
    folder = seq2seq_folder(tmp_path / family, family)
    cfg = load_config(None, _cfg(tmp_path, folder))
    tok = load_tokenizer(folder)
    batch = collate(pairs.encode_pairs(QA[:5], tok, 32, pairs.decoding(folder, cfg, tok)), tok.pad_token_id)
    grads = []
    for ours in (True, False):
        model = AutoModelForSeq2SeqLM.from_pretrained(folder).train(False)
        if ours:
            loss = get("seq2seq").loss(model, batch) / get("seq2seq").units(batch)
        else:
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
        loss.backward()
        grads.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("seq2seq")
    return train(_cfg(tmp_path, seq2seq_folder(tmp_path / "t5")), progress=False)


def test_training_lowers_the_loss_and_answers_some_right(trained):
    m = trained.metrics
    assert m["task"] == "seq2seq"
    assert m["test_after"]["loss"] < m["test_before"]["loss"] - 1.5
    samples = [json.loads(line) for line in (trained.run_dir / "samples_after.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and set(samples[0]) == {"prompt", "reference", "generated"}
    generated, references = [s["generated"] for s in samples], [s["reference"] for s in samples]
    assert m["test_after"]["rouge_l"] == pytest.approx(rouge_l(generated, references))  # scored from these outputs
    assert m["test_after"]["bleu"] == pytest.approx(bleu(generated, references)) and any(generated)
    assert "test perplexity" in trained.table


def test_predictions_reload_and_batch_like_single_inputs(trained, capsys):
    run = load(trained.run_dir, "cpu")
    texts = [q for q, _ in QA]
    together = run.predict(texts)
    assert [p["text"] for p in together] == texts
    assert [p["output"] for p in together] == [run.predict([t])[0]["output"] for t in texts]  # padding changes none
    assert sum(p["output"] == a for p, (_, a) in zip(together, QA)) >= 4  # 9 of 18 when written
    capsys.readouterr()
    long = run.predict([" ".join(["please"] * 40) + " say hello", "say hello"])
    assert len(long) == 2 and "note: 1 input(s) longer than model.max_length=32 tokens keep their first 32" in \
        capsys.readouterr().err
    with pytest.raises(ConfigError, match="generation needs a causal_lm run.*tuneforge predict RUN TEXT"):
        run.generate(["say hi"])


def test_another_file_in_another_layout_scores_the_same(trained, tmp_path):
    """``evaluate --data``: the test rows as one-exchange conversations score as the source/target rows do."""
    run = load(trained.run_dir, "cpu")
    rows = [json.loads(line) for line in (trained.run_dir / "samples_after.jsonl").read_text().splitlines()]
    plain, chat = tmp_path / "plain.jsonl", tmp_path / "chat.jsonl"
    plain.write_text("".join(json.dumps({"source": r["prompt"], "target": r["reference"]}) + "\n" for r in rows))
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["prompt"]},
                                                     {"role": "assistant", "content": r["reference"]}]}) + "\n"
                            for r in rows))
    a, b = run.evaluate(str(plain)), run.evaluate(str(chat))
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["tokens"] == b["tokens"] > len(rows)
    assert [s["generated"] for s in a["samples"]] == [r["generated"] for r in rows[:3]]


def test_an_mbart_decoder_generates_from_where_it_trained(tmp_path):
    """mBART trains its decoder from the output's last token (cc25's language code), not from
    decoder_start_token_id: generation must start there too (from EOS it answered 3 of 18 right, 17 from there)."""
    result = train(_cfg(tmp_path, seq2seq_folder(tmp_path / "mbart", "mbart")), progress=False)
    run = load(result.run_dir, "cpu")
    assert run.meta["last_first"] and run.meta["decoder_start"] == run.tokenizer.convert_tokens_to_ids("<|system|>")
    outputs = [p["output"] for p in run.predict([q for q, _ in QA])]
    assert sum(o == a for o, (_, a) in zip(outputs, QA)) >= 12
    merged = AutoModelForSeq2SeqLM.from_pretrained(run.merge(tmp_path / "merged")).eval()  # its generate() too
    enc = run.tokenizer([q for q, _ in QA], return_tensors="pt", padding=True)
    new = merged.generate(**enc, max_new_tokens=6, do_sample=False, num_beams=1)
    assert [t.strip() for t in run.tokenizer.batch_decode(new, skip_special_tokens=True)] == outputs



def test_an_mbart_peft_export_says_where_its_decoder_starts(tmp_path):
    """The base folder's generation config starts mBART's decoder at EOS, not where the adapter trained."""
    from tuneforge.export import export
    cfg = _cfg(tmp_path, seq2seq_folder(tmp_path / "mbart", "mbart"), method={"name": "lora"},
               train={"epochs": None, "max_steps": 1}, eval={"generate_samples": 0, "before": False})
    run = load(train(cfg, progress=False).run_dir, "cpu")
    readme = (export(run, tmp_path / "peft", "peft") / "README.md").read_text()
    assert f"Generate with `decoder_start_token_id={run.meta['decoder_start']}`" in readme


def test_forgetting_is_measured_on_reference_pairs(tmp_path):
    reference = tmp_path / "reference.jsonl"
    reference.write_text("".join(json.dumps({"source": f"say {w}", "target": f"{w} ."}) + "\n"
                                 for w in ("yes", "no", "hello", "hi", "blue", "green")))
    cfg = _cfg(tmp_path, seq2seq_folder(tmp_path / "t5"), train={"epochs": 2},
               forgetting={"reference": str(reference), "reference_examples": 2})
    f = train(cfg, progress=False).metrics["forgetting"]
    assert f["metric"] == "perplexity" and f["unit"] == "%" and f["before"] > 1 and f["after"] != f["before"]


def test_the_cli_prints_each_output_and_takes_a_shorter_limit(trained, capsys):
    from tuneforge import cli

    texts = ["what is your name ?", "say hello"]
    assert cli.main(["predict", str(trained.run_dir), *texts, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == texts and all(set(r) == {"text", "output"} for r in rows)
    assert cli.main(["predict", str(trained.run_dir), *texts, "--max-new-tokens", "1"]) == 0
    short = capsys.readouterr().out.splitlines()
    tok = load(trained.run_dir, "cpu").tokenizer
    assert len(short) == 2 and all(len(tok(s, add_special_tokens=False)["input_ids"]) <= 1 for s in short)
    assert any(len(tok(r["output"], add_special_tokens=False)["input_ids"]) > 1 for r in rows)
    assert cli.main(["predict", str(trained.run_dir), "x", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens must be at least 1" in capsys.readouterr().err
    assert get("seq2seq").describe({"text": "x", "output": "one\ntwo"}) == "one\\ntwo"  # one line per input


def test_merged_and_peft_exports_load_in_transformers(tmp_path):
    cfg = _cfg(tmp_path, seq2seq_folder(tmp_path / "t5"), method={"name": "lora", "rank": 4},
               train={"epochs": 2})
    run = load(train(cfg, progress=False).run_dir, "cpu")
    from tuneforge.export import export
    tok = run.tokenizer
    batch = collate(pairs.encode_pairs(QA[:3], tok, 32, run.meta), tok.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    with torch.no_grad():
        ours = run.model.eval()(**inputs).logits
        merged = AutoModelForSeq2SeqLM.from_pretrained(export(run, tmp_path / "merged", "merged")).eval()
        torch.testing.assert_close(merged(**inputs).logits, ours, rtol=1e-4, atol=1e-4)
        peft_dir = export(run, tmp_path / "peft", "peft")
        config = json.loads((peft_dir / "adapter_config.json").read_text())
        assert config["task_type"] == "SEQ_2_SEQ_LM"
        base = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5")
        theirs = PeftModel.from_pretrained(base, peft_dir).eval()
        torch.testing.assert_close(theirs(**inputs).logits, ours, rtol=1e-4, atol=1e-4)


def test_a_decoder_only_model_is_refused(tmp_path):
    folder = model_folder(tmp_path / "llama")
    cfg = load_config(None, _cfg(tmp_path, folder))
    with pytest.raises(ConfigError, match=r"is not an encoder-decoder model \(llama\).*model.task=causal_lm"):
        prepare(cfg, get("seq2seq"), load_tokenizer(folder))


def test_rows_without_one_input_and_one_output_are_named(tmp_path):
    task = get("seq2seq")
    cfg = load_config(None, _cfg(tmp_path, tmp_path))
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "bye"}, {"role": "assistant", "content": "bye"}]}
    assert "one output per input; this conversation has 4 messages" in task.row_problem(chat, cfg)
    assert task.row_problem({"source": "hi", "target": ""}, cfg).startswith("empty answer")
    text = load_config(None, _cfg(tmp_path, tmp_path, data={"format": "text"}))
    assert "holds plain text only" in task.row_problem({"text": "hello"}, text)
    sys_cfg = load_config(None, _cfg(tmp_path, tmp_path, data={"system_prompt": "answer:"}))
    assert pairs.source_target({"source": "hi", "target": "yo"}, sys_cfg, "") == ("answer: hi", "yo")


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_virtual_token_methods_are_refused_on_an_encoder_decoder(method, tmp_path):
    cfg = _cfg(tmp_path, seq2seq_folder(tmp_path / "t5"), method={"name": method})
    with pytest.raises(ConfigError, match="encoder-decoder"):
        train(cfg, progress=False)


@pytest.mark.parametrize("method", ["freeze", "adapter", "ia3", "bitfit"])
def test_the_other_methods_train_both_stacks_and_merge(method, tmp_path):
    """On BART (bias terms for BitFit): the loss falls; a merged export gives the run's logits and differs from the
    base in the encoder's and the decoder's layers (freeze: its last two layers, the decoder's); the adapter,
    which does not merge, is refused."""
    from tuneforge.export import export

    folder = seq2seq_folder(tmp_path / "bart", "bart")
    cfg = _cfg(tmp_path, folder, method={"name": method}, train={"epochs": 3, "lr": 3e-2})
    result = train(cfg, progress=False)
    assert result.metrics["test_after"]["loss"] < result.metrics["test_before"]["loss"]
    run = load(result.run_dir, "cpu")
    if method == "adapter":
        with pytest.raises(ConfigError, match="cannot be merged"):
            export(run, tmp_path / "merged", "merged")
        return
    batch = collate(pairs.encode_pairs(QA[:3], run.tokenizer, 32, run.meta), run.tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    merged = AutoModelForSeq2SeqLM.from_pretrained(export(run, tmp_path / "merged", "merged")).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, run.model.eval()(**inputs).logits, rtol=1e-4, atol=1e-4)
    base = AutoModelForSeq2SeqLM.from_pretrained(folder).state_dict()
    changed = {k.split(".")[1] for k, v in merged.state_dict().items() if ".layers." in k and not torch.equal(v, base[k])}
    assert changed == ({"decoder"} if method == "freeze" else {"encoder", "decoder"})


def test_a_test_input_given_several_outputs_is_generated_once_and_scored_against_all(trained):
    run = load(trained.run_dir, "cpu")
    raw = [{"source": "say yes", "target": "yes ."}, {"source": "say no", "target": "no ."},
           {"source": "say yes", "target": "yes yes ."}]
    m = run.task._generation_metrics(run.model, [(r["source"], r["target"]) for r in raw], run.rt, run.cfg, run.meta,
                                     run.tokenizer, None, None, False)
    assert m["generated"] == 2 and m["samples"][0]["references"] == ["yes .", "yes yes ."]
    answers = [s["generated"] for s in m["samples"]]
    assert m["bleu"] == pytest.approx(bleu(answers, [["yes .", "yes yes ."], ["no ."]]))


def test_generation_stops_at_the_decoders_position_table(tmp_path):
    """BART's decoder embeds at most max_position_embeddings positions (64 here): asking for 100 new tokens died
    with an IndexError in train's evaluation and in predict."""
    from tuneforge.tasks.seq2seq import generate_outputs

    folder = seq2seq_folder(tmp_path / "bart", "bart")
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(folder), load_tokenizer(folder)
    model.generation_config.eos_token_id = None  # never stops early: every output is as long as allowed
    inputs = [tok("say hello")["input_ids"]]
    start = {"decoder_start": model.config.decoder_start_token_id}
    (out,) = generate_outputs(model, tok, inputs, CPU, start, max_new_tokens=100, batch_size=1)
    assert len(tok(out, add_special_tokens=False)["input_ids"]) == 64
