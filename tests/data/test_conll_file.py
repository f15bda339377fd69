"""CoNLL files whose lines start with an index column (GermEval) or that are CoNLL-U."""
import pytest

from tuneforge.config import ConfigError
from tuneforge.data.conll_file import read_conll


def _write(tmp_path, text, name="d.conll"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_an_index_column_first_is_not_read_as_the_tokens(tmp_path, capsys):
    germeval = "1\tJohn\tB-PER\tO\n2\tlives\tO\tO\n\n1\tHi\tO\tO\n2\t3\tO\tO\n"  # index, word, outer, inner tags
    assert read_conll(_write(tmp_path, germeval)) == [{"tokens": ["John", "lives"], "tags": ["B-PER", "O"]},
                                                      {"tokens": ["Hi", "3"], "tags": ["O", "O"]}]
    assert "tokens from column 2, tags from column 3" in capsys.readouterr().err
    numbers = "1\tB-PER\n2\tO\n\n7\tO\n"  # number tokens, not an index: as before
    assert read_conll(_write(tmp_path, numbers))[0]["tokens"] == ["1", "2"]


def test_conll_u_is_refused(tmp_path):
    conllu = "# sent_id = 1\n1\tJohn\tJohn\tPROPN\tNNP\t_\t2\tnsubj\t_\t_\n2\tlives\tlive\tVERB\tVBZ\t_\t0\troot\t_\t_\n"
    with pytest.raises(ConfigError, match=r"d\.conll is CoNLL-U .* holds no entity tags"):
        read_conll(_write(tmp_path, conllu))


def test_tags_in_the_first_column_and_words_in_the_last_are_refused(tmp_path):
    swapped = "B-PER\tJohn\nO\tlives\nO\tin\nB-LOC\tNew\nI-LOC\tYork\n\nO\tHi\nB-PER\tAnn\n"
    with pytest.raises(ConfigError, match=r"d\.conll: the first column holds tags \(B-LOC, B-PER, I-LOC \.\.\.\) and "
                                          r"the last words \(John, lives, in \.\.\.\); write each line as 'token<TAB>tag'"):
        read_conll(_write(tmp_path, swapped))
    plain = "John\tPER\nlives\tO\nO\tO\n"  # plain tags, and a word that reads like a tag: the right way round
    assert read_conll(_write(tmp_path, plain))[0]["tags"] == ["PER", "O", "O"]


def test_bare_chunk_tags_are_one_entity_type_with_a_note(tmp_path, capsys):
    """Keyphrase and chunking data (Inspec's B/I/O) tag spans without a type: not two types called B and I."""
    path = _write(tmp_path, "deep\tB\nlearning\tI\nworks\tO\n\nneural\tb\nnets\ti\n")
    assert read_conll(path) == [{"tokens": ["deep", "learning", "works"], "tags": ["B-SPAN", "I-SPAN", "O"]},
                                {"tokens": ["neural", "nets"], "tags": ["B-SPAN", "I-SPAN"]}]
    assert capsys.readouterr().err == f"note: {path}: tags B, I name no entity type; read as one type, SPAN (B as B-SPAN)\n"
    typed = _write(tmp_path, "Ann\tB\nin\tO\nOslo\tLOC\n", "typed.conll")  # B beside another plain label: as written
    assert read_conll(typed)[0]["tags"] == ["B", "O", "LOC"]


def test_entity_types_that_differ_only_in_case_are_noted(tmp_path, capsys):
    path = _write(tmp_path, "Ann\tB-PER\nin\tO\nOslo\tB-LOC\n\nBob\tB-per\nran\tO\n")
    assert read_conll(path)[1]["tags"] == ["B-per", "O"]  # separate types, as written
    assert capsys.readouterr().err == (f"note: {path}: entity types 'PER' and 'per' differ only in case and are "
                                       "separate types; write them one way if they mean the same\n")
