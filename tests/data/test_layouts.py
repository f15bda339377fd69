"""Layouts users already have: OpenAI ``messages``, ShareGPT ``conversations`` (``from``/``value``) and the
common role spellings load as they are and encode exactly like the equivalent OpenAI record; prompt/answer
pairs under their common column names."""
import json

import pytest

from lm_helpers import QA, tiny_tokenizer
from tuneforge.data.dataset import prepare
from tuneforge.config import ConfigError, DataConfig, load_config
from tuneforge.data import chat, layouts, templates
from tuneforge.tasks import causal_lm

OPENAI = [{"role": "system", "content": "you are a bot"}, {"role": "user", "content": "hi"},
          {"role": "assistant", "content": "hello !"}, {"role": "user", "content": "say yes"},
          {"role": "assistant", "content": "yes ."}]


def _sharegpt(user="human", assistant="gpt", system="system", key=("from", "value")):
    spelling = {"system": system, "user": user, "assistant": assistant}
    return [{key[0]: spelling[m["role"]], key[1]: m["content"]} for m in OPENAI]


LAYOUTS = {  # name -> a record holding OPENAI in another layout
    "sharegpt": {"conversations": _sharegpt()},
    "human/bot": {"conversations": _sharegpt(assistant="bot")},
    "user/assistant under conversations": {"conversations": _sharegpt("user", "assistant")},
    "role/content under conversations": {"conversations": OPENAI},
    "from/value under messages": {"messages": _sharegpt("user", "assistant")},
    "role/content with human/gpt": {"messages": _sharegpt(key=("role", "content"))},
    "model, chatgpt, capitals": {"conversations": _sharegpt("Human", "model", "SYSTEM")},
    "chatgpt": {"conversations": _sharegpt(assistant="chatgpt")},
    "LLaMA-Factory system column": {"conversations": _sharegpt()[1:], "system": "you are a bot"},
    "empty system turn dropped, system column used": {
        "conversations": [{"from": "system", "value": ""}] + _sharegpt()[1:], "system": "you are a bot"},
}


def _encode(messages):
    tok = tiny_tokenizer()
    return chat.encode_conversations([messages], tok, templates.resolve_template(tok, None), 64, ["row 1"])[0]


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_reads_and_encodes_like_the_openai_record(name):
    record, d = LAYOUTS[name], DataConfig()
    fmt = layouts.detect_format(set(record), d, "f.jsonl")
    assert fmt == "chat"
    messages = layouts.to_messages(record, fmt, d, "f.jsonl, row 1")
    assert messages == OPENAI
    assert _encode(messages) == _encode(layouts.to_messages({"messages": OPENAI}, "chat", d, "r"))


def test_the_conversations_own_system_turn_wins_over_column_and_config():
    record = {"conversations": _sharegpt(), "system": "be brief"}
    assert layouts.to_messages(record, "chat", DataConfig(system_prompt="cfg"), "r")[0]["content"] == "you are a bot"
    record = {"conversations": _sharegpt()[1:]}
    assert layouts.to_messages(record, "chat", DataConfig(system_prompt="cfg"), "r")[0]["content"] == "cfg"
    alpaca = {"instruction": "add", "output": "3", "system": "be brief"}  # LLaMA-Factory's alpaca system column
    assert layouts.to_messages(alpaca, "pairs", DataConfig(), "r")[0] == {"role": "system", "content": "be brief"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _prepare(dataset, **data):
    cfg = load_config(None, {"model": {"task": "causal_lm"}, "data": {"dataset": dataset, **data}})
    return prepare(cfg, causal_lm.Task(), tiny_tokenizer())[1]


def test_sharegpt_jsonl_trains_exactly_like_openai_messages(tmp_path):
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA[:10]]
    openai = _prepare(_write(tmp_path / "openai.jsonl", [{"messages": c} for c in convs]))
    rows = [{"conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                               for m in c]} for c in convs]
    assert rows[0] == {"conversations": [{"from": "human", "value": QA[0][0]}, {"from": "gpt", "value": QA[0][1]}]}
    sharegpt = _prepare(_write(tmp_path / "sharegpt.jsonl", rows))
    assert sharegpt.meta["format"] == openai.meta["format"] == "chat"
    for split in ("train", "validation", "test"):
        assert getattr(sharegpt, split) == getattr(openai, split) and getattr(openai, split)


def test_parquet_conversations_of_mixed_message_keys(tmp_path):
    import pandas as pd

    rows = [_sharegpt(), OPENAI] * 5  # one struct column holding from/value and role/content (the others null)
    pd.DataFrame({"conversations": rows}).to_parquet(tmp_path / "chat.parquet")
    data = _prepare(str(tmp_path / "chat.parquet"))
    examples = data.train + data.validation + data.test
    assert data.meta["format"] == "chat" and len(examples) == 10  # duplicates: kept together in one split
    assert all(ex == _encode(OPENAI) for ex in examples)


def test_a_conversation_column_of_another_name_is_chosen_with_text_column(tmp_path):
    path = _write(tmp_path / "lmsys.jsonl", [{"conversation": OPENAI}] * 10)
    data = _prepare(path, format="chat", text_column="conversation")
    assert (data.train + data.validation + data.test)[0] == _encode(OPENAI)


@pytest.mark.parametrize("role,message", [
    ("narrator", r"bad.jsonl, row 2: message 2 has unknown role 'narrator'; use system, user or assistant "
                 r"\(also human for user; gpt, bot, model or chatgpt for assistant\); fix the row"),
    ("observation", r"bad.jsonl, row 2: message 2 has tool role 'observation'; .*drop those messages or the row;"),
    ("function_call", r"bad.jsonl, row 2: message 2 has tool role 'function_call'"),
    ("tool", r"bad.jsonl, row 2: message 2 has tool role 'tool'"),
])
def test_unknown_and_tool_roles_name_file_row_and_role(tmp_path, role, message):
    good = {"conversations": _sharegpt()[1:3]}
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": role, "value": "x"},
                             {"from": "gpt", "value": "hello !"}]}
    with pytest.raises(ConfigError, match=message) as err:
        _prepare(_write(tmp_path / "bad.jsonl", [good, bad, good]))
    assert "\n" not in str(err.value)


def test_malformed_sharegpt_messages_are_named():
    with pytest.raises(ConfigError, match=r"r: message 1 must be an object with 'role' and 'content' "
                                          r"\(or 'from' and 'value'\)"):
        layouts.to_messages({"conversations": [{"from": "human", "text": "hi"}]}, "chat", DataConfig(), "r")
    with pytest.raises(ConfigError, match=r"r: message 2 \(assistant\) is empty"):
        layouts.to_messages({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": " "}]},
                         "chat", DataConfig(), "r")
    with pytest.raises(ConfigError, match="give a 'messages' or 'conversations' column"):
        layouts.detect_format({"conversation", "id"}, DataConfig(), "f.jsonl")


@pytest.mark.parametrize("keys,expected", [({"messages"}, "chat"), ({"instruction", "input", "output"}, "pairs"),
                                           ({"text", "label"}, "pairs"), ({"text", "source"}, "text"),
                                           ({"prompt", "completion"}, "pairs"), ({"question", "answer", "id"}, "pairs"),
                                           ({"instruction", "context", "response"}, "pairs"),
                                           ({"query", "response"}, "pairs"), ({"input", "output"}, "pairs")])
def test_auto_detects_the_layout(keys, expected):
    assert layouts.detect_format(keys, DataConfig(), "f.jsonl") == expected


def test_chosen_columns_and_alpaca_input_make_pairs():
    d = DataConfig(text_column="question", label_column="answer")
    assert layouts.to_messages({"question": "q", "answer": "a"}, "pairs", d, "r")[1] == \
        {"role": "assistant", "content": "a"}
    m = layouts.to_messages({"instruction": "add", "input": "1 2", "output": "3"}, "pairs",
                            DataConfig(system_prompt="be brief"), "r")
    assert [x["role"] for x in m] == ["system", "user", "assistant"] and m[1]["content"] == "add\n\n1 2"
    with pytest.raises(ConfigError, match="cannot tell the data layout"):
        layouts.detect_format({"foo", "bar"}, DataConfig(), "f.csv")


@pytest.mark.parametrize("record, prompt, answer", [
    ({"prompt": "p", "completion": "c"}, "p", "c"),  # TRL / OpenAI prompt-completion
    ({"question": "q", "answer": "a", "id": 3}, "q", "a"),
    ({"instruction": "do", "context": "ctx", "response": "r", "category": "qa"}, "do\n\nctx", "r"),  # Dolly
    ({"query": "q", "response": "r"}, "q", "r"),
    ({"input": "i", "output": "o"}, "i", "o"),  # Alpaca without an instruction: input is the prompt
    ({"instruction": "do", "input": "", "output": "o"}, "do", "o"),
])
def test_common_pair_columns_make_a_two_turn_conversation(record, prompt, answer):
    assert layouts.to_messages(record, layouts.detect_format(set(record), DataConfig(), "f"), DataConfig(), "r") == \
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_conversational_prompt_completion_rows_join_their_messages():
    """TRL's conversational prompt-completion: lists of messages in both columns (or a string answer)."""
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    for completion in ([{"role": "assistant", "content": "hello"}], "hello"):
        assert layouts.to_messages({"prompt": prompt, "completion": completion}, "pairs", DataConfig(), "r") == \
            prompt + [{"role": "assistant", "content": "hello"}]
    with pytest.raises(ConfigError, match="r: the conversation has no assistant message"):
        layouts.to_messages({"prompt": prompt, "completion": [{"role": "user", "content": "x"}]}, "pairs",
                            DataConfig(), "r")


def test_openai_content_parts_are_their_text_and_other_parts_are_refused():
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]
    got = layouts.to_messages({"messages": parts}, "chat", DataConfig(), "r")
    assert [m["content"] for m in got if m["role"] != "system"] == ["hi\nthere", "hello"]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
             {"role": "assistant", "content": "a cat"}]
    with pytest.raises(ConfigError, match="message 1 has a content part of type 'image_url'; only text parts"):
        layouts.to_messages({"messages": image}, "chat", DataConfig(), "r")
    with pytest.raises(ConfigError, match="message 2 has an object as its content"):
        layouts.to_messages({"messages": [parts[0], {"role": "assistant", "content": {"a": 1}}]}, "chat",
                            DataConfig(), "r")


@pytest.mark.parametrize("record, fmt, column, kind", [
    ({"text": {"body": "a"}}, "text", "text", "an object"),
    ({"instruction": "q", "output": {"x": "y"}}, "pairs", "output", "an object"),
    ({"instruction": "q", "input": ["a", "b"], "output": "y"}, "pairs", "input", "a list"),
    ({"instruction": "q", "output": "y", "system": ["be brief"]}, "pairs", "system", "a list"),
])
def test_an_object_or_list_where_text_belongs_is_refused_not_trained_as_its_repr(record, fmt, column, kind):
    d = load_config(None, {"model": {"task": "causal_lm"}}).data
    with pytest.raises(ConfigError, match=rf"^f\.jsonl, row 3: column '{column}': {kind} \(.*\) where text belongs"):
        layouts.to_messages(record, fmt, d, "f.jsonl, row 3")


def test_a_prompt_without_its_answer_column_says_which_is_missing():
    d = load_config(None, {"model": {"task": "causal_lm"}}).data
    with pytest.raises(ConfigError, match=r"^f\.jsonl, row 4: 'instruction' without an answer \('output' or "
                                          r"'response' is missing\)$"):
        layouts.detect_format({"instruction", "input"}, d, "f.jsonl, row 4")


def test_an_empty_system_message_counts_as_none_even_before_a_real_one():
    conv = [{"role": "system", "content": ""}, {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert layouts.to_messages({"messages": conv}, "chat", DataConfig(), "r")[0] == {"role": "system",
                                                                                      "content": "be brief"}


def test_a_chat_row_without_a_conversation_column_names_the_columns_it_has():
    with pytest.raises(ConfigError, match=r"^f, row 2: no 'messages' or 'conversations' column \(columns: "
                                          r"instruction, output\)"):
        layouts.to_messages({"instruction": "q", "output": "a"}, "chat", DataConfig(), "f, row 2")


def test_mixed_layouts_name_where_each_first_appears(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
    rows += [{"instruction": f"q {i}", "output": "a"} for i in range(7)]
    path = _write(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(ConfigError, match=r"the rows mix layouts: chat \(first at \S*mixed\.jsonl, row 1\), "
                                          r"pairs \(first at \S*mixed\.jsonl, row 4\)"):  # file rows, not split order
        _prepare(path)
    cfg = load_config(None, {"model": {"task": "causal_lm"}})  # evaluate --data / replay / reference: the same
    with pytest.raises(ConfigError, match=r"the rows mix layouts: chat \(first at f, row 1\), pairs \(first at f, "
                                          r"row 4\)"):
        causal_lm.Task().source_meta(rows, cfg, {"format": "chat"}, [f"f, row {i}" for i in range(1, 11)])


def test_a_pair_row_missing_its_answer_is_named_as_such_among_pairs(tmp_path):
    rows = [{"query": f"say hi {i}", "reply": "hi"} for i in range(9)] + [{"query": "say yes"}]
    path = _write(tmp_path / "qr.jsonl", rows)
    with pytest.raises(ConfigError, match=r"the rows mix layouts: pairs \(first at \S*qr\.jsonl, row 1\), text \(first "
                                          r"at \S*qr\.jsonl, row 10\) \(the text rows hold 'query' without 'reply': "
                                          r"pairs missing their answer\?\); give one data set one layout"):
        _prepare(path, text_column="query", label_column="reply")


def test_an_answers_indentation_is_kept_and_only_trailing_space_and_leading_blank_lines_go():
    code = {"instruction": "finish it", "output": "\n    return x + 0\n  \n"}
    assert layouts.to_messages(code, "pairs", DataConfig(), "r")[1] == {"role": "assistant",
                                                                         "content": "    return x + 0"}
    chat = {"messages": [{"role": " User ", "content": "hi "}, {"role": "assistant", "content": "\tyo\n"}]}
    assert layouts.to_messages(chat, "chat", DataConfig(), "r") == [{"role": "user", "content": "hi"},
                                                                    {"role": "assistant", "content": "\tyo"}]


def test_a_json_boolean_answer_is_written_as_json_writes_it():
    record = {"question": "is it?", "answer": True}
    assert layouts.to_messages(record, "pairs", DataConfig(), "r")[1]["content"] == "true"


def test_columns_the_user_names_win_over_a_messages_column_in_the_same_rows(tmp_path):
    """A 'messages' column beside the conversation or the pair columns named by data.text_column /
    data.label_column trained instead of them (a note named the user's column unread)."""
    def conv(q, a):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    rows = [{"messages": conv(q, "bad dog"), "cleaned": conv(q, a), "q": q, "a": a} for q, a in QA[:10]]
    path = _write(tmp_path / "both.jsonl", rows)
    expected = _prepare(_write(tmp_path / "plain.jsonl", [{"messages": conv(q, a)} for q, a in QA[:10]]))
    for named in ({"format": "chat", "text_column": "cleaned"}, {"text_column": "cleaned"},
                  {"text_column": "q", "label_column": "a"}):
        data = _prepare(path, **named)
        assert data.train == expected.train and data.test == expected.test, named
