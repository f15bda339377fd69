"""JSON / JSON Lines rows: an object naming a key twice is refused with its line (json keeps the last value)."""
import json

import pytest

from tuneforge.config import ConfigError
from tuneforge.data.labels import label_key
from tuneforge.data.readers import read_records

ROWS = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]


def test_a_key_named_twice_in_a_json_lines_row_is_refused_with_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "good film", "label": "pos"}\n\n{"text": "bad film", "label": "neg", "text": "ok"}\n')
    with pytest.raises(ConfigError, match=r"^.*d\.jsonl, line 3: an object names the key 'text' twice \(only the "
                                          r"last value would be read\); keep one$"):
        read_records(path)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_key_named_twice_in_a_json_list_is_refused(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"  # an array, also when saved as .jsonl; nested objects count too
    path.write_text('[{"text": "good film", "label": "pos"},\n {"text": "bad", "meta": {"a": 1, "a": 2}, "label": 0}]')
    with pytest.raises(ConfigError, match=rf"d\{suffix}: an object names the key 'a' twice"):
        read_records(path)


def test_the_same_key_in_different_objects_is_fine(tmp_path):
    rows = [{"text": "good film", "label": "pos", "meta": {"text": "x"}}, {"text": "bad film", "label": "neg"}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows))
    assert read_records(path) == rows
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_records(path) == rows


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_half_a_surrogate_pair_is_refused_with_its_row_and_a_whole_pair_reads(tmp_path, suffix):
    rows = [{"text": "good film \U0001F600", "label": "pos"}, {"text": "bad film", "label": "neg"}]
    path = tmp_path / f"d{suffix}"  # json.dumps writes the emoji as the escaped pair \ud83d\ude00
    dump = (lambda rs: json.dumps(rs)) if suffix == ".json" else (lambda rs: "".join(json.dumps(r) + "\n" for r in rs))
    path.write_text(dump(rows))
    assert read_records(path) == rows
    path.write_text(dump(rows).replace("\\ude00", ""))  # scraped text cut inside the emoji
    where = "item 1" if suffix == ".json" else "line 1"
    with pytest.raises(ConfigError, match=rf"d\{suffix}, {where}: the text 'good film \\ud83d' holds half of a UTF-16 "
                                          r"surrogate pair \(an emoji or other character cut in two\), which is not "
                                          r"text; fix or remove that escape"):
        read_records(path)
    rows[1]["meta"] = {"note": ["fine", "x \ud800"]}  # nested strings count too
    path.write_text(dump(rows[1:]))
    with pytest.raises(ConfigError, match=r"the text 'x \\ud800' holds half"):
        read_records(path)


def test_a_json_file_holding_one_object_is_one_row_unless_it_wraps_the_rows(tmp_path):
    chat = {"messages": [{"role": "user", "content": "say yes"}, {"role": "assistant", "content": "yes ."}]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(chat))  # one conversation: its message list is no wrapper of rows
    assert read_records(path) == [chat]
    path.write_text(json.dumps({**chat, "system": "be brief"}))
    assert read_records(path) == [{**chat, "system": "be brief"}]
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}))
    assert len(read_records(path)) == 1
    path.write_text(json.dumps({"rows": [chat, chat]}))  # a wrapper of rows under any other name
    assert read_records(path) == [chat, chat]


def test_pandas_column_oriented_json_is_refused_with_the_way_to_write_rows(tmp_path):
    import pandas as pd

    path = tmp_path / "d.json"
    pd.DataFrame({"text": ["good film", "bad film"], "label": ["pos", "neg"]}).to_json(path)  # pandas' default
    with pytest.raises(ConfigError, match=r"d\.json holds columns of values by index, as pandas' DataFrame\.to_json\(\) "
                                          r"writes by default; write one object per example: to_json\(path, "
                                          r"orient='records', lines=True\)"):
        read_records(path)
    path.write_text(json.dumps({"meta": {"a": 1}, "text": "good film", "label": "pos"}))  # one row with an object
    assert read_records(path) == [{"meta": {"a": 1}, "text": "good film", "label": "pos"}]


def test_json_numbers_print_as_written_and_compute_as_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "price ?", "answer": 4.50, "label": 1.0}\n{"question": "big ?", "answer": 1e3, "label": 2}\n')
    rows = read_records(path)
    assert [str(r["answer"]) for r in rows] == ["4.50", "1e3"]  # what a causal LM trains on
    assert rows[0]["answer"] == 4.5 and rows[1]["answer"] == 1000 and rows[0]["label"].is_integer()
    assert label_key(rows[0]["answer"]) == label_key(4.5) == "4.5" and label_key(rows[0]["label"]) == "1"


def test_jsonl_strings_may_hold_line_and_paragraph_separators(tmp_path):
    rows = [{"text": "great film\u2028loved it", "label": "pos"}, {"text": "dull \x85 film\u2029", "label": "neg"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_records(path) == rows


def test_a_json_file_holding_json_lines_is_read_as_json_lines(tmp_path):
    path = tmp_path / "d.json"  # what datasets' Dataset.to_json("d.json") writes
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert read_records(path) == ROWS
    path.write_text(json.dumps({"data": ROWS}, indent=2))  # an object holding the list still reads as JSON
    assert read_records(path) == ROWS
    path.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    with pytest.raises(ConfigError, match=r"d\.json, line 2: not valid JSON"):
        read_records(path)
