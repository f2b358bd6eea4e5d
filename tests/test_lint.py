"""Every Python file of the repository passes pyflakes: no unused imports or variables, no undefined
names (the benchmarks and scripts have no tests of their own; an undefined name there shows up here)."""

import io
import pathlib

from pyflakes import api, reporter

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIRS = ("omni_jax", "launch", "configs", "benchmarks", "tests", "notebooks")


def python_files() -> list[pathlib.Path]:
    files = [p for d in DIRS for p in sorted((ROOT / d).rglob("*.py"))] + sorted(ROOT.glob("*.py"))
    return [p for p in files if "__pycache__" not in p.parts]


def test_pyflakes_clean():
    files = python_files()
    assert len(files) > 100 and any(p.name == "setup.py" for p in files)
    out, err = io.StringIO(), io.StringIO()
    count = sum(api.checkPath(str(p), reporter.Reporter(out, err)) for p in files)
    report = (out.getvalue() + err.getvalue()).replace(str(ROOT) + "/", "")
    assert count == 0, f"pyflakes found {count} problem(s); fix them (unused import: delete it):\n{report}"
