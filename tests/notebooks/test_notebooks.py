"""notebooks/*.ipynb: every code cell runs (so the notebooks cannot rot)."""

import glob
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch, capsys):
    monkeypatch.setenv("QUICKSTART_STEPS", "3")
    monkeypatch.chdir(ROOT)
    nb = json.load(open(path))
    scope: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{os.path.basename(path)}", "exec"), scope)
    out = capsys.readouterr().out
    assert "bit-exact round trip: True" in out or "quickstart" not in path


def test_there_is_a_notebook():
    assert NOTEBOOKS
