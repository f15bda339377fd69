"""Causal-LM data: layouts, label masking, truncation, packing, bad input, embedded Q->A / chat sets."""
import json

import pytest

from lm_helpers import TEMPLATE, tiny_tokenizer
from tuneforge.data.dataset import prepare, warnings
from tuneforge.config import ConfigError, load_config
from tuneforge.data import chat, embedded, templates
from tuneforge.tasks import causal_lm

IGNORE = chat.IGNORE


def _conv(*turns):
    roles = ["user", "assistant"] * len(turns)
    return [{"role": r, "content": c} for r, c in zip(roles, turns)]


def _encode(conversations, tok=None, max_length=64, template=None):
    tok = tok or tiny_tokenizer()
    template = templates.resolve_template(tok, template)
    return chat.encode_conversations(conversations, tok, template, max_length, [f"row {i}" for i in range(len(conversations))])


def _kept(tok, example):
    return tok.decode([t for t, y in zip(example["input_ids"], example["labels"]) if y != IGNORE])


def test_pair_masks_the_prompt_and_trains_the_answer():
    tok = tiny_tokenizer()
    (ex,) = _encode([_conv("what is the capital of france ?", "paris .")], tok)
    ids, labels = ex["input_ids"], ex["labels"]
    assert tok.decode(ids) == "<|user|> what is the capital of france ? <|end|> <|assistant|> paris . <|end|>"
    n_prompt = ids.index(tok.convert_tokens_to_ids("<|assistant|>")) + 1
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]  # answer + end-of-turn train (the model learns to stop)
    assert _kept(tok, ex) == "paris . <|end|>"


def test_multi_turn_chat_trains_every_assistant_turn_only():
    tok = tiny_tokenizer()
    messages = [{"role": "system", "content": "you are a bot"}] + _conv("hi", "hello !", "how are you ?", "i am fine .")
    (ex,) = _encode([messages], tok)
    assert _kept(tok, ex) == "hello ! <|end|> i am fine . <|end|>"
    user = tok.convert_tokens_to_ids("<|user|>")
    for i, t in enumerate(ex["input_ids"]):
        if t == user:
            assert ex["labels"][i] == IGNORE


def test_training_prompt_is_exactly_the_generation_prompt():
    tok = tiny_tokenizer()
    conv = _conv("hi", "hello !", "say yes", "yes .")
    (ex,) = _encode([conv], tok)
    prompt, reference = chat.split_reference(conv)
    ids = chat.prompt_ids(tok, tok.chat_template, prompt, 64)
    assert reference == "yes ."
    assert ex["input_ids"][:len(ids)] == ids and ex["labels"][len(ids)] != IGNORE


def test_long_prompt_is_cut_from_the_left_and_the_answer_kept():
    tok = tiny_tokenizer()
    long_q = " ".join(["one two three"] * 10)
    (full,) = _encode([_conv(long_q, "paris .")], tok, max_length=200)
    (ex,) = _encode([_conv(long_q, "paris .")], tok, max_length=12)
    assert len(ex["input_ids"]) == 12
    assert ex["input_ids"] == full["input_ids"][-12:]  # the start of the prompt went
    assert _kept(tok, ex) == "paris . <|end|>"
    assert ex["_cut"] and "_cut" not in full  # counted in the run's note on examples cut to model.max_length


def test_long_answer_keeps_its_start_and_half_the_row_for_the_prompt():
    tok = tiny_tokenizer()
    answer = " ".join(["blue green"] * 20)
    (ex,) = _encode([_conv("tell me a color", answer)], tok, max_length=10)
    assert len(ex["input_ids"]) == 10
    assert ex["labels"][:5] == [IGNORE] * 5  # prompt tail: max_length // 2 tokens
    assert tok.decode(ex["input_ids"][5:]) == "blue green blue green blue"


def test_answer_truncated_away_is_a_clear_error():
    with pytest.raises(ConfigError, match="row 0: no answer token is left after truncation.*max_length"):
        _encode([_conv("say hello", "hello !")], max_length=1)


def test_long_conversations_keep_their_latest_turns():
    tok = tiny_tokenizer()
    turns = [w for i in range(200) for w in (f"say yes {i}", "yes .")]
    conv = [{"role": "system", "content": "bot"}] + _conv(*turns)
    trimmed = chat.recent(conv, 100)
    assert trimmed[0]["role"] == "system" and trimmed[1]["role"] == "user" and trimmed[-1] == conv[-1]
    assert len(trimmed) < len(conv)
    tpl = templates.resolve_template(tok, None)
    full = chat.encode_conversations([conv], tok, tpl, 10**6, ["r"])[0]  # no trimming at this length
    (short,) = _encode([conv], tok, max_length=32)  # trimmed before rendering, then truncated
    assert short["input_ids"] == full["input_ids"][-32:] and short["labels"] == full["labels"][-32:]
    assert short["_cut"] and "_cut" not in full
    (kept,) = _encode([conv[:1] + conv[-4:]], tok, max_length=64)  # fits: nothing dropped
    assert "_cut" not in kept


def test_turns_whose_characters_overrun_the_bound_but_whose_tokens_fit_are_all_kept():
    tok = tiny_tokenizer()  # runs of spaces: many characters, no tokens (code, tables)
    conv = [{"role": "system", "content": "bot"}] + _conv("say yes", "yes .", "say no", "no" + " " * 600 + "no")
    tpl = templates.resolve_template(tok, None)
    (full,) = chat.encode_conversations([conv], tok, tpl, 10**6, ["r"])
    assert len(chat.recent(conv, 8 * 64)) < len(conv) and len(full["input_ids"]) < 64
    (got,) = _encode([conv], tok, max_length=64)
    assert got == full and "_cut" not in got  # the first exchange still trains; no "longer than" note
    words = _conv(*["x" * 40] * 20)  # 40 characters, one token each: the bound drops turns, all of them fit
    (whole,) = chat.encode_conversations([words], tok, tpl, 10**6, ["r"])
    assert _encode([words], tok, max_length=64) == [whole] and len(whole["input_ids"]) < 64


def test_packing_keeps_whole_examples_and_blocks_cross_example_labels():
    tok = tiny_tokenizer()
    examples = _encode([_conv(q, a) for q, a in [("say yes", "yes ."), ("say no", "no ."), ("hi", "hello !"),
                                                  ("what is the capital of france ?", "paris .")] * 5], tok)
    rows = chat.pack(examples, 32)
    assert len(rows) < len(examples)
    assert all(len(r["input_ids"]) <= 32 for r in rows)
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(e["input_ids"]) for e in examples)
    start = tok.convert_tokens_to_ids("<|user|>")
    for row in rows:  # every example starts with <|user|>, whose label is masked and whose position is 0
        assert len(row["position_ids"]) == len(row["input_ids"])
        for i, t in enumerate(row["input_ids"]):
            assert (row["position_ids"][i] == 0) is (t == start)
            if t == start:
                assert row["labels"][i] == IGNORE
            else:
                assert row["position_ids"][i] == row["position_ids"][i - 1] + 1
    flat = sorted(tuple(e["input_ids"]) for e in examples)
    cut = []
    for row in rows:
        ids = row["input_ids"]
        bounds = [i for i, t in enumerate(ids) if t == start] + [len(ids)]
        cut += [tuple(ids[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert sorted(cut) == flat  # each example exactly once, never split


def test_plain_text_trains_every_token_in_rows_of_max_length():
    tok = tiny_tokenizer()
    text = " ".join(["the cat eats fish ."] * 10)
    rows = chat.encode_texts([text], tok, 16)
    assert [len(r["input_ids"]) for r in rows] == [16, 16, 16, 3]  # 50 words + EOS
    assert all(r["labels"] == r["input_ids"] for r in rows)
    assert rows[-1]["input_ids"][-1] == tok.eos_token_id


def test_named_template_for_a_model_without_one():
    tok = tiny_tokenizer(template=False)
    with pytest.raises(ConfigError, match="no chat template; name one with data.template"):
        templates.resolve_template(tok, None)
    with pytest.raises(ConfigError, match="unknown template 'chatml2'"):
        templates.resolve_template(tok, "chatml2")
    (ex,) = _encode([_conv("say yes", "yes .")], tok, template="alpaca")
    assert _kept(tok, ex) == "yes . <|end|>"
    assert "### Response:" in templates.render(tok, templates.TEMPLATES["alpaca"], _conv("say yes"), True)


def test_a_template_ending_replies_in_plain_text_warns_that_answers_would_never_end(capsys):
    tok = tiny_tokenizer()
    plain = "{% for m in messages %}{{ m['role'] + ' : ' + m['content'] + '\n' }}{% endfor %}"  # no end mark
    endless = _encode([_conv("say yes", "yes ."), _conv("say no", "no .")], tok, template=plain)
    assert chat.warn_endless(endless, tok, plain) and "generated answers run on" in capsys.readouterr().err
    ending = _encode([_conv("say yes", "yes .")], tok)
    assert not chat.warn_endless(ending, tok, templates.resolve_template(tok, None)) and not capsys.readouterr().err


def test_a_tokenizers_named_templates_without_a_default_are_listed_and_chosen_by_name():
    tok = tiny_tokenizer(template=False)  # transformers keeps a list of {name, template} as a dict
    tok.chat_template = {"chatml": TEMPLATE, "tool_use": "{{ raise_exception('tools') }}"}
    with pytest.raises(ConfigError, match=r"has chat templates named chatml, tool_use but none named 'default'; "
                                          r"choose one with data.template \(e.g. data.template=chatml\)"):
        templates.resolve_template(tok, None)  # was: 'the model's tokenizer has no chat template'
    assert templates.resolve_template(tok, "chatml") == TEMPLATE
    tok.chat_template = {"default": TEMPLATE, "tool_use": "x"}
    assert templates.resolve_template(tok, None) == TEMPLATE


def test_a_system_prompt_the_template_refuses_names_the_setting_not_a_row():
    tok = tiny_tokenizer()
    no_system = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                 "{% endif %}" + TEMPLATE)
    assert templates.resolve_template(tok, no_system) == no_system
    with pytest.raises(ConfigError, match=r"^data.system_prompt: the chat template refuses a system message \(System "
                                          r"role not supported\); unset data.system_prompt"):
        templates.resolve_template(tok, no_system, "be brief .")  # was: 'row 1: ... fix or remove the row'


def test_preparing_with_a_system_prompt_the_template_refuses_names_the_setting(tmp_path):
    rows = [{"instruction": "say yes", "output": "yes ."}] * 4
    tok = tiny_tokenizer()
    tok.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}" + TEMPLATE
    cfg = load_config(None, {"model": {"task": "causal_lm"}, "data": {"dataset": _write(tmp_path, rows),
                                                                       "system_prompt": "be brief ."}})
    with pytest.raises(ConfigError, match=r"^data.system_prompt: the chat template refuses a system message"):
        prepare(cfg, causal_lm.Task(), tok)


def _write(tmp_path, rows):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("bad,message", [
    ({"messages": [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     r"bad.jsonl, row 2: message 1 has unknown role 'narrator'; use system, user or assistant"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
     r"bad.jsonl, row 2: message 2 \(assistant\) is empty; fill it in or drop the message"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"bad.jsonl, row 2: the conversation has no assistant message"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, r"row 2: the assistant speaks before any user message"),
    ({"messages": "hello"}, r"row 2: column 'messages' is not a JSON list"),
])
def test_bad_conversations_name_file_row_and_fix(tmp_path, bad, message):
    good = {"messages": _conv("hi", "hello !")}
    cfg = load_config(None, {"model": {"task": "causal_lm"}, "data": {"dataset": _write(tmp_path, [good, bad, good])}})
    with pytest.raises(ConfigError, match=message):
        prepare(cfg, causal_lm.Task(), tiny_tokenizer())[1]


def test_pair_with_empty_answer_names_file_and_row(tmp_path):
    rows = [{"instruction": "say yes", "output": "yes ."}] * 3 + [{"instruction": "say no", "output": ""}]
    cfg = load_config(None, {"model": {"task": "causal_lm"}, "data": {"dataset": _write(tmp_path, rows)}})
    with pytest.raises(ConfigError, match=r"bad.jsonl, row 4: empty answer in column 'output'; fill it in or remove the row"):
        prepare(cfg, causal_lm.Task(), tiny_tokenizer())[1]


def test_parquet_chat_and_csv_pairs_with_chosen_columns(tmp_path):
    import pandas as pd

    numbers = "one two three four five six seven eight nine ten".split()
    convs = [_conv("hi", "hello !", f"say {n}", f"{n} .") for n in numbers]  # ten distinct conversations
    pd.DataFrame({"messages": convs}).to_parquet(tmp_path / "chat.parquet")
    cfg = load_config(None, {"model": {"task": "causal_lm"}, "data": {"dataset": str(tmp_path / "chat.parquet")}})
    data = prepare(cfg, causal_lm.Task(), tiny_tokenizer())[1]
    assert data.meta["format"] == "chat" and len(data.train) == 8
    assert _kept(tiny_tokenizer(), data.train[0]).startswith("hello ! <|end|> ")
    pd.DataFrame({"question": [f"say {n}" for n in numbers], "answer": [f"{n} ." for n in numbers]}).to_csv(
        tmp_path / "qa.csv", index=False)
    cfg = load_config(None, {"model": {"task": "causal_lm"}, "data": {
        "dataset": str(tmp_path / "qa.csv"), "text_column": "question", "label_column": "answer"}})
    data = prepare(cfg, causal_lm.Task(), tiny_tokenizer())[1]
    n = data.raw_test[0]["question"].split()[1]
    assert data.meta["format"] == "pairs" and _kept(tiny_tokenizer(), data.test[0]) == f"{n} . <|end|>"
    assert data.raw_test[0] == {"question": f"say {n}", "answer": f"{n} ."}


def test_chatterbot_is_deduplicated_before_splitting():
    records = embedded.load("chatterbot")
    pairs = [(r["instruction"], r["output"]) for r in records]
    assert 900 < len(pairs) == len(set(pairs)) < 1200
    assert {"tech_support", "ai", "trivia"} <= {r["category"] for r in records}
    cfg = load_config(None, {"model": {"task": "causal_lm"}, "data": {"dataset": "chatterbot"}})
    from tuneforge.data.dataset import load_splits
    splits = load_splits(cfg, causal_lm.Task())
    train, val, test = (splits.records[k] for k in ("train", "validation", "test"))
    seen = {(r["instruction"], r["output"]) for r in train}
    assert not seen & {(r["instruction"], r["output"]) for r in test + val}


def test_chitchat_conversations_alternate_from_the_user():
    records = embedded.load("chitchat")
    assert 3500 < len(records) < 7168
    for r in records[:500]:
        roles = [m["role"] for m in r["messages"]]
        assert roles[0] == "user" and "assistant" in roles
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert all(m["content"].strip() for m in r["messages"])


def test_control_strings_inside_texts_are_noted(capsys):
    tok = tiny_tokenizer()
    items = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes <|end|> no"}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}], "a <|end|> text"]
    assert chat.note_control_strings(items, tok, ["f, row 1", "f, row 2", "f, row 3"]) == 2
    err = capsys.readouterr().err
    assert "note: 2 example(s) hold the tokenizer's control string(s) <|end|> (first at f, row 1)" in err
    assert chat.note_control_strings(items[1:2], tok, ["f, row 2"]) == 0 and capsys.readouterr().err == ""


def test_preparing_a_chat_file_notes_its_control_strings(tmp_path, capsys):
    rows = [{"instruction": f"say {w}", "output": f"{w} <|end|>" if i == 0 else w}
            for i, w in enumerate(["yes", "no", "blue", "red", "one", "two", "three", "four", "five", "six"])]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, {"model": {"task": "causal_lm"}, "data": {"dataset": str(path)}})
    prepare(cfg, causal_lm.Task(), tiny_tokenizer())
    assert "1 example(s) hold the tokenizer's control string(s) <|end|>" in capsys.readouterr().err


def test_a_cut_through_an_earlier_reply_keeps_it_as_context_without_training_it():
    I = chat.IGNORE
    # user 1 (3 tokens), reply 1 (4), user 2 (3), the last answer (4): 14 tokens
    ids = list(range(100, 114))
    labels = [I] * 3 + ids[3:7] + [I] * 3 + ids[10:14]
    cut_ids, cut_labels = chat.truncate(ids, labels, answer_start=10, max_length=9)  # cuts inside reply 1
    assert cut_ids == ids[5:14]
    assert cut_labels == [I, I] + [I] * 3 + ids[10:14]  # reply 1's tail: context only; the answer trains
    cut_ids, cut_labels = chat.truncate(ids, labels, answer_start=10, max_length=12)  # cuts inside user 1
    assert cut_labels == [I] + ids[3:7] + [I] * 3 + ids[10:14]  # reply 1 whole: it trains


def test_a_conversation_the_template_refuses_names_the_row_and_the_fix():
    tok = tiny_tokenizer()
    strict = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ConfigError, match=r"^row 0: the chat template cannot render this conversation: Conversation "
                                          r"roles must alternate; fix or remove the row \(the template, not "
                                          r"data\.skip_invalid, decides what it renders\)$"):
        _encode([_conv("say yes", "yes .")[:1] * 2 + _conv("x", "yes .")[1:]], tok, template=strict)


def test_a_refusal_when_dropped_turns_are_rendered_again_names_the_row():
    tok = tiny_tokenizer()  # the bound drops the first exchange; the whole conversation is what the template refuses
    short = ("{% if messages|length > 2 %}{{ raise_exception('too many turns') }}{% endif %}"
             "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    conv = _conv("say yes", "yes .", "say no", "no" + " " * 600 + "no")
    with pytest.raises(ConfigError, match=r"^row 0: the chat template cannot render this conversation: too many turns"):
        _encode([conv], tok, template=short)


# As Qwen3's template does: the reply after the last user message opens with an (empty) think block, earlier
# replies render bare, so an earlier reply renders otherwise once later turns follow.
LAST_THINKS = ("{% set last = namespace(user=0) %}{% for m in messages %}{% if m['role'] == 'user' %}"
               "{% set last.user = loop.index0 %}{% endif %}{% endfor %}"
               "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
               "{% if m['role'] == 'assistant' and loop.index0 > last.user %}{{ 'why because ' }}{% endif %}"
               "{{ m['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def test_an_earlier_reply_rendered_otherwise_once_later_turns_follow_stays_context(tmp_path):
    """Such a template (Qwen3's) was refused ('renders earlier turns differently'); the last reply trains as
    generation continues it, the earlier ones are context and one note says so (one for all splits)."""
    tok = tiny_tokenizer()
    conversations = [_conv("hi", "hello !", "say yes", "yes ."), _conv("say no", "no .")]
    first, second = _encode(conversations, tok, template=LAST_THINKS)
    assert tok.decode(first["input_ids"]) == ("<|user|> hi <|end|> <|assistant|> hello ! <|end|> <|user|> say yes "
                                              "<|end|> <|assistant|> why because yes . <|end|>")
    assert _kept(tok, first) == "why because yes . <|end|>" and _kept(tok, second) == "why because no . <|end|>"
    prompt = chat.prompt_ids(tok, LAST_THINKS, chat.split_reference(conversations[0])[0], None)
    assert first["input_ids"][:len(prompt)] == prompt and first["labels"][len(prompt)] != IGNORE
    assert first["_context"] == 1 and "_context" not in second
    rows = [{"messages": _conv("hi", "hello !", f"say {n}", f"{n} .")} for n in "one two three four five six".split()]
    cfg = load_config(None, {"model": {"task": "causal_lm"}, "data": {"dataset": _write(tmp_path, rows * 2),
                                                                       "template": LAST_THINKS}})
    splits, data = prepare(cfg, causal_lm.Task(), tok)
    notes = [line for line in warnings(splits, data, 64) if "earlier repl" in line]
    assert notes == ["note: the chat template renders 12 earlier repl(ies) in 12 conversation(s) otherwise once later "
                     "turns follow (Qwen3's, for one, gives only the last reply its think block); they stay as context "
                     "and do not train, so each reply that trains is rendered as generation continues it; to train "
                     "them, give each as the last reply of its own conversation"]


def test_a_template_that_closes_the_conversation_with_a_mark_trains_every_reply():
    """Phi-3's template ends a conversation (not a prompt) with its end-of-text: every earlier reply was kept
    from training as if rendered otherwise, and the cut fell inside the next '<|user|>' mark."""
    tok = tiny_tokenizer()
    closes = TEMPLATE.replace("{% endif %}", "{% else %}{{ eos_token }}{% endif %}")
    (ex,) = _encode([_conv("hi", "hello !", "say yes", "yes .")], tok, template=closes)
    assert tok.decode(ex["input_ids"]) == ("<|user|> hi <|end|> <|assistant|> hello ! <|end|> <|user|> say yes <|end|> "
                                           "<|assistant|> yes . <|end|> <|end|>")
    assert _kept(tok, ex) == "hello ! <|end|> yes . <|end|> <|end|>"
    assert "_context" not in ex  # nothing kept from training


def test_a_generation_prompt_that_does_not_start_the_rendered_reply_is_refused():
    tok = tiny_tokenizer()
    thinks_at_generation = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
                            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|> why because' }}{% endif %}")
    with pytest.raises(ConfigError, match=r"^row 0: the chat template's generation prompt \(add_generation_prompt\) "
                                          r"does not start the reply as the template renders it in the conversation "
                                          r"\(the prompt goes on ' why because' where the conversation has 'yes "
                                          r"\.<\|end\|>'\), so what trains is not what generation continues"):
        _encode([_conv("say yes", "yes .")], tok, template=thinks_at_generation)


def test_a_system_prompt_the_template_moves_once_the_reply_follows_is_refused_at_the_start():
    """Mistral v0.3's template puts the system text into the last user message only: every row was refused,
    each naming the row, none the setting."""
    tok = tiny_tokenizer()
    folds = ("{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
             "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' %}{{ '<|user|>' }}"
             "{% if loop.last and sys %}{{ sys + ' ' }}{% endif %}{{ m['content'] + '<|end|>' }}"
             "{% else %}{{ '<|assistant|>' + m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    assert templates.resolve_template(tok, folds) == folds
    with pytest.raises(ConfigError, match=r"^data.system_prompt: with a system message, the chat template's "
                                          r"generation prompt .* \(the prompt goes on 'be brief \. hi"):
        templates.resolve_template(tok, folds, "be brief .")


@pytest.mark.parametrize("start", ["", "\n", "  ", "\n\n  "])
def test_a_system_prompt_put_into_a_template_renders_as_the_run_prompted(start):
    """Exports carry data.system_prompt inside the template; a template's leading newline was dropped (and
    leading spaces kept) by transformers' trim_blocks / lstrip_blocks after the added tag."""
    tok = tiny_tokenizer()
    template = start + TEMPLATE
    asked = [{"role": "user", "content": "say yes"}]
    as_run = templates.render(tok, template, [{"role": "system", "content": 'be "brief" %} .'}] + asked, True)
    assert templates.render(tok, templates.with_system(template, 'be "brief" %} .'), asked, True) == as_run


def test_a_template_broken_without_a_system_prompt_is_not_blamed_on_it():
    tok = tiny_tokenizer()
    broken = TEMPLATE.replace("{{ '<|assistant|>' }}", "{{ '<|assistant|> why' }}")  # prompt != rendered reply
    assert templates.resolve_template(tok, broken, "be brief .") == broken  # each row says what is wrong


def test_the_mark_after_a_reply_is_a_special_token_never_unknown_or_padding():
    tok = tiny_tokenizer()
    assert templates.reply_end_id(tok, TEMPLATE) == tok.convert_tokens_to_ids("<|end|>")
    for after in ["' zzz '", "'<pad>'"]:  # an unknown word; the padding token
        template = TEMPLATE.replace("m['content'] + '<|end|>'", f"m['content'] + {after}")
        assert template != TEMPLATE and templates.reply_end_id(tok, template) is None
