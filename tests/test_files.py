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


def test_an_output_path_with_a_tilde_or_through_a_link_is_the_folder_meant(tmp_path, monkeypatch):
    """YAML's `output_dir: ~/x` made a folder named '~' in the working directory; `-o link --overwrite` of a link
    to an earlier run failed ('Is a directory') and left an empty .partial folder."""
    from tuneforge.run_dir import run_dir_path
    from tuneforge.files import PARTIAL, fresh_folder, new_folder, write_marker

    monkeypatch.setenv("HOME", str(tmp_path))
    assert run_dir_path("~/runs/x", "lora") == tmp_path / "runs" / "x"
    old = tmp_path / "runs" / "old"
    old.mkdir(parents=True)
    write_marker(old, "run")
    (old / "metrics.json").write_text("{}")
    link = tmp_path / "latest"
    link.symlink_to(old)
    assert run_dir_path(str(link), "lora", overwrite=True) == old
    assert fresh_folder(link, True, "run") == old and link.resolve() == old and not (old / "metrics.json").exists()
    export = tmp_path / "export"
    export.mkdir()
    write_marker(export, "export")
    (tmp_path / "export-link").symlink_to(export)
    with new_folder(tmp_path / "export-link", True, "export") as tmp:
        (tmp / "adapter_config.json").write_text("{}")
    assert (export / "adapter_config.json").is_file() and (tmp_path / "export-link").is_symlink()
    assert not [p for p in tmp_path.iterdir() if PARTIAL in p.name]


def test_a_loop_of_links_as_the_output_is_one_line(tmp_path):
    from tuneforge.files import output_folder

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(ConfigError, match=r"a symbolic link that cannot be followed .*; give a folder"):
        output_folder(tmp_path / "a")


def test_overwrite_never_replaces_the_folder_a_command_runs_in(tmp_path, monkeypatch):
    """``-o . --overwrite`` renamed the working folder away (an OSError, '..x.partial' folders left behind)."""
    from pathlib import Path

    from tuneforge.files import fresh_folder, new_folder, write_marker
    here = tmp_path / "proj"
    (here / "sub").mkdir(parents=True)
    write_marker(here, "comparison")
    (here / "keep.txt").write_text("mine")
    for cwd in (here, here / "sub"):  # the folder itself, or one inside it
        monkeypatch.chdir(cwd)
        with pytest.raises(ConfigError, match="is the folder this command runs in .*--overwrite does not replace"):
            fresh_folder(Path(".") if cwd == here else here, True, "comparison")
        with pytest.raises(ConfigError, match="is the folder this command runs in"):
            with new_folder(here, True, "comparison"):
                pytest.fail("built before checking")
    assert (here / "keep.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["proj"]
    monkeypatch.chdir(tmp_path)
    assert not any(fresh_folder(here, True, "comparison").glob("*.txt"))  # from elsewhere it is replaced as asked
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with new_folder(Path("."), False, "merged") as tmp:  # an empty working folder is filled (merge RUN "$PWD")
        (tmp / "config.json").write_text("{}")
    assert (empty / "config.json").is_file()


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_a_built_folder_and_its_files_have_the_modes_the_umask_gives(tmp_path, umask, folder_mode, file_mode):
    """A model folder is built in a mkdtemp folder (0700) and transformers' save_pretrained writes 0600 files: a
    trained or merged model was readable by its owner alone, whatever the umask."""
    import os
    import stat

    from tuneforge.files import partial_dir, replace_dir
    old = os.umask(umask)
    try:
        tmp = partial_dir(tmp_path, "model")
        (tmp / "sub").mkdir(mode=0o700)
        for f in (tmp / "model.safetensors", tmp / "sub" / "x.json"):
            f.write_text("x")
            os.chmod(f, 0o600)
        replace_dir(tmp, tmp_path / "model")
        atomic_write_text(tmp_path / "model" / "config.json", "{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    out = tmp_path / "model"
    assert mode(out) == mode(out / "sub") == folder_mode
    assert mode(out / "model.safetensors") == mode(out / "sub" / "x.json") == mode(out / "config.json") == file_mode
