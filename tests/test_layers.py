"""The import graph keeps its layers (the contracts in pyproject.toml's [tool.importlinter]):
faces above the engine above the pure ground floor, which reaches no server. `make lint`
runs the same check; here it runs with every test run, so CI enforces it. And no function
in worker/ is over 60 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_are_kept() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


# The longest a function in worker/ may be, counted from its `def` line to its last line.
MAX_FUNCTION_LINES = 60


def _function_lengths(path: Path) -> list[tuple[str, int]]:
    """Every function and method in `path` (nested ones too), by qualified name, with its
    length in lines."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    assert child.end_lineno is not None
                    found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return found


def test_no_function_in_worker_is_over_60_lines() -> None:
    lengths: dict[tuple[str, str], int] = {}
    for path in sorted((ROOT / "worker").rglob("*.py")):
        for name, lines in _function_lengths(path):
            # A name defined twice (a property's setter, say) counts as its longer one.
            where = (path.relative_to(ROOT).as_posix(), name)
            lengths[where] = max(lines, lengths.get(where, 0))
    too_long = {
        f"{path} {name}: {lines} lines"
        for (path, name), lines in lengths.items()
        if lines > MAX_FUNCTION_LINES
    }
    assert not too_long, f"over {MAX_FUNCTION_LINES} lines: split them: {sorted(too_long)}"
