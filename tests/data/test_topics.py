from collections import Counter

import yaml

from tuneforge import assets
from tuneforge.data.topics import MIN_QUESTIONS, _key, chatterbot_topics


def test_distinct_questions_labelled_by_category():
    records = chatterbot_topics()
    categories = {p.stem for p in assets.chatterbot_dir().glob("*.yml")}
    counts = Counter(r["label"] for r in records)
    assert set(records[0]) == {"text", "label"}
    assert set(counts) <= categories and len(counts) >= 10  # 16 of 21 with the pinned corpus
    assert min(counts.values()) >= MIN_QUESTIONS
    keys = [_key(r["text"]) for r in records]
    assert len(keys) == len(set(keys))  # deduplicated: no question twice, so no split can leak
    assert len(records) >= 600  # the corpus's ~2,000 entries hold only ~750 distinct questions
    assert all(r["text"].strip() == r["text"] and r["text"] for r in records)


def test_questions_come_from_their_category_file():
    records = chatterbot_topics()
    path = assets.chatterbot_dir() / "tech_support.yml"  # 1,050 entries, 10 distinct questions
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    questions = {_key(c[0]) for c in data["conversations"]}
    assert {_key(r["text"]) for r in records if r["label"] == "tech_support"} == questions
    assert not any(r["text"] == "Hello" for r in records)  # filed under two categories: no single label


def test_min_questions_threshold():
    assert len({r["label"] for r in chatterbot_topics(min_questions=1)}) == len(
        list(assets.chatterbot_dir().glob("*.yml")))
    assert len({r["label"] for r in chatterbot_topics(min_questions=50)}) < len(
        {r["label"] for r in chatterbot_topics()})
