"""A CSV/TSV without a header row: its first example is taken for the column names, so no column is found; the
error said to choose columns, which cannot help. It now says the file needs a header row."""
import pytest

from tuneforge.config import ConfigError
from tuneforge.data.dataset import source_records
from tuneforge.tasks import get

TASK = get("classification")
HINT = "the file's first row looks like an example, not column names: give the file a header row"


@pytest.mark.parametrize("name, text", [
    ("long.csv", "a was bad team tennis i the player 60,sports\ngood food,food\nthe match,sports\n"),
    ("short.tsv", "great film\tpos\nawful\tneg\nfine film\tpos\n"),  # 'pos' is a value of its own column
])
def test_a_file_without_a_header_row_is_told_so(tmp_path, name, text):
    from tuneforge.config import load_config

    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match="column 'text' not found") as err:
        source_records(TASK, str(tmp_path / name), load_config(None, {}))
    assert HINT in str(err.value) and "\n" not in str(err.value)


def test_a_header_of_other_names_gets_no_such_hint(tmp_path):
    from tuneforge.config import load_config

    (tmp_path / "d.csv").write_text("review,stars\ngood,5\nbad,1\nok,3\n")
    with pytest.raises(ConfigError, match="column 'label' not found; columns are 'review', 'stars'") as err:
        source_records(TASK, str(tmp_path / "d.csv"), load_config(None, {}))
    assert HINT not in str(err.value)
    survey = "Timestamp,What did you think of the film?,How many stars would you give?\n1,good,5\n2,bad,1\n"
    (tmp_path / "s.csv").write_text(survey)  # a form's questions: long names, yet a header
    with pytest.raises(ConfigError, match="not found") as err:
        source_records(TASK, str(tmp_path / "s.csv"), load_config(None, {}))
    assert HINT not in str(err.value)
