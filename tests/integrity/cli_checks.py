"""The command line in-process for the integrity tests: ``main``, a tiny run's arguments, and ``one_error``
(exit status 2, one line ``tuneforge: error: ...`` naming what is wrong, no traceback, nothing created or
changed)."""
import json
from pathlib import Path

from tuneforge.cli import main as cli_main

TINY = ["-q", "train.max_steps=2", "train.batch_size=16", "model.max_length=32", "method.rank=2",
        "eval.before=false"]


def train_argv(model, data, out, *extra, method="lora"):
    argv = ["train", "--model", str(model), "--data", str(data), "-o", str(out), "--method", method, *TINY, *extra]
    return [a for a in argv if not (method != "lora" and a == "method.rank=2")]


def main(argv) -> int:
    return cli_main([str(a) for a in argv])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders): what "unchanged" compares."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def one_error(capsys, argv, *needles):
    """Run the CLI: exit 2, exactly one stderr line 'tuneforge: error: ...' holding every needle, no traceback."""
    capsys.readouterr()
    before = snapshot(Path.cwd())  # each test's own folder: its inputs, outputs and default runs/ folder
    code = main(argv)
    captured = capsys.readouterr()
    assert snapshot(Path.cwd()) == before, "a failed command created or changed files"
    err = captured.err.strip()
    assert code == 2, (code, captured.err)
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1 and err.startswith("tuneforge: error:"), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

