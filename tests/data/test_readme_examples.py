"""Every row the README shows under "Your data" loads through its task's reader as the README says."""
import json
import re
from pathlib import Path

import pytest

from tuneforge.config import load_config
from tuneforge.data import layouts
from tuneforge.tasks import get

README = Path(__file__).resolve().parents[2] / "README.md"


def _examples():
    text = README.read_text()
    section = text[text.index("## Your data"):text.index("## Python API")]
    out, task, last = [], None, 0
    for block in re.finditer(r"```json\n(.*?)```", section, flags=re.S):
        intro = section[last:block.start()]  # the text since the previous block names the task (or continues it)
        task = next((t for name, t in (("Token classification", "token_classification"),
                                       ("Classification", "classification"), ("Causal LM", "causal_lm"))
                     if name in intro), task)
        out += [(task, line) for line in block.group(1).strip().splitlines()]
        last = block.end()
    return out


EXAMPLES = _examples()


def test_the_section_shows_every_layout():
    tasks = [t for t, _ in EXAMPLES]
    assert tasks.count("classification") == 6 and tasks.count("token_classification") == 3  # single texts, pairs
    assert tasks.count("causal_lm") == 12  # pairs, OpenAI chat, ShareGPT, plain text: three rows each


@pytest.mark.parametrize("task, line", EXAMPLES)
def test_each_row_loads(tmp_path, task, line):
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    cfg = load_config(None, {"model": {"task": task}})
    (record,) = get(task).read_source(str(path), cfg)
    if task == "classification":
        assert record["text"] and record["label"] is not None
        assert cfg.data.text_pair_column is None or record[cfg.data.text_pair_column]
    elif task == "token_classification":
        assert len(record["tokens"]) == len(record["tags"]) > 0 and set(record["tags"]) - {"O"}
    else:
        fmt = layouts.detect_format(set(record), cfg.data, "README")
        out = layouts.to_messages(record, fmt, cfg.data, "README")
        assert (fmt == "text" and out == json.loads(line)["text"]) or out[-1]["role"] == "assistant"
