import numpy as np
import pytest

from tuneforge.config import ConfigError
from tuneforge.data.spans import read_spans, tags_to_spans


def test_read_spans_to_bio_with_offsets(capsys):
    text = "John Smith  visited New York. Berlin-Mitte too"
    rows = [{"text": text, "entities": [{"start": 20, "end": 28, "label": "LOC"},
                                        {"start": 0, "end": 10, "label": "PER"},
                                        {"start": 30, "end": 36, "label": "LOC"}]},
            {"text": "nothing here", "entities": []}, {"text": "  ", "entities": None}]
    first, second = read_spans(rows, "d.jsonl")
    assert first["tokens"] == ["John", "Smith", "visited", "New", "York", ".", "Berlin-Mitte", "too"]
    assert first["tags"] == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-LOC", "O"]  # the period is a word
    assert [text[s:e] for s, e in first["offsets"]] == first["tokens"]
    assert second["tags"] == ["O", "O"]
    assert tags_to_spans(first["tags"], first["offsets"]) == [  # "Berlin" of "Berlin-Mitte" tags the whole word
        {"start": 0, "end": 10, "label": "PER"}, {"start": 20, "end": 28, "label": "LOC"},
        {"start": 30, "end": 42, "label": "LOC"}]
    assert capsys.readouterr().err == ("note: d.jsonl: 1 row(s) with an empty 'text' skipped (row 3)\n"  # counted
                                       "note: d.jsonl: 1 entity span(s) end inside a word and tag the whole word (e.g. "
                                       "'Berlin' in 'Berlin-Mitte'): words are split at whitespace and punctuation, "
                                       "and predicted entities are whole words too\n")
    read_spans(rows[1:] + [{"text": "in Oslo.", "entities": [{"start": 3, "end": 7, "label": "LOC"}]}], "d.jsonl")
    assert capsys.readouterr().err == "note: d.jsonl: 1 row(s) with an empty 'text' skipped (row 2)\n"  # edges: no other


def test_read_spans_partial_word_and_numpy_entities():
    rows = [{"text": "visit Berlin-Mitte now", "entities": np.array([{"start": 6, "end": 12, "label": "LOC"}])}]
    assert read_spans(rows, "d.parquet")[0]["tags"] == ["O", "B-LOC", "O"]


@pytest.mark.parametrize("entities, message", [
    ([{"start": 0, "end": 5, "label": "A"}, {"start": 3, "end": 8, "label": "B"}],
     r"row 1: entities \[0, 5\) A and \[3, 8\) B overlap"),
    ([{"start": 0, "end": 2, "label": "A"}, {"start": 3, "end": 5, "label": "B"}], "fall in the same word 'ab-cd'"),
    ([{"start": 0, "end": 99, "label": "A"}], r"row 1, entity 1: span \[0, 99\) does not fit the text"),
    ([{"start": 5, "end": 6, "label": "A"}], "covers only whitespace"),
    ([{"start": 0, "end": 2}], r"expected an object with start, end and label \(or \[start, end, label\]\)"),
    ([[0, 2]], r"expected an object with start, end and label"),
    ([{"start": "0", "end": 2, "label": "A"}], "must be integer character offsets"),
    ([{"start": 0, "end": 2, "label": "B-PER"}], r"label 'B-PER' is a BIO tag; a character span takes the entity type "
                                                  r"alone \('PER'\)"),
])
def test_read_spans_errors(entities, message):
    with pytest.raises(ConfigError, match=message):
        read_spans([{"text": "ab-cd efgh", "entities": entities}], "d.jsonl")


def test_spacy_and_doccano_triples_read_as_objects():
    text = "John Smith visited New York."
    triples = [[19, 27, "LOC"], (0, 10, "PER")]  # spaCy's "entities", doccano's "label": [start, end, label]
    objects = [{"start": s, "end": e, "label": t} for s, e, t in triples]
    assert read_spans([{"text": text, "label": triples}], "d.jsonl", entities_column="label") == \
        read_spans([{"text": text, "entities": objects}], "d.jsonl")


def test_doccano_exports_are_found_and_read():
    from tuneforge.data.spans import span_column
    text = "Ann met Bob"
    old = [{"id": 1, "text": text, "label": []}, {"id": 2, "text": text, "label": [[0, 3, "PER"], [8, 11, "PER"]]}]
    new = [{"id": 1, "text": text, "entities": [{"id": 7, "label": "PER", "start_offset": 0, "end_offset": 3},
                                                 {"id": 8, "label": "PER", "start_offset": 8, "end_offset": 11}]}]
    assert span_column(old) == "label" and span_column(new) == "entities"
    assert read_spans(old[1:], "d.jsonl", entities_column="label") == read_spans(new, "d.jsonl")
    assert read_spans(new, "d.jsonl")[0]["tags"] == ["B-PER", "O", "B-PER"]
    assert span_column([{"tokens": ["a"], "tags": ["O"]}]) is None
    assert span_column([{"text": "a b", "label": ["O", "O"]}, {"text": "c", "label": "O"}]) is None


def test_label_studio_exports_and_entities_first_seen_late_are_found():
    from tuneforge.data.spans import span_column
    text = "Ann met Bob"
    studio = [{"id": 1, "text": text, "label": [{"start": 0, "end": 3, "text": "Ann", "labels": ["PER"]}]}]
    assert span_column(studio) == "label"
    assert read_spans(studio, "d.json", entities_column="label")[0]["tags"] == ["B-PER", "O", "O"]
    quiet = [{"text": f"nothing here {i}", "label": []} for i in range(150)]  # doccano: unlabelled rows first
    assert span_column(quiet + [{"text": text, "label": [[0, 3, "PER"]]}]) == "label"
    assert span_column([{"text": "hello"}, {"text": text, "entities": []}]) == "entities"
