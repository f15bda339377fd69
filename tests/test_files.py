"""files: atomic writes; a file that cannot be created is one clear line."""
import pytest

from tuneforge.config import ConfigError
from tuneforge.files import atomic_write_text


def test_a_file_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)  # as in a read-only or special folder (/proc)
    with pytest.raises(ConfigError, match=r"cannot write .*out\.json: Permission denied"):
        atomic_write_text(tmp_path / "out.json", "{}")


def test_a_folder_that_cannot_be_written_is_named_not_its_temporary_sibling():
    from pathlib import Path

    from tuneforge.files import new_folder
    with pytest.raises(ConfigError, match=r"^cannot write /proc/tuneforge-x: "):  # /proc takes no new folders
        with new_folder(Path("/proc/tuneforge-x"), False, "merged"):
            pass
