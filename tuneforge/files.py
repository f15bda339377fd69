"""Files that survive a crash: atomic, fsynced writes (temp file + rename + directory fsync), leftovers of
interrupted writes cleaned up, folders that carry tuneforge's marker (the only non-empty folders
``--overwrite`` may replace), and named crash points for the crash tests.

SQLite's attitude: a reader sees the old file or the new one, never half of one, whatever moment the process
is killed (SIGKILL, power loss after the fsync).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tuneforge.config import ConfigError

MARKER = ".tuneforge"  # a folder tuneforge created (run directory, export, merged model, comparison)
PARTIAL = ".partial"  # suffix of temporary files and folders being written
CRASH_ENV = "TUNEFORGE_CRASH_AT"  # tests: "<point>" or "<point>:<n>" kills the process at the n-th hit


def crash_point(name: str) -> None:
    """SIGKILL this process here when ``$TUNEFORGE_CRASH_AT`` names this point (crash tests)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, nth = wanted.rpartition(":")  # names contain colons too: "write:metrics.json", "write:x.json:2"
    if not nth.isdigit():
        point, nth = wanted, ""
    if point != name:
        return
    hits = _HITS[name] = _HITS.get(name, 0) + 1
    if hits >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_HITS: dict[str, int] = {}


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _writing(shown: Path | str) -> Iterator[None]:
    """Around making a temporary file or folder: a folder that takes none (read-only, /proc) is one line naming
    ``shown``, the path the user gave, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write {shown}: {exc.strerror or exc}") from None


def check_writable(folder: Path, shown: Path | str) -> None:
    """Refuse now, before any work, to write ``shown`` where ``folder`` takes no new file."""
    with _writing(shown):
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tuneforge-probe-")
    os.close(fd)
    os.unlink(probe)


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder."""
    path = Path(path)
    with _writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; run files are ordinary files
        crash_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically (temp file + fsync + rename)."""
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")
    _atomic(path, write)


def save_json(obj: Any, path: Path, compact: bool = False) -> None:
    """``obj`` as indented JSON, or with ``compact`` on as few bytes as JSON allows (``split.json``: a row
    number per example, 34 bytes each indented, 7 compact)."""
    layout = {"separators": (",", ":")} if compact else {"indent": 2}
    atomic_write_text(path, json.dumps(obj, default=float, **layout) + "\n")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written atomically (contiguous CPU copies)."""
    def write(tmp: str) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    _atomic(path, write)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target`` (replacing an older one), durably. A crash in between
    leaves ``tmp`` (a ``.partial`` folder, removed by :func:`clean_partial`) and no or the old ``target``."""
    mask = _umask()
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700 (and some writers 0600 files): the user's umask decides
    for f in tmp.rglob("*"):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, 0o666 & ~mask)
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        elif f.is_dir() and not f.is_symlink():
            os.chmod(f, 0o777 & ~mask)
    if target.exists() and not any(target.iterdir()) and holds_cwd(target):  # `merge RUN .` in an empty folder:
        for child in sorted(tmp.iterdir(), key=lambda p: p.name == MARKER):  # filled in place (the marker last),
            os.replace(child, target / child.name)                         # not replaced under the shell
        tmp.rmdir()
        fsync_dir(target)
        return
    if target.exists():
        _discard(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def _umask() -> int:
    """The process's umask: from /proc (Linux), else read by setting it and putting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def partial_dir(parent: Path, name: str) -> Path:
    """A new temporary folder in ``parent`` for building ``name`` (see :func:`replace_dir`); a folder that cannot be
    written (read-only, /proc) is one line naming ``name``'s path, not the temporary one's."""
    with _writing(parent / name):
        return Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=PARTIAL))


def clean_partial(folder: Path) -> int:
    """Remove leftovers of interrupted writes (``*.partial`` files and folders) in ``folder``; returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        if p.name.endswith(PARTIAL):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            removed += 1
    return removed


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as made by tuneforge (``kind``: run, merged, peft, comparison)."""
    from tuneforge import __version__
    save_json({"kind": kind, "tuneforge_version": __version__}, folder / MARKER)


def is_ours(folder: Path) -> bool:
    return (folder / MARKER).is_file()


# kinds of folder that may replace each other with --overwrite: an export (PEFT adapter) and a merged model are
# both outputs made from a run; a run is replaced only by a run, a comparison only by a comparison
FAMILY = {"export": "export", "merged": "export", "peft": "export"}


def marker_kind(folder: Path) -> str | None:
    """The ``kind`` written in ``folder``'s marker (None: no readable marker)."""
    try:
        return json.loads((folder / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def check_replaceable(folder: Path, overwrite: bool, what: str = "output folder", kind: str | None = None) -> None:
    """Refuse an existing non-empty ``folder`` unless ``overwrite`` and tuneforge made it (its marker) as a folder
    of the same kind as ``kind`` (when given): an export never replaces the run it was made from."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{what} {folder} exists and is not a folder; choose another path")
    if not any(folder.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{what} {folder} already exists; choose another or pass --overwrite")
    if not is_ours(folder):
        raise ConfigError(f"{what} {folder} is not empty and was not made by tuneforge (no {MARKER} marker); "
                          "--overwrite only replaces tuneforge's own folders: choose another path or empty it")
    found = marker_kind(folder)
    if kind is not None and FAMILY.get(found, found) != FAMILY.get(kind, kind):
        raise ConfigError(f"{what} {folder} is a tuneforge folder of kind '{found}', not '{kind}'; --overwrite "
                          "only replaces a folder of the same kind (an export never its run): choose another path")


def clean_siblings(folder: Path) -> None:
    """Remove ``.<name>.*.partial`` beside ``folder``: leftovers of an interrupted build or removal of it."""
    if folder.parent.is_dir():
        for p in folder.parent.iterdir():
            if p.name.startswith(f".{folder.name}.") and p.name.endswith(PARTIAL):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def set_aside(folder: Path) -> Path:
    """Move ``folder`` to a new ``.partial`` sibling in one rename (durable) and return where it went: removed
    all at once later, or moved back (:func:`put_back`); a crash leaves it whole (cleaned next time)."""
    not_current(folder, "folder")
    aside = partial_dir(folder.parent, folder.name)
    os.replace(folder, aside)
    fsync_dir(folder.parent)
    return aside


def put_back(aside: Path, folder: Path) -> None:
    """Undo :func:`set_aside` (whatever is at ``folder`` now is removed)."""
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(aside, folder)
    fsync_dir(folder.parent)


def holds_cwd(folder: Path) -> bool:
    """Whether ``folder`` is the folder this process runs in, or holds it."""
    here, target = Path.cwd().resolve(), folder.resolve()
    return target == here or target in here.parents


def not_current(folder: Path, what: str) -> None:
    """Refuse to replace the folder this process runs in (``-o .``), or one that holds it."""
    if holds_cwd(folder):
        raise ConfigError(f"{what} {folder} is the folder this command runs in (or holds it), which --overwrite does "
                          "not replace: run the command from elsewhere, or choose another path")


def _discard(folder: Path) -> None:
    """Remove ``folder`` all at once, never half of it (a half-deleted run without its marker could never be
    replaced again)."""
    shutil.rmtree(set_aside(folder))


def output_folder(folder: str | Path) -> Path:
    """A folder to write as the user named it: ``~`` expanded (a YAML ``output_dir: ~/runs/x`` made a folder
    named '~'), a symbolic link followed to the folder it names (replacing the link itself failed)."""
    path = Path(folder).expanduser()
    try:  # '.' and '..' have no name of their own to build a sibling from: their absolute path has
        return path.resolve(strict=False) if path.is_symlink() or path.name in ("", "..") else path
    except (RuntimeError, OSError) as exc:  # a loop of links
        raise ConfigError(f"{folder}: a symbolic link that cannot be followed ({exc}); give a folder") from None


def fresh_folder(folder: Path, overwrite: bool, kind: str, what: str = "output folder") -> Path:
    """An empty ``folder`` marked as tuneforge's: new, empty, or (``overwrite``) a tuneforge folder emptied."""
    folder = output_folder(folder)
    check_replaceable(folder, overwrite, what, kind)
    if folder.exists() and any(folder.iterdir()):
        not_current(folder, what)
        _discard(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind)
    return folder


@contextlib.contextmanager
def new_folder(folder: Path, overwrite: bool, kind: str, what: str = "output folder",
               keep: dict[str, str | Path] | None = None) -> Iterator[Path]:
    """Build ``folder`` (merged model, export) in a ``.partial`` folder beside it, moved in place, fsynced,
    only when the block succeeds; an existing folder is refused unless :func:`check_replaceable` allows it,
    and replaced only then, never where it is or holds one of ``keep`` (its description -> path: the run being
    exported, its base model). A crash leaves the old folder (or none) and a leftover removed next time."""
    folder = output_folder(folder)
    check_replaceable(folder, overwrite, what, kind)
    if folder.exists() and any(folder.iterdir()):  # an empty working folder is filled, not replaced
        not_current(folder, what)
        here = folder.resolve()
        for name, path in (keep or {}).items():
            inside = Path(path).expanduser().resolve()
            if inside == here or here in inside.parents:
                raise ConfigError(f"{what} {folder} {'is' if inside == here else 'holds'} {name} "
                                  f"({path}), which replacing it would remove; write to another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_siblings(folder)
    tmp = partial_dir(folder.parent, folder.name)
    try:
        write_marker(tmp, kind)
        yield tmp
        crash_point("folder-built")
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
