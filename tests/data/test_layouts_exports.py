"""Layouts as other tools export them: OpenAI's per-message ``weight``, tool calls, the ``developer`` role,
summarisation and reading-comprehension columns, and a note for columns a layout does not read."""
import pytest

from lm_helpers import tiny_tokenizer
from tuneforge.config import ConfigError, DataConfig, load_config
from tuneforge.data import chat, layouts, templates
from tuneforge.tasks import causal_lm

IGNORE = chat.IGNORE


def _trained(messages):
    """The token ids that train in ``messages`` encoded with the tiny chat template."""
    tok = tiny_tokenizer()
    (ex,) = chat.encode_conversations([messages], tok, templates.resolve_template(tok, None), 64, ["row 1"])
    return tok.decode([y for y in ex["labels"] if y != IGNORE])


def _chat(*turns):
    return layouts.to_messages({"messages": list(turns)}, "chat", DataConfig(), "f.jsonl, row 1")


def test_a_reply_of_weight_0_stays_as_context_but_does_not_train():
    user, again = {"role": "user", "content": "hi"}, {"role": "user", "content": "say yes"}
    untrained = {"role": "assistant", "content": "no .", "weight": 0}
    trained = {"role": "assistant", "content": "yes .", "weight": 1}
    both = _trained(_chat(user, {**untrained, "weight": 1}, again, trained))
    assert "no" in both and "yes" in both
    masked = _trained(_chat(user, untrained, again, trained))
    assert "no" not in masked and "yes" in masked
    last_untrained = _chat(user, trained, again, untrained)  # nothing after the last trained reply is learned
    assert "yes" in _trained(last_untrained) and "no" not in _trained(last_untrained)
    with pytest.raises(ConfigError, match=r"f.jsonl, row 1: every assistant message has weight 0: nothing to learn"):
        _chat(user, untrained)
    with pytest.raises(ConfigError, match=r"row 1: message 2 has weight 0.5; a message's weight is 0 .* or 1"):
        _chat(user, {**trained, "weight": 0.5})


def test_tool_calls_and_the_developer_role():
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]}
    with pytest.raises(ConfigError, match=r"row 1: message 2 makes a tool call; tool calls and results cannot be "
                                          r"trained on"):
        _chat({"role": "user", "content": "hi"}, call, {"role": "assistant", "content": "done ."})
    messages = _chat({"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "hello !"})
    assert messages[0] == {"role": "system", "content": "be brief"}  # OpenAI's newer name for the system message


@pytest.mark.parametrize("record, prompt, answer", [
    ({"text": "a long article", "summary": "short"}, "a long article", "short"),
    ({"document": "a long article", "summary": "short"}, "a long article", "short"),
    ({"article": "a long article", "highlights": "short"}, "a long article", "short"),
    ({"text": "hello", "output": "bonjour"}, "hello", "bonjour"),
    ({"source": "hello", "target": "bonjour"}, "hello", "bonjour"),
    ({"question": "who won ?", "context": "the blue team won .", "answer": "blue"},
     "the blue team won .\n\nwho won ?", "blue"),  # the passage first, then the question
    ({"prompt": "who won ?", "input": {"lang": "en"}, "completion": "blue"}, "who won ?", "blue"),  # not read
])
def test_summarisation_translation_and_reading_comprehension_columns_are_pairs(record, prompt, answer):
    d = DataConfig()
    assert layouts.detect_format(set(record), d, "r") == "pairs"
    assert layouts.to_messages(record, "pairs", d, "r") == [{"role": "user", "content": prompt},
                                                            {"role": "assistant", "content": answer}]


def test_columns_a_layout_does_not_read_are_named_in_a_note(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "who won ?", "response": "blue", "passage": "the blue team won .", "id": "q1"}\n')
    causal_lm.Task().read_source(str(path), load_config(None, {"model": {"task": "causal_lm"}}))
    err = capsys.readouterr().err
    assert "note: " in err and "reads prompt 'prompt' -> answer 'response'; column(s) 'passage' are not read" in err
    path.write_text('{"prompt": "who won ?", "completion": "blue", "context": "the blue team won ."}\n')  # context
    causal_lm.Task().read_source(str(path), load_config(None, {"model": {"task": "causal_lm"}}))  # joins no prompt
    assert "reads prompt 'prompt' -> answer 'completion'; column(s) 'context' are not read" in capsys.readouterr().err
    path.write_text('{"instruction": "add", "input": "2 and 3", "output": "5", "id": "q1"}\n')  # all read: silent
    causal_lm.Task().read_source(str(path), load_config(None, {"model": {"task": "causal_lm"}}))
    assert capsys.readouterr().err == ""
    row = '{"instruction": "add", "output": "5"}\n'  # a history in a later row only is named too
    path.write_text(row * 3 + '{"instruction": "and 4", "output": "9", "history": [["add", "5"]]}\n')
    causal_lm.Task().read_source(str(path), load_config(None, {"model": {"task": "causal_lm"}}))
    assert "column(s) 'history' are not read" in capsys.readouterr().err
    path.write_text(row + '{"question": "what is 2 and 3 ?", "answer": "5"}\n')  # pairs are chosen row by row
    causal_lm.Task().read_source(str(path), load_config(None, {"model": {"task": "causal_lm"}}))
    assert capsys.readouterr().err == ""
    chat = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    path.write_text(chat + '{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}\n')
    causal_lm.Task().read_source(str(path), load_config(None, {"model": {"task": "causal_lm"}}))
    assert capsys.readouterr().err == ""  # so are conversation columns: both read
    path.write_text(chat + '{"messages": [], "context": "a passage of text"}\n')
    causal_lm.Task().read_source(str(path), load_config(None, {"model": {"task": "causal_lm"}}))
    assert "reads conversations from 'messages'; column(s) 'context' are not read" in capsys.readouterr().err


def test_parquet_messages_with_empty_tool_call_arrays_read(tmp_path):
    import numpy as np
    import pandas as pd

    from tuneforge.data.readers import read_records
    messages = [{"role": "user", "content": "hi", "tool_calls": np.array([])},
                {"role": "assistant", "content": "hello !", "tool_calls": np.array([])}]
    assert _chat(*messages) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello !"}]
    calls = np.array([{"id": "1"}, {"id": "2"}], dtype=object)
    with pytest.raises(ConfigError, match="message 2 makes a tool call"):
        _chat(messages[0], {**messages[1], "tool_calls": calls})
    pd.DataFrame({"messages": [[{"role": "user", "content": "hi", "tool_calls": []},
                                {"role": "assistant", "content": "hello !", "tool_calls": []}]]}).to_parquet(
        tmp_path / "d.parquet")
    (record,) = read_records(tmp_path / "d.parquet")
    assert layouts.to_messages(record, "chat", DataConfig(), "r")[1] == {"role": "assistant", "content": "hello !"}
