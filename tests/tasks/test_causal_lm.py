"""Causal-LM task: head-only loss = HF loss, training lowers the loss, generation reloads identically, CLI."""
import io
import json
import math
import sys

import pytest
import torch

from tuneforge.data.dataset import prepare
from tuneforge.run import load, train
from conftest import tiny_causal_lm
from lm_helpers import QA, model_folder, single_thread, tiny_tokenizer, write_pairs
from tuneforge import cli
from tuneforge.config import ConfigError, load_config
from tuneforge.data import chat, templates
from tuneforge.generate import Sampling, generate_ids
from tuneforge.models import load_tokenizer
from tuneforge.tasks import Runtime, causal_lm, get

CPU = Runtime(device=torch.device("cpu"), bf16=False, pad_id=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def _batch(tok, max_length=64):
    template = templates.resolve_template(tok, None)
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA[:5]]
    examples = chat.encode_conversations(convs, tok, template, max_length, ["r"] * len(convs))
    from tuneforge.data.batching import collate
    return collate(examples, tok.pad_token_id)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_head_only_loss_equals_the_full_forward_hf_loss(family):
    model, tok = tiny_causal_lm(family), tiny_tokenizer()
    batch = _batch(tok)
    assert (batch["labels"] == -100).any() and (batch["attention_mask"] == 0).any()  # masked prompt + padding
    task = get("causal_lm")
    with torch.no_grad():
        ours = task.loss(model, batch) / task.units(batch)  # the task sums; the loop divides by the units
        hf = model(**batch).loss  # HF shifts labels and averages over kept tokens
    assert causal_lm._backbone(model) is not None  # the fast path was taken
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lm_head_rows_rounded_up_give_the_same_losses_and_gradients(family, monkeypatch):
    model, tok = tiny_causal_lm(family), tiny_tokenizer()
    batch = _batch(tok)
    kept = int((batch["labels"][:, 1:] != -100).sum())
    results = []
    for rows in (1, 64):  # 1: exactly the kept positions; 64: spare rows that count for nothing
        monkeypatch.setattr(causal_lm, "LM_HEAD_ROWS", rows)
        model.zero_grad()
        each = causal_lm.token_nll(model, batch, reduction="none")
        each.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        with torch.no_grad():
            results.append((each.detach(), causal_lm.token_nll(model, batch), grads))
    assert kept % 64 and results[0][0].shape == results[1][0].shape == (kept,)  # one loss per kept position
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_full_forward_fallback_gives_the_same_loss(monkeypatch):
    model, tok = tiny_causal_lm("llama"), tiny_tokenizer()
    batch = _batch(tok)
    with torch.no_grad():
        fast = causal_lm.token_nll(model, batch)
        monkeypatch.setattr(causal_lm, "_backbone", lambda m: None)
        slow = causal_lm.token_nll(model, batch)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def _cfg(tmp_path, folder, **extra):
    data = {"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
            "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))},
            "method": {"name": "lora", "rank": 4},
            "train": {"epochs": 6, "batch_size": 8, "lr": 1e-2, "precision": "fp32", "log_every": 5},
            "eval": {"generate_samples": 4, "max_new_tokens": 6}, "output_dir": str(tmp_path / "run")}
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("causal")
    folder = model_folder(tmp_path / "llama", "llama")
    return train(_cfg(tmp_path, folder), progress=False)


def test_training_lowers_the_test_loss_and_writes_samples(trained):
    m = trained.metrics
    assert m["task"] == "causal_lm"
    assert m["test_after"]["loss"] < m["test_before"]["loss"] - 0.5
    assert m["test_after"]["perplexity"] == pytest.approx(math.exp(m["test_after"]["loss"]))
    assert 0 <= m["test_after"]["bleu"] <= 100 + 1e-9 and 0 <= m["test_after"]["rouge_l"] <= 1  # sacreBLEU: 100.00000000000004 when exact
    samples = [json.loads(line) for line in (trained.run_dir / "samples_after.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and set(samples[0]) == {"prompt", "reference", "generated"}
    assert "test perplexity" in trained.table and "example answers" in trained.table


def test_generation_from_the_run_dir_matches_in_process_generation(trained):
    samples = [json.loads(line) for line in (trained.run_dir / "samples_after.jsonl").read_text().splitlines()]
    assert any(s["generated"] for s in samples)
    run = load(trained.run_dir, "cpu")
    again = run.generate([s["prompt"] for s in samples], max_new_tokens=6)
    assert again == [s["generated"] for s in samples]


def test_evaluate_data_reads_a_file_of_another_layout(trained, tmp_path):
    """The run trained on instruction/output pairs; the same rows as chat messages evaluate alike."""
    run = load(trained.run_dir, "cpu")
    pairs = write_pairs(tmp_path / "pairs.jsonl", repeat=1)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    chat_file = tmp_path / "chat.jsonl"
    chat_file.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["instruction"]},
                                                          {"role": "assistant", "content": r["output"]}]}) + "\n"
                                 for r in rows))
    as_pairs, as_chat = run.evaluate(str(pairs)), run.evaluate(str(chat_file))
    assert as_chat["loss"] == pytest.approx(as_pairs["loss"]) and as_chat["samples"] == as_pairs["samples"]


def test_generated_answers_keep_one_line_each_unless_one_prompt_is_given(trained, capsys, monkeypatch):
    """An answer's own line breaks (code, lists) made stdin's output lines no longer match its input lines."""
    from tuneforge.loaded import Run
    monkeypatch.setattr(Run, "generate", lambda self, prompts, **k: [f"def f():\n\treturn {p!r}" for p in prompts])
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\n\ntwo\n"))
    assert cli.main(["generate", str(trained.run_dir)]) == 0
    assert capsys.readouterr().out == "def f():\\n\\treturn 'one'\n\ndef f():\\n\\treturn 'two'\n"
    assert cli.main(["generate", str(trained.run_dir), "one", "two"]) == 0
    assert capsys.readouterr().out.count("\n") == 2
    assert cli.main(["generate", str(trained.run_dir), "one"]) == 0  # one prompt: the answer as written
    assert capsys.readouterr().out == "def f():\n\treturn 'one'\n"


def test_predict_on_a_causal_run_points_to_generate(trained, capsys):
    assert cli.main(["predict", str(trained.run_dir), "say yes"]) == 2
    assert "use `tuneforge generate RUN_DIR PROMPT...`" in capsys.readouterr().err
    assert cli.main(["predict", str(trained.run_dir), "say yes", "--max-new-tokens", "4"]) == 2  # it does generate
    assert "use `tuneforge generate RUN_DIR PROMPT...`" in capsys.readouterr().err


def test_dash_reads_standard_input_and_double_dash_ends_the_options(trained, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("say yes\nsay no\n"))
    assert cli.main(["generate", str(trained.run_dir), "--max-new-tokens", "4", "--json", "-"]) == 0
    assert [json.loads(x)["prompt"] for x in capsys.readouterr().out.splitlines()] == ["say yes", "say no"]
    for argv in (["--max-new-tokens", "4", "--json", "--", "-say yes"], ["--json", "-say yes", "--max-new-tokens", "4"]):
        assert cli.main(["generate", str(trained.run_dir), *argv]) == 0  # a text with a space is no option
        assert json.loads(capsys.readouterr().out)["prompt"] == "-say yes"
    with pytest.raises(SystemExit):  # argparse's usage error
        cli.main(["generate", str(trained.run_dir), "--bogus", "say"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_the_api_refuses_blank_prompts_in_one_line(trained):
    with pytest.raises(ConfigError, match=r"^prompts\[1\] is empty"):
        load(trained.run_dir, "cpu").generate(["say yes", [{"role": "user", "content": " "}]])


def test_cli_generate_and_chat(trained, capsys, monkeypatch):
    assert cli.main(["generate", str(trained.run_dir), "say yes", "say no", "--max-new-tokens", "4", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["say yes", "say no"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("say yes\r\n\nsay no\n"))  # a line out for every line in
    assert cli.main(["generate", str(trained.run_dir), "--max-new-tokens", "4", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[1] is None and [r["prompt"] for r in rows[::2]] == ["say yes", "say no"]
    assert [r["generated"] for r in rows[::2]] == [x["generated"] for x in lines]
    assert cli.main(["generate", str(trained.run_dir), "say yes", "--sample", "--seed", "3", "--temperature", "0.7"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["generate", str(trained.run_dir), "say yes", "--sample", "--seed", "3", "--temperature", "0.7"]) == 0
    assert capsys.readouterr().out == first  # seeded sampling is reproducible
    monkeypatch.setattr(sys, "stdin", io.StringIO("say yes\nsay no\nexit\n"))
    assert cli.main(["chat", str(trained.run_dir), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("model> ") == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO("say yes\n/quit\nsay no\n"))  # as '/quit' too
    assert cli.main(["chat", str(trained.run_dir), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.count("model> ") == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("say yes\n"))  # EOF ends the chat too
    assert cli.main(["chat", str(trained.run_dir), "--max-new-tokens", "4"]) == 0


def test_generate_refuses_an_empty_prompt_and_reads_temperature_0_as_greedy(trained, capsys, monkeypatch):
    assert cli.main(["generate", str(trained.run_dir), "say yes", "  "]) == 2
    assert "prompt 2 is empty" in capsys.readouterr().err
    assert cli.main(["generate", str(trained.run_dir), "say yes", "caf\udce9"]) == 2  # a Latin-1 byte in argv
    assert capsys.readouterr().err == ("tuneforge: error: prompt 2 is not UTF-8 text (bytes of another encoding?); "
                                       "give it as UTF-8\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("caf\udce9\nsay yes\nexit\n"))
    assert cli.main(["chat", str(trained.run_dir), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "(that message is not UTF-8 text: type it again)" in out and out.count("model> ") == 1
    assert cli.main(["generate", str(trained.run_dir), "say yes", "--max-new-tokens", "4"]) == 0
    greedy = capsys.readouterr().out
    assert cli.main(["generate", str(trained.run_dir), "say yes", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == greedy


def test_chat_refuses_a_plain_text_run_before_the_banner():
    from types import SimpleNamespace
    from tuneforge.config import ConfigError
    from tuneforge.loaded import Run
    text_run = SimpleNamespace(meta={"format": "text"}, files=SimpleNamespace(path="runs/t"),
                               task=SimpleNamespace(name="causal_lm", generates=True))
    Run.check_generates(text_run)  # generate continues a text
    with pytest.raises(ConfigError, match=r"runs/t was trained on plain text, .* chat needs a run trained on"):
        Run.check_generates(text_run, chat=True)


@pytest.mark.parametrize("option", [["--temperature", "-2"], ["--max-new-tokens", "0"], ["--top-p", "2"]])
def test_chat_refuses_bad_options_before_the_banner(trained, capsys, monkeypatch, option):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no message at all: the options must fail on their own
    assert cli.main(["chat", str(trained.run_dir), *option]) == 2
    captured = capsys.readouterr()
    assert "chatting with the model" not in captured.out and captured.err.startswith("tuneforge: error:")


def test_streamed_chat_answer_equals_the_batch_answer(trained):
    run = load(trained.run_dir, "cpu")
    history = [{"role": "user", "content": "say yes"}]
    out = io.StringIO()
    streamed = run.generate([history], max_new_tokens=6, stream=out)[0]
    assert out.getvalue().strip() == streamed == run.generate(["say yes"], max_new_tokens=6)[0]
    with pytest.raises(ConfigError, match=r"top_p \(--top-p\) must be in"):
        run.generate(["say yes"], sample=True, top_p=1.5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_left_padded_batches_generate_what_single_prompts_do(family):
    model, tok = tiny_causal_lm(family), tiny_tokenizer()
    prompts = [chat.prompt_ids(tok, tok.chat_template, [{"role": "user", "content": q}], 32) for q, _ in QA[:6]]
    assert len({len(p) for p in prompts}) > 1  # different lengths: real left padding
    s = Sampling(max_new_tokens=8)
    batched = generate_ids(model, tok, prompts, CPU, s, batch_size=6)
    single = [generate_ids(model, tok, [p], CPU, s)[0] for p in prompts]
    assert batched == single and all(len(b) > 0 for b in batched)


def test_tokenizer_without_pad_token_falls_back_to_eos(tmp_path):
    folder = model_folder(tmp_path / "nopad", "gpt2", pad=False, template=False)
    tok = load_tokenizer(folder)
    assert tok.pad_token_id == tok.eos_token_id
    cfg = _cfg(tmp_path, folder, data={"template": "alpaca", "packing": True},
               train={"epochs": 2}, eval={"generate_samples": 2})
    out = train(cfg, progress=False)
    assert out.metrics["test_after"]["loss"] < out.metrics["test_before"]["loss"]
    run = load(out.run_dir, "cpu")
    assert run.tokenizer.chat_template == templates.TEMPLATES["alpaca"]  # the named template travels with the run
    assert len(run.generate(["say yes", "what is the capital of france ?"], max_new_tokens=3)) == 2


def test_model_without_template_and_no_template_named_is_a_clear_error(tmp_path):
    folder = model_folder(tmp_path / "plain", "llama", template=False)
    cfg = load_config(None, _cfg(tmp_path, folder))
    with pytest.raises(ConfigError, match="no chat template; name one with data.template"):
        prepare(cfg, get("causal_lm"), load_tokenizer(folder))


def test_encode_any_detects_the_layout_of_another_source(tmp_path):
    from tuneforge.data.dataset import source_records

    cfg = load_config(None, {"model": {"task": "causal_lm", "max_length": 32}})  # data.format auto
    path = str(write_pairs(tmp_path / "pairs.jsonl", repeat=1))
    task, tok = get("causal_lm"), tiny_tokenizer()
    records, where = source_records(task, path, cfg)
    assert len(records) == len(QA) and where[0].endswith("pairs.jsonl, row 1")
    pairs = task.encode_any(records, cfg, tok, {"format": "chat", "chat_template": None}, where)  # the run: chat
    as_chat = [{"messages": [{"role": "user", "content": r["instruction"]},
                             {"role": "assistant", "content": r["output"]}]} for r in records]
    assert pairs == task.encode(as_chat, cfg, tok, {"format": "chat", "chat_template": None}, where)


def test_an_encoder_decoder_model_is_refused_not_cut_to_its_decoder(tmp_path):
    """AutoModelForCausalLM loads BART as its decoder alone (BartForCausalLM): the encoder would be dropped."""
    from transformers import BartConfig, BartForConditionalGeneration

    from tiny import save_folder

    config = BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32)
    folder = save_folder(tmp_path / "bart", BartForConditionalGeneration(config), tiny_tokenizer(template=False))
    cfg = load_config(None, {"model": {"name": str(folder), "task": "causal_lm"},
                             "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl"))}})
    with pytest.raises(ConfigError, match=r"is an encoder-decoder model \(bart\).*drop its encoder.*model.task=seq2seq"):
        get("causal_lm").load_model(folder, cfg, {}, 0, torch.device("cpu"))
    with pytest.raises(ConfigError, match="is an encoder-decoder model"):  # not "no chat template" first
        prepare(cfg, get("causal_lm"), load_tokenizer(folder))


def test_a_reasoning_block_before_the_answer_is_not_scored(trained, monkeypatch):
    """A Qwen3-style model answers '<think>\\n\\n</think>\\n\\n' + the answer (its template trains the empty block):
    BLEU and ROUGE-L compared the block too, scoring right answers as wrong."""
    from tuneforge import generate

    run = load(trained.run_dir, "cpu")
    plain = run.evaluate()
    answer_text = generate.answer_text
    monkeypatch.setattr(generate, "answer_text", lambda tok, ids: "<think>\n\n</think>\n\n" + answer_text(tok, ids))
    thinking = run.evaluate()
    assert (thinking["bleu"], thinking["rouge_l"]) == (plain["bleu"], plain["rouge_l"])
    from tuneforge.data import chat  # reasoning traces in the references (distilled R1 data) are not scored either
    split = chat.split_reference
    monkeypatch.setattr(chat, "split_reference", lambda c: (split(c)[0], "<think>sum</think>" + split(c)[1]))
    both = run.evaluate()
    assert (both["bleu"], both["rouge_l"]) == (plain["bleu"], plain["rouge_l"])
    assert generate.without_reasoning("<think>\nsum it\n</think>\n\ntwo .") == "two ."
    assert generate.without_reasoning("<think> cut short by max_new_tokens") == "<think> cut short by max_new_tokens"


def test_a_test_prompt_asked_with_several_answers_is_generated_once_and_scored_against_all(trained):
    from tuneforge.evaluate import bleu, rouge_l

    run = load(trained.run_dir, "cpu")
    raw = [{"instruction": "say yes", "output": "yes ."}, {"instruction": "say no", "output": "no ."},
           {"instruction": "say  yes", "output": "yes yes ."}]  # the same prompt after whitespace normalisation
    m = run.task._generation_metrics(run.model, raw, run.rt, run.cfg, run.meta, run.tokenizer, None, None)
    assert m["generated"] == 2 and [s["prompt"] for s in m["samples"]] == ["say yes", "say no"]
    assert m["samples"][0]["references"] == ["yes .", "yes yes ."] and "references" not in m["samples"][1]
    answers, references = [s["generated"] for s in m["samples"]], [["yes .", "yes yes ."], ["no ."]]
    assert (m["bleu"], m["rouge_l"]) == (pytest.approx(bleu(answers, references)), pytest.approx(rouge_l(answers,
                                                                                                         references)))


def test_a_long_chat_leaves_out_its_oldest_turns_so_answers_keep_their_room(tmp_path, monkeypatch):
    """GPT-2's 64 positions, model.max_length 64: a conversation cut only at the start of its prompt filled the
    table, and every answer from then on came back empty."""
    from tuneforge.generate import chat_loop, encode_prompts, run_template
    from tuneforge.loaded import Run

    folder = model_folder(tmp_path / "gpt2", "gpt2")
    cfg = _cfg(tmp_path, folder, model={"max_length": 64}, train={"max_steps": 1}, eval={"generate_samples": 0})
    with single_thread():
        run = load(train(cfg, progress=False).run_dir, "cpu")
    asked, generate = [], Run.generate
    monkeypatch.setattr(Run, "generate", lambda self, prompts, **k: asked.append(list(prompts[0])) or generate(
        self, prompts, **k))
    turns = iter(["what is the capital of france ? please tell me"] * 8 + ["exit"])
    out = io.StringIO()
    with single_thread():
        chat_loop(run, read=lambda _: next(turns), out=out, max_new_tokens=6)
    assert out.getvalue().count("(earlier turns are left out from here on") == 1
    template = run_template(run.tokenizer, run.meta)
    lengths = [len(encode_prompts(run.tokenizer, [m], template, 10**9, None)[0]) for m in asked]
    assert len(asked) == 8 and max(lengths) <= 64 - 6 and len(asked[-1]) < 15, lengths  # room for 6 new tokens
    assert [m["role"] for m in asked[-1]][0] == "user" and asked[-1][-1]["content"].startswith("what is")
