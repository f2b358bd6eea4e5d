"""launch/infer.py as a command: flags reach the runner, bad input is named (the model runs in
tests/tasks/test_omni_task.py and test_omni_v1_task.py, which call `run` on real checkpoints)."""

import subprocess
import sys


def _infer(*args, cwd):
    return subprocess.run([sys.executable, "-m", "launch.infer", *args], capture_output=True, text=True, cwd=cwd)


def test_bad_inputs_are_named(tmp_path):
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = _infer(f"--src={tmp_path / 'nowhere'}", "--text=hi", cwd=root)
    assert r.returncode != 0 and "is neither an omni_jax workdir nor a release directory" in r.stderr
    r = _infer(f"--src={tmp_path}", cwd=root)
    assert r.returncode != 0 and "give the model something: --text, --image, --video and/or --audio" in r.stderr
    (tmp_path / "frames").mkdir()
    r = _infer(f"--src={tmp_path}", f"--video={tmp_path / 'frames'}", cwd=root)
    assert r.returncode != 0 and "the directory holds no frame images" in r.stderr
    r = _infer(f"--src={tmp_path}", "--text=hi", cwd=root)
    assert r.returncode != 0 and "has no config.json: it is neither a release-format directory" in r.stderr
