import json

import numpy as np
import pandas as pd
import pytest

from tuneforge.config import ConfigError
from tuneforge.data.conll import list_columns, read_token_lists
from tuneforge.data.tag_scheme import invalid_sentences, scheme, to_bio, unseen_types
from tuneforge.data.conll_file import read_conll, wnut16
from tuneforge.data.readers import class_names, read_records

TWO = [{"tokens": ["John", "lives", "in", "New", "York"], "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]},
       {"tokens": ["Hi", "Ann"], "tags": ["O", "B-PER"]}]  # an entity at the sentence end


def _write(tmp_path, text, name="d.conll"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text", [
    "John\tB-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n\nHi\tO\nAnn\tB-PER\n",  # tabs
    "John B-PER\nlives   O\nin O\nNew B-LOC\nYork I-LOC\n\nHi O\nAnn B-PER",  # spaces, no final newline
    "John NNP B-PER\nlives VBZ O\nin IN O\nNew NNP B-LOC\nYork NNP I-LOC\n\nHi UH O\nAnn NNP B-PER\n",  # 3 columns
    "-DOCSTART- -X- O\n\nJohn\tB-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n\n\n \n\t\nHi\tO\nAnn\tB-PER\n\n\n",
    # byte-order mark, CRLF line ends
    "\ufeffJohn\tB-PER\r\nlives\tO\r\nin\tO\r\nNew\tB-LOC\r\nYork\tI-LOC\r\n\t\r\nHi\tO\r\nAnn\tB-PER\r\n",
])
def test_read_conll_variants(tmp_path, text):
    assert read_conll(_write(tmp_path, text)) == TWO


def test_read_conll_keeps_tokens_with_unicode_spaces(tmp_path):
    assert read_conll(_write(tmp_path, "a\u00a0b\tO\n"))[0]["tokens"] == ["a\u00a0b"]


def test_read_conll_ends_lines_at_newline_only(tmp_path):
    # str.splitlines() would also break at U+2028, U+2029, U+0085, \x0b, \x0c, \x1c-\x1e inside a token
    text = "a\u2028b\tO\nc\u2029d\tB-X\ne\x85f\tO\ng\x0bh\x0ci\x1cj\tO\n\nlonely\n"
    with pytest.raises(ConfigError, match=r"line 6: only one column \('lonely'\)"):  # lines counted at "\n"
        read_conll(_write(tmp_path, text))
    records = read_conll(_write(tmp_path, text.replace("lonely", "k\u2028\tO")))
    assert records[0]["tokens"] == ["a\u2028b", "c\u2029d", "e\x85f", "g\x0bh\x0ci\x1cj"]
    assert records[0]["tags"] == ["O", "B-X", "O", "O"]
    assert records[1] == {"tokens": ["k\u2028"], "tags": ["O"]}


@pytest.mark.parametrize("text, comments", [
    ("# sent_id = 1\n# text = John lives in New York\nJohn\tB-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n\n"
     "# sent_id = 2\nHi\tO\nAnn\tB-PER\n", 3),  # CoNLL-U: more columns than the token lines ...
    ("# sent_id = O\nJohn _ _ B-PER\nlives _ _ O\nin _ _ O\nNew _ _ B-LOC\nYork _ _ I-LOC\n\n# sent_id = O\nHi _ _ O\n"
     "Ann _ _ B-PER\n", 2),  # ... or as many columns, ending in a tag, but "# key = value"
    ("# id 3f2a\tdomain=en\nJohn _ _ B-PER\nlives _ _ O\nin _ _ O\nNew _ _ B-LOC\nYork _ _ I-LOC\n\n"  # MultiCoNER:
     "# id 77c1\tdomain=en\nHi _ _ O\nAnn _ _ B-PER\n", 2),  # as many columns, but 'domain=en' is no tag
    ("#\nJohn\tB-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n# newpar\n\nHi\tO\nAnn\tB-PER\n", 2),
], ids=["conllu", "conllu-spaces", "multiconer", "bare"])
def test_read_conll_skips_comment_lines_with_one_note(tmp_path, capsys, text, comments):
    assert read_conll(_write(tmp_path, text)) == TWO
    assert capsys.readouterr().err.strip() == f"note: {tmp_path / 'd.conll'}: {comments} comment line(s) starting " \
                                              "with '#' skipped"


def test_read_conll_keeps_hash_tokens(tmp_path, capsys):
    tweets = "#\tO\nJohn\tB-PER\n#NYC\tB-LOC\n#\tO\n\n#\tB-LOC\nHi\tO\n"  # '#' and hashtags are tokens
    assert read_conll(_write(tmp_path, tweets)) == [
        {"tokens": ["#", "John", "#NYC", "#"], "tags": ["O", "B-PER", "B-LOC", "O"]},
        {"tokens": ["#", "Hi"], "tags": ["B-LOC", "O"]}]
    tagged = "John NNP B-PER\n# # O\nHi UH O\n"  # token, part of speech, tag: the part of speech of '#' is '#'
    assert read_conll(_write(tmp_path, tagged)) == [{"tokens": ["John", "#", "Hi"], "tags": ["B-PER", "O", "O"]}]
    assert "comment" not in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("John\tB-PER\nlives\n", r"d\.conll, line 2: only one column"),
    ("\n\n-DOCSTART- O\n\n", r"d\.conll holds no sentences"),
])
def test_read_conll_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        read_conll(_write(tmp_path, text))


def test_read_conll_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_conll(tmp_path / "nope.conll")


def test_read_token_lists_from_jsonl_and_parquet(tmp_path):
    rows = [{"words": r["tokens"], "ner": r["tags"]} for r in TWO]
    jsonl = _write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows), "d.jsonl")
    parquet = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    for path in (jsonl, parquet):
        records = read_records(path)
        assert read_token_lists(records, "words", "ner", str(path)) == TWO
    assert isinstance(read_records(parquet)[0]["words"], np.ndarray)


def test_words_and_tags_may_be_whitespace_separated_strings():
    rows = [{"sentence": "John  lives in New York", "tags": "B-PER O O B-LOC I-LOC"},
            {"text": "Hi Ann", "tags": ["O", "B-PER"]}]
    assert read_token_lists(rows[:1], *list_columns(rows[0], "tokens", "tags", "label")) == TWO[:1]
    assert read_token_lists(rows[1:], *list_columns(rows[1], "tokens", "tags", "label")) == TWO[1:]


def test_read_token_lists_maps_integer_tags_with_names():
    rows = [{"tokens": np.array(["Hi", "Ann"]), "tags": np.array([0, 1])}]
    assert read_token_lists(rows, tag_names=["O", "B-PER"]) == [{"tokens": ["Hi", "Ann"], "tags": ["O", "B-PER"]}]
    with pytest.raises(ConfigError, match="row 1: tag 0 is a number; .* data.tag_names"):
        read_token_lists(rows, source="d.parquet")


@pytest.mark.parametrize("row, configured, expected", [
    ({"tokens": [], "tags": []}, ("tokens", "tags", "label"), ("tokens", "tags")),
    ({"tokens": [], "ner_tags": []}, ("tokens", "tags", "label"), ("tokens", "ner_tags")),  # Hugging Face's names
    ({"words": [], "labels": []}, ("tokens", "tags", "label"), ("words", "labels")),
    ({"tokens": [], "ner_tags": [], "labels": []}, ("tokens", "tags", "label"), ("tokens", "tags")),  # ambiguous
    ({"tokens": [], "ner_tags": []}, ("tokens", "bio", "label"), ("tokens", "bio")),  # a name given stays
    ({"tokens": [], "ner_tags": [], "pos": []}, ("tokens", "tags", "pos"), ("tokens", "pos")),  # --label-column
])
def test_list_columns_fall_back_to_common_names_only_for_defaults(row, configured, expected):
    assert list_columns(row, *configured) == expected


def test_class_names_from_hugging_face_parquet_features(tmp_path):
    """The ``huggingface`` schema metadata ``datasets`` writes (5.x: ``List``; older: ``Sequence``, or a bare
    list); no metadata, another column or a non-Parquet file: None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["O", "B-PER", "I-PER"]
    label = {"names": names, "_type": "ClassLabel"}
    table = pa.table({"tokens": [["Hi", "Ann"]], "ner_tags": [[0, 1]]})
    for feature in ({"feature": label, "_type": "List"}, {"feature": label, "_type": "Sequence"}, [label], label):
        meta = {"info": {"features": {"tokens": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
                                      "ner_tags": feature}}}
        path = tmp_path / "d.parquet"
        pq.write_table(table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()}), path)
        assert class_names(path, "ner_tags") == names and class_names(path, "tokens") is None
    pq.write_table(table, tmp_path / "plain.parquet")
    assert class_names(tmp_path / "plain.parquet", "ner_tags") is None
    assert class_names(_write(tmp_path, "{}\n", "d.jsonl"), "ner_tags") is None


@pytest.mark.parametrize("rows, message", [
    ([{"tokens": ["a", "b"], "tags": ["O"]}], r"d\.jsonl, row 1: 2 tokens but 1 tags"),
    ([{"tokens": ["a"], "tags": ["O"]}, {"tokens": 5, "tags": ["O", "O"]}], r"row 2: 'tokens' must be a list"),
    ([{"tokens": "a b c", "tags": "O B-PER"}], r"row 1: 3 tokens but 2 tags"),
    ([{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["b"], "ner_tags": ["O"]}],  # a row of another layout
     r"row 2: column 'tags' is missing \(columns: 'tokens', 'ner_tags'; the first row's columns name every row's"),
    ([{"words": ["a"], "tags": ["O"]}],
     r"column 'tokens' not found; columns are 'words', 'tags' \(choose with data.tokens_column / data.tags_column\)"),
    ([{"tokens": [], "tags": []}], "empty"),
    ([{"EU": "rejects", "B-ORG": "O"}], r"columns are 'EU', 'B-ORG' \(a token and its tag per line: a CoNLL file, "
                                        r"to be named \.conll\)"),  # a CoNLL file named .tsv: its first line
])
def test_read_token_lists_errors(rows, message):
    with pytest.raises(ConfigError, match=message):
        read_token_lists(rows, "tokens", "tags", "d.jsonl")


def test_scheme_and_repair():
    assert scheme([["B-PER", "I-PER", "O"], ["O"]]) == "IOB2"
    assert scheme(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == "BIO"
    assert scheme([["PER", "PER", "O"]]) == "plain"
    assert to_bio(["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-PER"]) == [
        "B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-PER"]
    assert to_bio(["PER", "PER", "O", "LOC", "PER"]) == ["B-PER", "I-PER", "O", "B-LOC", "B-PER"]
    assert to_bio(["B-X", "I-X", "O"]) == ["B-X", "I-X", "O"]
    assert invalid_sentences([["I-X"], ["B-X", "I-X"], ["O", "I-Y"]]) == 2


def test_wnut16_counts():
    records = wnut16()
    assert len(records) == 2394 and sum(len(r["tokens"]) for r in records) == 46469
    assert all(len(r["tokens"]) == len(r["tags"]) > 0 for r in records)
    types = {t[2:] for r in records for t in r["tags"] if t != "O"}
    assert len(types) == 10 and {"person", "geo-loc", "company"} <= types
    assert scheme([r["tags"] for r in records]) == "IOB2"
    records[0]["tags"][0] = "changed"
    assert wnut16()[0]["tags"][0] != "changed"  # callers get fresh lists


@pytest.mark.parametrize("tags, expected", [
    (["S-LOC", "O", "B-PER", "E-PER"], ["B-LOC", "O", "B-PER", "I-PER"]),  # IOBES
    (["U-LOC", "O", "B-PER", "I-PER", "L-PER"], ["B-LOC", "O", "B-PER", "I-PER", "I-PER"]),  # BILOU
    (["b-loc", "i-loc", "o", "B_ORG"], ["B-loc", "I-loc", "O", "B-ORG"]),  # lower case, underscore
])
def test_other_tag_schemes_become_iob2_with_the_right_types(tags, expected):
    assert to_bio(tags) == expected
    assert invalid_sentences([tags]) == 0 and scheme([tags]) == "IOB2"


def test_a_file_in_another_tag_scheme_is_read_as_iob2_with_one_note(tmp_path, capsys):
    path = tmp_path / "iobes.conll"
    path.write_text("I O\nsaw O\nNew B-LOC\nYork E-LOC\n\nParis S-LOC\nis O\nbig O\n\nRome S-LOC\n")
    records = read_conll(path)
    assert [to_bio(r["tags"]) for r in records] == [["O", "O", "B-LOC", "I-LOC"], ["B-LOC", "O", "O"], ["B-LOC"]]
    assert capsys.readouterr().err.splitlines() == [f"note: {path}: tags read as IOB2 (E-LOC as I-LOC, S-LOC as "
                                                    "B-LOC)"]
    read_token_lists([{"tokens": ["Ann", "ran"], "tags": ["u-per", "o"]}], source="d.jsonl")
    assert capsys.readouterr().err == "note: d.jsonl: tags read as IOB2 (u-per as B-per, o as O)\n"
    read_token_lists([{"tokens": ["Ann", "ran"], "tags": ["B-PER", "O"]}], source="d.jsonl")
    assert capsys.readouterr().err == ""  # IOB2 already: no note


NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.mark.parametrize("tags", [["1", "0", "0", "3", "4"], "1 0 0 3 4", "[1, 0, 0, 3, 4]"])
def test_digit_string_tags_are_ids_named_by_tag_names(tags):
    rows = [{"tokens": TWO[0]["tokens"], "ner_tags": tags}]  # a CSV or string export of Hugging Face's ids
    assert read_token_lists(rows, "tokens", "ner_tags", tag_names=NAMES) == TWO[:1]
    with pytest.raises(ConfigError, match=r"d\.jsonl, row 1: tag 1 is a number; .* data.tag_names"):
        read_token_lists(rows, "tokens", "ner_tags", "d.jsonl")


def test_a_conll_file_with_number_tags_needs_tag_names(tmp_path):
    path = _write(tmp_path, "John\tB-PER\nlives\t0\n\nHi\t0\nAnn\tB-PER\n")  # 0 written for O
    with pytest.raises(ConfigError, match=r"d\.conll, line 2: tag 0 is a number; .*O \(a letter\) outside"):
        read_conll(path)
    assert read_conll(_write(tmp_path, "John\t1\nlives\t0\n"), NAMES) == [
        {"tokens": ["John", "lives"], "tags": ["B-PER", "O"]}]


def test_pandas_csv_list_cells_are_read_as_lists(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"tokens": [["John", "lives", "in", "New", "York"], ["Ann's", "cat"]],
                  "ner_tags": [[1, 0, 0, 3, 4], [1, 0]]}).to_csv(path)  # cells "['John', ...]", "[1, 0, ...]"
    records = read_records(path)
    assert read_token_lists(records, "tokens", "ner_tags", tag_names=NAMES) == [
        TWO[0], {"tokens": ["Ann's", "cat"], "tags": ["B-PER", "O"]}]
    with pytest.raises(ConfigError, match="row 1: tag 1 is a number"):
        read_token_lists(records, "tokens", "ner_tags")
    rows = [{"tokens": '["Hi", "Ann"]', "tags": '["O", "B-PER"]'},  # JSON
            {"tokens": "[ Music ] plays", "tags": "O O O O"},  # words that happen to start with "["
            {"tokens": "[1] see ref [2]", "tags": "O O O O"},
            {"tokens": "[ 5 ]", "tags": "O O O"}]  # a literal list [5], but three words by the tags' count
    assert read_token_lists(rows) == [TWO[1], {"tokens": ["[", "Music", "]", "plays"], "tags": ["O"] * 4},
                                      {"tokens": ["[1]", "see", "ref", "[2]"], "tags": ["O"] * 4},
                                      {"tokens": ["[", "5", "]"], "tags": ["O"] * 3}]


@pytest.mark.parametrize("cell", ["['Hi' 'Ann']", "['Hi', Ann]", "[1 0]"])  # numpy's print form; not a literal
def test_a_list_cell_that_does_not_parse_is_refused(cell):
    with pytest.raises(ConfigError, match=r"d\.csv, row 2: 'tokens' .* is not a list JSON or Python can read"):
        read_token_lists([TWO[1], {"tokens": cell, "tags": ["O", "B-PER"]}], source="d.csv")


def test_one_word_per_row_files_are_refused(tmp_path):
    path = _write(tmp_path, "Sentence #,Word,POS,Tag\nSentence: 1,John,NNP,B-PER\n,lives,VBZ,O\n,in,IN,O\n"
                            ",New,NNP,B-LOC\n,York,NNP,I-LOC\nSentence: 2,Hi,UH,O\n,Ann,NNP,B-PER\n", "d.csv")
    with pytest.raises(ConfigError, match=r"d\.csv: every row holds one word.*write it as a CoNLL file"):
        read_token_lists(read_records(path), "Word", "Tag", str(path))
    assert len(read_token_lists(read_records(path)[:5], "Word", "Tag")) == 5  # a handful: accepted
    queries = [{"tokens": [w], "tags": [t]} for w, t in [("paris", "B-LOC"), ("ann", "B-PER"), ("hi", "O")] * 3]
    assert len(read_token_lists(queries)) == 9  # one-word queries: no entity runs on from a row before


def test_tab_separated_tokens_may_hold_spaces(tmp_path):
    text = "-DOCSTART- -X- O\n\nAnn\tB-PER\nsaw \t O\nNew York\tB-LOC\n\n#\tO\nhi there\tO\n"
    assert read_conll(_write(tmp_path, text)) == [
        {"tokens": ["Ann", "saw", "New York"], "tags": ["B-PER", "O", "B-LOC"]},
        {"tokens": ["#", "hi there"], "tags": ["O", "O"]}]
    mixed = "Ann\tB-PER\nNew York B-LOC\n"  # not every line tab-separated: columns split at spaces too, and the
    with pytest.raises(ConfigError, match=r"line 2: 3 columns .* other token lines have 2"):  # odd line refused
        read_conll(_write(tmp_path, mixed))
    pos = "EU NNP\tB-ORG\nrejects VBZ\tO\n"  # a space before the POS column, a tab before the tag: 3 columns
    assert read_conll(_write(tmp_path, pos))[0]["tokens"] == ["EU", "rejects"]


@pytest.mark.parametrize("tag", ["B-", "I-", "i_"])
def test_tags_without_entity_type_are_refused(tmp_path, tag):
    with pytest.raises(ConfigError, match=rf"d\.conll, line 2: tag '{tag}' has no entity type"):
        read_conll(_write(tmp_path, f"John\tB-PER\nlives\t{tag}\n"))
    with pytest.raises(ConfigError, match=rf"d\.jsonl, row 1: tag '{tag}' has no entity type"):
        read_token_lists([{"tokens": ["a", "b"], "tags": ["O", tag]}], source="d.jsonl")


def test_unseen_entity_types_warn_and_refuse_where_none_is_seen(capsys):
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    test = [{"tokens": ["Ann", "in", "Oslo"], "tags": ["B-PERSON", "O", "B-LOC"]}]
    unseen_types(names, test, "test split", "t.conll")
    assert capsys.readouterr().err == ("warning: t.conll: entity type(s) PERSON of the test split never occur in "
                                       "training (LOC, PER); tags are compared by type name, so they are never found\n")
    unseen_types(names, [{"tokens": ["Ann"], "tags": ["B-PER"]}], "test split", "t.conll")
    assert capsys.readouterr().err == ""
    lower = [{"tokens": ["Ann", "in", "Oslo"], "tags": ["b-per", "o", "b-loc"]}]
    with pytest.raises(ConfigError, match=r"t\.conll: entity type\(s\) loc, per of the validation split never .*"
                                          "write them as the training file does"):
        unseen_types(names, lower, "validation split", "t.conll")
    unseen_types(names, lower, "validation split", None)  # a split drawn from the training file: a warning only
    assert capsys.readouterr().err.startswith("warning: data: entity type(s) loc, per of the validation split")


def test_rows_without_tokens_are_skipped_with_a_note(capsys):
    rows = [TWO[0], {"tokens": [], "tags": []}, TWO[1], {"tokens": "", "tags": ""}]
    assert read_token_lists(rows, source="d.jsonl") == TWO
    assert capsys.readouterr().err == "note: d.jsonl: 2 row(s) with no tokens skipped (row 2, 4)\n"
