"""omni_jax/workdir.py: epath workdirs (gs:// never becomes a local folder) and the owner lease."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from etils import epath
from etils.epath import testing as epath_testing

from configs import backbone_tiny
from omni_jax.workdir import (
    LEASE_FILE, WorkdirBusyError, WorkdirLease, config_hash, is_local, workdir_path, write_text_atomic)


def test_cloud_workdir_keeps_its_scheme_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = workdir_path("gs://bucket/run")
    assert os.fspath(p) == "gs://bucket/run" and not is_local(p)
    assert os.fspath(p / "checkpoints") == "gs://bucket/run/checkpoints"
    assert os.fspath(workdir_path(p)) == "gs://bucket/run"
    assert os.fspath(workdir_path("runs/x")) == str(tmp_path / "runs" / "x")
    assert os.fspath(workdir_path(f"file://{tmp_path}/y")) == str(tmp_path / "y")
    assert not (tmp_path / "gs:").exists()


class FakeGCS:
    """Every epath call on gs://bucket/... lands in `root/bucket/...` (offline); records the gs:// paths
    touched and every local path, so a test can tell a cloud path never became a local `gs:` folder."""

    def __init__(self, root):
        self.root, self.remote, self.local = root, [], []

    def map(self, path):
        s = os.fspath(path)
        if s.startswith("gs://"):
            self.remote.append(s)
            return os.path.join(self.root, s[len("gs://"):])
        self.local.append(s)
        return s

    def patch(self):
        one = lambda orig, p, *a, **k: orig(self.map(p), *a, **k)  # noqa: E731
        two = lambda orig, p, d, *a, **k: orig(self.map(p), self.map(d), *a, **k)  # noqa: E731
        walk = lambda orig, p, **k: orig(self.map(p), **k)  # noqa: E731
        glob = lambda orig, p: [  # noqa: E731
            "gs://" + os.path.relpath(g, self.root) if os.fspath(p).startswith("gs://") else g
            for g in orig(self.map(p))]
        return epath_testing.mock_epath(
            open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one, rmtree=one,
            stat=one, rename=two, replace=two, copy=two, walk=walk, glob=glob)


def test_trainer_writes_a_gs_workdir_through_epath_never_a_local_gs_folder(tmp_path, monkeypatch):
    """The whole run with --workdir=gs://bucket/run on a fake GCS backend: config, metrics, TensorBoard,
    the lease and the checkpoint directory handed to orbax all keep the gs:// scheme. (Orbax writes the
    arrays through tensorstore's own GCS driver, which cannot be faked offline, so the Checkpointer is
    given the fake bucket's local folder after recording the gs:// path it received.)"""
    import omni_jax.train.trainer as tr
    from omni_jax.train.metrics import read_metrics

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    fake = FakeGCS(str(tmp_path / "gcs"))
    seen = []

    class LocalisedCheckpointer(tr.Checkpointer):
        def __init__(self, directory, **kw):
            seen.append(os.fspath(directory))
            super().__init__(fake.map(directory), **kw)

    monkeypatch.setattr(tr, "Checkpointer", LocalisedCheckpointer)
    c = backbone_tiny.get_config("runlocal")
    c.train.steps = 2
    c.stages.pretrain.steps = 2
    with fake.patch():
        r = tr.train(c, "gs://bucket/run")
        lines = read_metrics("gs://bucket/run")
    assert r["status"] == "done" and r["step"] == 2
    assert seen == ["gs://bucket/run/checkpoints"]
    run = tmp_path / "gcs" / "bucket" / "run"
    assert json.loads((run / "config.json").read_text())["task"] == c.task
    assert [x["step"] for x in lines] == [1, 2]
    assert any(f.name.startswith("events.out.tfevents") and f.stat().st_size > 0
               for f in (run / "tensorboard").iterdir())
    assert (run / "checkpoints" / "2").is_dir()
    assert not (run / LEASE_FILE).exists()  # released at the end
    assert "gs://bucket/run/owner.json" in fake.remote and "gs://bucket/run/metrics.jsonl" in fake.remote
    assert not any("gs:" in p for p in fake.local), [p for p in fake.local if "gs:" in p]
    assert list(cwd.iterdir()) == []  # nothing named gs: (or anything else) appeared locally


def test_write_text_atomic_replaces_whole_file(tmp_path):
    p = epath.Path(tmp_path) / "a.json"
    write_text_atomic(p, "one")
    write_text_atomic(p, "two")
    assert p.read_text() == "two" and sorted(os.listdir(tmp_path)) == ["a.json"]


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _lease_of(workdir, **record):
    rec = {"host": socket.gethostname(), "pid": 1, "start_time": time.time(), "config_hash": "abc",
           "run_id": "other", "renewed": time.time()}
    rec.update(record)
    (workdir / LEASE_FILE).write_text(json.dumps(rec))


def test_a_workdir_another_live_run_writes_is_refused_naming_the_fix(tmp_path):
    p = _sleeper()
    try:
        _lease_of(tmp_path, pid=p.pid)
        with pytest.raises(WorkdirBusyError) as e:
            WorkdirLease(tmp_path, "def").acquire()
    finally:
        p.kill()
        p.wait()
    msg = str(e.value)
    print(msg)
    assert f"pid {p.pid}" in msg and socket.gethostname() in msg and "different config" in msg
    assert "different --workdir" in msg and str(tmp_path / LEASE_FILE) in msg and "lease_timeout_s" in msg


def test_a_dead_or_reused_pid_on_this_host_or_an_expired_lease_is_taken_over(tmp_path, caplog):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    _lease_of(tmp_path, pid=p.pid)  # that process is gone
    lease = WorkdirLease(tmp_path, "abc")
    lease.acquire()
    assert "is gone" in caplog.text
    assert json.loads((tmp_path / LEASE_FILE).read_text())["pid"] == os.getpid()
    lease.release()
    assert not (tmp_path / LEASE_FILE).exists()

    q = _sleeper()
    try:
        _lease_of(tmp_path, pid=q.pid, start_time=time.time() - 1000)  # the pid now names a younger process
        WorkdirLease(tmp_path, "abc").acquire()
        assert "started after the lease" in caplog.text
    finally:
        q.kill()
        q.wait()

    _lease_of(tmp_path, host="other-host", renewed=time.time() - 30)  # another host, recently renewed: busy
    with pytest.raises(WorkdirBusyError, match="host other-host"):
        WorkdirLease(tmp_path, "abc", timeout_s=60).acquire()
    lease = WorkdirLease(tmp_path, "abc", timeout_s=10)  # ... not renewed within the timeout: stale
    lease.acquire()
    assert "last renewed" in caplog.text
    lease.release()


def test_the_heartbeat_renews_and_a_takeover_is_noticed(tmp_path):
    lease = WorkdirLease(tmp_path, "abc", timeout_s=1.0, renew_every_s=0.05)
    lease.acquire()
    try:
        first = json.loads((tmp_path / LEASE_FILE).read_text())["renewed"]
        time.sleep(0.4)
        assert json.loads((tmp_path / LEASE_FILE).read_text())["renewed"] > first
        lease.check()
        _lease_of(tmp_path, host="other-host")
        time.sleep(0.3)
        with pytest.raises(WorkdirBusyError, match="took over"):
            lease.check()
        assert json.loads((tmp_path / LEASE_FILE).read_text())["host"] == "other-host"  # not overwritten
    finally:
        lease.release()
    assert (tmp_path / LEASE_FILE).exists()  # the other run's lease stays


def test_train_refuses_a_busy_workdir_before_building_anything(tmp_path):
    from omni_jax.train.trainer import train

    c = backbone_tiny.get_config("runlocal")
    p = _sleeper()
    try:
        _lease_of(tmp_path, pid=p.pid, config_hash=config_hash(c))
        with pytest.raises(WorkdirBusyError, match="the same config"):
            train(c, str(tmp_path))
    finally:
        p.kill()
        p.wait()
    assert sorted(os.listdir(tmp_path)) == [LEASE_FILE]  # nothing written: no checkpoints, config or metrics


def test_a_run_whose_workdir_is_taken_over_stops_at_its_next_save(tmp_path, monkeypatch):
    import omni_jax.train.trainer as tr

    orig = tr.MetricsWriter.write

    def write_then_lose_the_lease(self, step, scalars, **extra):
        orig(self, step, scalars, **extra)
        if step == 1:  # another run takes the workdir over between the log line and the save
            _lease_of(tmp_path, host="other-host")

    monkeypatch.setattr(tr.MetricsWriter, "write", write_then_lose_the_lease)
    c = backbone_tiny.get_config("runlocal")
    c.train.steps = 2
    c.stages.pretrain.steps = 2
    c.checkpoint.every = 1
    with pytest.raises(WorkdirBusyError, match="took over .* host other-host"):
        tr.train(c, str(tmp_path))
    assert not (tmp_path / "checkpoints" / "1").exists()  # nothing saved over the other run's files
    assert json.loads((tmp_path / LEASE_FILE).read_text())["host"] == "other-host"
