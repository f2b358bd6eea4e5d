"""notebooks/*.ipynb: every code cell runs (so the notebooks cannot rot)."""

import glob
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
# what each notebook must print (its cells' outputs), beyond running without an error
EXPECTED = {
    "quickstart.ipynb": ["bit-exact round trip: True"],
    "conversion.ipynb": ["export parity ok: True", "same next-token argmax everywhere: True", "greedy identical: True",
                         "every layer within 1e-5: True"],
}


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
    for line in EXPECTED.get(os.path.basename(path), []):
        assert line in out, f"{os.path.basename(path)} did not print {line!r}:\n{out[-3000:]}"


def test_there_is_a_notebook():
    assert NOTEBOOKS
