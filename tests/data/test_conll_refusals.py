"""Tag lists and CoNLL files that would otherwise train wrong: a line with an extra column, a prefix no scheme
uses, an empty token in an entity; BMES/BMEWO prefixes read as IOB2's."""
import pytest

from tuneforge.config import ConfigError
from tuneforge.data.conll import read_token_lists
from tuneforge.data.tag_scheme import to_bio
from tuneforge.data.conll_file import read_conll


def _write(tmp_path, text, name="d.conll"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("sep", [" ", "\t"])
def test_a_token_line_with_more_columns_than_the_others_is_refused_naming_it(tmp_path, sep):
    text = sep.join(["the", "O"]) + "\n" + sep.join(["movie", "B-MOV", "EXTRA"]) + "\n" + sep.join(["film", "I-MOV"])
    with pytest.raises(ConfigError, match=r"d\.conll, line 2: 3 columns .*'movie B-MOV EXTRA'.* have 2"):
        read_conll(_write(tmp_path, text + "\n\nok O\n"))


def test_files_of_four_columns_and_docstart_lines_still_read(tmp_path):
    text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nHi UH B-INTJ O\n"
    assert read_conll(_write(tmp_path, text)) == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
                                                  {"tokens": ["Hi"], "tags": ["O"]}]


def test_bmes_and_bmewo_prefixes_read_as_iob2():
    rows = [{"tokens": ["the", "big", "bad", "wolf", "Ann"], "tags": ["O", "B-PER", "M-PER", "E-PER", "S-PER"]},
            {"tokens": ["a", "Bo"], "tags": ["O", "W-PER"]}]
    out = read_token_lists(rows, source="d.jsonl")
    assert [to_bio(r["tags"]) for r in out] == [["O", "B-PER", "I-PER", "I-PER", "B-PER"], ["O", "B-PER"]]


@pytest.mark.parametrize("odd", ["X-MOV", "o-MOV"])
def test_a_prefix_no_scheme_uses_is_refused_among_prefixed_tags(tmp_path, odd):
    rows = [{"tokens": ["a", "b"], "tags": ["B-MOV", "I-MOV"]}, {"tokens": ["c", "d"], "tags": ["B-MOV", odd]}]
    with pytest.raises(ConfigError, match=rf"d\.jsonl: sentence 2: tag '{odd}' has the prefix '{odd[:2]}'"):
        read_token_lists(rows, source="d.jsonl")
    with pytest.raises(ConfigError, match=rf"sentence 2: tag '{odd}'"):
        read_conll(_write(tmp_path, f"a B-MOV\nb I-MOV\n\nc B-MOV\nd {odd}\n"))


def test_plain_labels_with_a_hyphen_are_not_prefixes_without_prefixed_tags():
    out = read_token_lists([{"tokens": ["a", "b"], "tags": ["X-RAY", "O"]}], source="d.jsonl")
    assert out[0]["tags"] == ["X-RAY", "O"]


@pytest.mark.parametrize("token", ["", "  ", "\t", "\u3000"])
def test_an_empty_token_in_an_entity_is_refused_naming_its_row_and_one_tagged_o_reads(token):
    rows = [{"tokens": ["a", "b"], "tags": ["B-PER", "O"]}, {"tokens": ["x", token, "b"], "tags": ["O", "B-PER", "O"]}]
    with pytest.raises(ConfigError, match=r"d\.jsonl, row 2: token 2 .* is empty but tagged B-PER"):
        read_token_lists(rows, source="d.jsonl")
    rows[1]["tags"][1] = "O"  # a full-width space in character-level data, say
    assert read_token_lists(rows, source="d.jsonl")[1]["tokens"] == ["x", token, "b"]


@pytest.mark.parametrize("odd, why", [("tag", "has no B-/I- prefix"), ("_", "has no B-/I- prefix"),
                                      ("O,", "has no B-/I- prefix"), ("B", "names no entity type")])
def test_a_tag_without_prefix_or_type_among_prefixed_tags_is_refused(tmp_path, odd, why):
    """It would train as an entity type of its own: a header line's 'tag', a placeholder, a comma-joined list, a bare
    prefix among typed tags."""
    rows = [{"tokens": ["a", "b"], "tags": ["B-MOV", "I-MOV"]}, {"tokens": ["c", "d"], "tags": ["O", odd]}]
    with pytest.raises(ConfigError, match=rf"d\.jsonl: sentence 2: tag '{odd}' {why}.*, while other tags have"):
        read_token_lists(rows, source="d.jsonl")
    with pytest.raises(ConfigError, match=rf"sentence 1: tag '{odd}' {why}"):  # a header line, say
        read_conll(_write(tmp_path, f"token {odd}\na B-MOV\nb I-MOV\n"))


def test_whitespace_around_a_tag_is_no_part_of_it():
    rows = [{"tokens": ["a", "b", "c"], "tags": ["B-MOV ", " I-MOV", "O "]}]
    assert read_token_lists(rows, source="d.jsonl")[0]["tags"] == ["B-MOV", "I-MOV", "O"]
    with pytest.raises(ConfigError, match="is not a tag name"):
        read_token_lists([{"tokens": ["a"], "tags": ["  "]}], source="d.jsonl")


def test_tags_with_the_scheme_letter_last_are_read_prefix_first(tmp_path, capsys):
    """PER-B / LOC_I: read as they are, each would be an entity type of its own (two types per entity)."""
    path = _write(tmp_path, "Peter PER-B\nBlackburn PER-I\nin O\nNew LOC_B\nYork LOC_I\n\nRome LOC-S\n")
    assert [to_bio(r["tags"]) for r in read_conll(path)] == [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-LOC"]]
    assert capsys.readouterr().err.splitlines()[0] == f"note: {path}: tags read with the scheme letter last " \
                                                      "(LOC-S as S-LOC)"
    rows = [{"tokens": ["Ann", "ran"], "tags": ["B-geo-loc", "O"]}, {"tokens": ["a", "b"], "tags": ["PER", "O"]}]
    assert [r["tags"] for r in read_token_lists(rows[:1], source="d.jsonl")] == [["B-geo-loc", "O"]]
    assert [r["tags"] for r in read_token_lists(rows[1:], source="d.jsonl")] == [["PER", "O"]]  # plain: as it is
