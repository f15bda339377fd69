"""JSON / JSON Lines rows: an object naming a key twice is refused with its line (json keeps the last value)."""
import json

import pytest

from tuneforge.config import ConfigError
from tuneforge.data.readers import read_records


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
