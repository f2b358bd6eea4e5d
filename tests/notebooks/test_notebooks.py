"""notebooks/*.ipynb: every code cell runs and prints what the notebook promises (so the
notebooks cannot rot). Every notebook must have its expected outputs listed in EXPECTED."""

import glob
import json
import os
import re

import pytest

# omni_tour.ipynb tours tests/conftest.py `eval_report_run`: this file runs in the worker that builds it
pytestmark = pytest.mark.xdist_group("eval_report_run")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
# notebook -> one regex per code cell, searched (multi-line) in what that cell prints (QUICKSTART_STEPS=3)
EXPECTED = {
    "quickstart.ipynb": [
        r"^done \[(\d+\.\d+(, )?)+\]$",  # trained to the end, the logged losses
        r"^bit-exact round trip: True$",  # ours -> Hugging Face safetensors -> ours
        r"^'the red circle is.+'$",  # the prompt and at least one generated character
    ],
    "conversion.ipynb": [
        r"^done \[(\d+\.\d+(, )?)+\]$",  # the tiny v1 trained to the end
        r"^export parity ok: True$",  # export_torch checked the exported model on random inputs
        r"(?s)^same next-token argmax everywhere: True$.*^greedy identical: True$",  # loaded by AutoModelForCausalLM
        r"^every layer within 1e-5: True$",  # the per-layer differences
    ],
    "omni_tour.ipynb": [
        r"^model: .+ \((the trained workdir|a stand-in trained just now), step \d+\)$",
        # the held-out image shown, its question answered
        r"(?s)^<IPython.core.display.Image object>$.*^question: [^\n]+\nreply: '[^\n]*'\nreference: '[^\n]+'$",
        # the WAV's player, its transcript and CER
        r"(?s)^<IPython.lib.display.Audio object>$.*^transcript: '[^\n]*'\nreference: '[^\n]+'\nCER: \d+\.\d\d$",
        # a spoken question answered with text and speech, and the reply's inline player
        r"(?s)^reply text: '[^\n]*'$.*^speech: [1-9]\d* frames, \d+\.\d\d s -> [^\n]+reply\.wav\n"
        r"<IPython.lib.display.Audio object>$",
        # the spectrograms of the reply and of the synthesiser's reference; the reply heard back
        r"^spectrogram: reply [1-9]\d* frames, reference [1-9]\d* frames, 80 mel bins\n"
        r"heard back: '[^\n]*' \(CER against the reply text: \d+\.\d\d\)$",
        r"^(report: .+report\.md \(\d+ lines, \d+ plots\)|no report: .+ has no eval/report\.md .+)$",
    ],
    "reproducibility.ipynb": [
        r"(?s)^a_scratch_bitwise +pass$.*^b_kills_bitwise +pass$.*^c_sigterm_bitwise +pass$.*^passed: True$",
        r"(?s)^scratch_1 +[0-9a-f]{16} .*^mesh_data1_fsdp2 +[0-9a-f]{16} .*^bitwise equal: True$",
        r"^loss curves: 5 variants, batches equal in all: True$",
    ],
}


def test_every_notebook_has_expected_outputs():
    assert NOTEBOOKS
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert names == set(EXPECTED), f"list the expected outputs of {sorted(names - set(EXPECTED))} in EXPECTED"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch, capsys, request):
    monkeypatch.setenv("QUICKSTART_STEPS", "3")
    if os.path.basename(path) == "omni_tour.ipynb":  # the tour of a trained workdir: the report test's run
        monkeypatch.setenv("OMNI_TOUR_WORKDIR", str(request.getfixturevalue("eval_report_run")[1]))
    monkeypatch.chdir(ROOT)
    nb = json.load(open(path))
    scope: dict = {}
    printed = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            capsys.readouterr()
            exec(compile("".join(cell["source"]), f"{os.path.basename(path)}", "exec"), scope)
            printed.append(capsys.readouterr().out.strip())
    want = EXPECTED[os.path.basename(path)]
    assert len(printed) == len(want), f"{len(printed)} code cells, {len(want)} expected outputs"
    for i, (out, pattern) in enumerate(zip(printed, want)):
        print(f"cell {i}: {out[-2000:]!r}")
        assert re.search(pattern, out, re.M), f"code cell {i} printed {out[-2000:]!r}, want {pattern}"
