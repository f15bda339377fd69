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
