"""launch/train.py as a user runs it: overrides, metrics files, SIGTERM, and SIGKILL safety.

The signal tests hold one asynchronous checkpoint write open with the checkpointer's test hook
(OMNI_JAX_TEST_HOLD_SAVE, omni_jax/train/checkpoint.py), so the signal is sent while that save
is in flight and the run cannot get past the next save: the outcome never depends on timing."""

import json
import os
import signal
import subprocess
import sys
import time


from tests import compile_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cmd(workdir, *overrides):
    return [sys.executable, "-m", "launch.train", "--config=configs/backbone_tiny.py:runlocal",
            f"--workdir={workdir}", *overrides]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = compile_flags.FLAGS  # the trainer runs on one CPU device here
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _metrics(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip().endswith("}")]


def _wait_for_held_save(proc, gate, timeout=300):
    """Until the held checkpoint write has started (bounded; fails naming what happened)."""
    t0 = time.time()
    while not os.path.exists(os.path.join(gate, "writing")):
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited before the held save: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the held checkpoint write did not start within {timeout} s")
        time.sleep(0.05)


def _held_env(step, gate):
    os.makedirs(gate, exist_ok=True)
    return dict(_env(), OMNI_JAX_TEST_HOLD_SAVE=f"{step}:{gate}")


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
    """One line as absl reports a bad flag (launch/flag_errors.py), not a library traceback."""
    out = subprocess.run(_cmd(tmp_path, "--config.train.stepz=4"), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-3000:]
    assert ("FATAL Flags parsing error: --config.train.stepz=4: unknown config key 'train.stepz'; "
            "did you mean 'train.steps'?") in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and not os.path.exists(tmp_path / "checkpoints")


def test_a_bug_in_the_config_file_keeps_its_traceback(tmp_path):
    """Only unknown override keys become one-line flag errors; an AttributeError raised by the
    config file itself is shown with its traceback (where the bug is)."""
    cfg = tmp_path / "buggy.py"
    cfg.write_text("def get_config():\n    return None.steps  # the bug\n")
    out = subprocess.run([sys.executable, "-m", "launch.train", f"--config={cfg}", f"--workdir={tmp_path}/run",
                          "--config.train.steps=2"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "return None.steps" in out.stderr, out.stderr[-3000:]


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    """Checkpoints every 5 steps; the write of step 5 is held, SIGTERM is sent during it, then
    released. The run stops at the next step boundary it reaches (5..10: it cannot pass the save
    at 10, which waits for the held one), has a checkpoint exactly there (saved on the signal
    unless it is a scheduled one) and resumes to the end."""
    args = ["--config.train.steps=400", "--config.checkpoint.every=5", "--config.train.log_every=1"]
    gate = str(tmp_path / "gate")
    work = tmp_path / "run"
    proc = subprocess.Popen(_cmd(work, *args), cwd=ROOT, env=_held_env(5, gate), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_held_save(proc, gate)
        proc.send_signal(signal.SIGTERM)
        open(os.path.join(gate, "release"), "w").close()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    stopped = max(r["step"] for r in _metrics(work))
    assert 5 <= stopped <= 10 and f"preempted at step {stopped}:" in out
    assert _complete_steps(work) == sorted({5, stopped})  # the held save completed; one where it stopped
    out = subprocess.run(_cmd(work, "--config.train.steps=400", "--config.checkpoint.every=1000",
                              "--config.train.log_every=100"),
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "done at step 400" in out.stdout


def test_sigkill_during_async_saves_never_corrupts_the_last_checkpoint(tmp_path):
    """Checkpoint every step (async) and kill -9 while the write of step 12 is held open (so the
    kill lands during an async save, every time): step 12 stays an uncommitted temporary
    directory, the resumed run continues from step 11 and logs exactly the losses of an
    uninterrupted run."""
    args = ["--config.train.steps=40", "--config.checkpoint.every=1", "--config.checkpoint.keep=2"]
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref, *args), cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=900)
    work = tmp_path / "killed"
    gate = str(tmp_path / "gate")
    proc = subprocess.Popen(_cmd(work, *args), cwd=ROOT, env=_held_env(12, gate), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for_held_save(proc, gate)
        in_flight = [n for n in os.listdir(work / "checkpoints") if n.startswith("12.")]
        assert in_flight and "tmp" in in_flight[0], os.listdir(work / "checkpoints")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    killed_at = max(r["step"] for r in _metrics(work))
    assert killed_at in (12, 13)  # step 13's save waits for the held one
    assert max(_complete_steps(work)) == 11  # the interrupted save is invisible
    out = subprocess.run(_cmd(work, *args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    got = [(r["step"], r["loss"]) for r in _metrics(work)]
    want = [(r["step"], r["loss"]) for r in _metrics(ref)]
    assert got == want  # resumed run == uninterrupted run; no duplicate or missing steps
