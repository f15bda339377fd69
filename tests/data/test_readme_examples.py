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
        out.append((task, block.group(1).strip().splitlines()))
        last = block.end()
    return out


BLOCKS = _examples()
EXAMPLES = [(task, line) for task, lines in BLOCKS for line in lines]


def test_the_section_shows_every_layout():
    tasks = [t for t, _ in EXAMPLES]
    assert tasks.count("classification") == 6  # single texts, pairs: three rows each
    assert tasks.count("token_classification") == 6  # token and tag lists, character-offset entities
    assert tasks.count("causal_lm") == 12  # pairs, OpenAI chat, ShareGPT, plain text


@pytest.mark.parametrize("task, lines", BLOCKS)
def test_each_block_loads_as_one_file(tmp_path, task, lines):
    path = tmp_path / "d.jsonl"  # a user copies a block into a file: every row of it loads
    path.write_text("\n".join(lines) + "\n")
    cfg = load_config(None, {"model": {"task": task}})
    t = get(task)
    records = t.read_source(str(path), cfg)
    assert len(records) == len(lines) and all(t.row_problem(r, cfg) is None for r in records)


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
