"""launch/train.py as a user runs it: overrides, metrics files, SIGTERM, and SIGKILL safety."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cmd(workdir, *overrides):
    return [sys.executable, "-m", "launch.train", "--config=configs/backbone_tiny.py:runlocal",
            f"--workdir={workdir}", *overrides]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the trainer runs on one CPU device here
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _metrics(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip().endswith("}")]


def _wait_for_step(proc, workdir, step, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(r["step"] >= step for r in _metrics(workdir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError("trainer made no progress")


def _complete_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def test_cli_trains_with_overrides_and_writes_logs(tmp_path):
    out = subprocess.run(_cmd(tmp_path, "--config.train.steps=4", "--config.train.log_every=2"),
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "done at step 4" in out.stdout
    recs = _metrics(tmp_path)
    assert [r["step"] for r in recs] == [2, 4]
    assert {"loss", "lr/llm", "tokens_per_s", "step_time_s", "grad_norm"} <= set(recs[0])
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))
    assert json.load(open(tmp_path / "config.json"))["train"]["steps"] == 4


def test_bad_override_names_the_key(tmp_path):
    out = subprocess.run(_cmd(tmp_path, "--config.train.stepz=4"), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "stepz" in out.stderr


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    args = ["--config.train.steps=400", "--config.checkpoint.every=1000"]
    proc = subprocess.Popen(_cmd(tmp_path, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, tmp_path, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted at step" in out
    saved = _complete_steps(tmp_path)
    assert len(saved) == 1 and 3 <= saved[0] < 400  # saved where it stopped, not at a schedule point
    out = subprocess.run(_cmd(tmp_path, "--config.train.steps=400", "--config.checkpoint.every=1000",
                              "--config.train.log_every=100"),
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "done at step 400" in out.stdout


def test_sigkill_during_async_saves_never_corrupts_the_last_checkpoint(tmp_path):
    """Checkpoint every step (async) and kill -9 mid-run: the resumed run must continue
    from an intact checkpoint and log exactly the losses of an uninterrupted run."""
    args = ["--config.train.steps=40", "--config.checkpoint.every=1", "--config.checkpoint.keep=2"]
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref, *args), cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=900)
    work = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(work, *args), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_step(proc, work, 12)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = max(r["step"] for r in _metrics(work))
    assert killed_at < 40
    out = subprocess.run(_cmd(work, *args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    got = [(r["step"], r["loss"]) for r in _metrics(work)]
    want = [(r["step"], r["loss"]) for r in _metrics(ref)]
    assert got == want  # resumed run == uninterrupted run; no duplicate or missing steps
