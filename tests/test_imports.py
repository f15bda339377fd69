"""The package's modules import each other in one direction: no cycles, counting imports inside functions too
(a lazy import still ties two modules together)."""
import ast
from pathlib import Path

import tuneforge

ROOT = Path(tuneforge.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Package modules that ``path`` imports (``from tuneforge.x import y`` counts y when y is a module)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    edges = {name: _imports(path, name, set(files)) for name, path in files.items()}
    for name in edges:  # importing a package's module runs the package's __init__ first: not a dependency edge
        edges[name] = {m for m in edges[name] if not name.startswith(m + ".")}
    return edges


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_graph_sees_lazy_imports():
    edges = graph()
    assert "tuneforge.run" in edges["tuneforge.commands"]  # imported inside the command handlers
    assert "tuneforge.loaded" in edges["tuneforge.run"]


def test_pandas_loads_only_to_read_csv_or_parquet(tmp_path):
    """pandas and pyarrow (about 60 MiB of memory, half a second to import) load only to read a CSV, TSV or
    Parquet file: not with the package, the command line, JSONL data or the embedded movie reviews."""
    import subprocess
    import sys
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "x"}\n')
    (tmp_path / "d.csv").write_text("text,label\na,x\n")
    script = (
        "import sys\n"
        "import tuneforge.run, tuneforge.cli, tuneforge.commands\n"
        "from tuneforge.data import embedded, readers\n"
        f"readers.read_records({str(tmp_path / 'd.jsonl')!r}); embedded.rotten_tomatoes()\n"
        "before = [m for m in ('pandas', 'pyarrow') if m in sys.modules]\n"
        f"readers.read_records({str(tmp_path / 'd.csv')!r})\n"
        "print(before, 'pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "[] True"
