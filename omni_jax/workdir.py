"""The run's workdir as an `etils.epath.Path`, atomic writes into it, and its owner lease.

Every file the trainer, the evaluation and the inference loaders read or write in a workdir
(checkpoints/, metrics.jsonl, tensorboard/, config.json, eval.json, eval/, owner.json) goes
through `workdir_path`, so `--workdir=gs://bucket/run` stays a GCS path end to end (orbax
and tensorstore speak gs:// natively) instead of becoming a local folder named `gs:`.

The owner lease (`<workdir>/owner.json`) stops a second run from writing a workdir another
run is writing. It holds host, pid, start time, the config hash and a renewal time; it is
written atomically (temp file + rename, which object stores and network filesystems
support, unlike fcntl locks) by process 0 and renewed by a heartbeat thread. A lease is
stale, and is taken over with a warning, when its process is dead on this host (pid gone,
or the pid now belongs to a process started after the lease) or when it has not been
renewed for `timeout_s` (a run on another host that died; e.g. a preempted GKE pod that
comes back with a new hostname).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

log = logging.getLogger("omni_jax")

LEASE_FILE = "owner.json"


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """The workdir as an epath.Path: cloud URIs (gs://, s3://) keep their scheme; a local path is
    made absolute (orbax wants absolute directories)."""
    if isinstance(workdir, epath.Path):
        p = workdir
    else:
        s = os.fspath(workdir)
        if s.startswith("file://"):
            s = s[len("file://"):]
        p = epath.Path(s)
    if is_local(p):
        p = epath.Path(os.path.abspath(os.fspath(p)))
    return p


def is_local(path: str | os.PathLike) -> bool:
    """False for URIs with a scheme (gs://bucket/run, s3://...), True for plain filesystem paths."""
    return "://" not in os.fspath(path)


def write_text_atomic(path: epath.Path, text: str) -> None:
    """Writes `text` to a temp file next to `path` and renames it over `path`: readers see the
    old or the new content, never a partial file."""
    path = epath.Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    tmp.replace(path)


def config_hash(config: Any) -> str:
    """A short hash of the whole config (sorted JSON), the same on every process of one run."""
    text = config.to_json_best_effort(sort_keys=True) if hasattr(config, "to_json_best_effort") else json.dumps(
        config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class WorkdirBusyError(RuntimeError):
    """Another live run holds the workdir's owner lease."""


def _process_start_time(pid: int) -> float | None:
    """Start time (unix seconds) of a local process, or None if it does not exist or is unknown."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except ImportError:  # pragma: no cover - psutil is a jax/orbax dependency in practice
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    except Exception:  # psutil.NoSuchProcess, zombie, access denied
        try:
            os.kill(pid, 0)
            return 0.0
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0


class WorkdirLease:
    """The owner lease of one workdir. `acquire()` (process 0 only) raises WorkdirBusyError
    naming the other run and the fix when a live run holds it; `check()` raises when another
    run has taken it over since; `release()` removes it if it is still ours."""

    def __init__(self, workdir: str | os.PathLike, cfg_hash: str, *, timeout_s: float = 600.0,
                 renew_every_s: float | None = None):
        self.workdir = workdir_path(workdir)
        self.path = self.workdir / LEASE_FILE
        self.timeout_s = float(timeout_s)
        self.renew_every_s = float(renew_every_s if renew_every_s is not None else max(self.timeout_s / 5, 0.05))
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": time.time(),
                       "config_hash": cfg_hash, "run_id": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: dict | None = None

    # ---- reading ----
    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):  # not written by us atomically: treat as garbage
            return {}

    def stale_reason(self, other: dict, now: float | None = None) -> str | None:
        """Why the lease `other` is stale, or None if its run may still be alive."""
        if not other:
            return "the lease file is unreadable"
        now = time.time() if now is None else now
        if other.get("host") == self.record["host"]:
            if other.get("pid") == self.record["pid"]:
                return "it was written by this process (an earlier run that did not release it)"
            started = _process_start_time(int(other.get("pid", -1)))
            if started is None:
                return f"its process {other.get('pid')} on this host is gone"
            if started > float(other.get("start_time", 0)) + 1.0:
                return f"pid {other.get('pid')} now belongs to a process started after the lease"
        age = now - float(other.get("renewed", other.get("start_time", 0)))
        if age > self.timeout_s:
            return f"it was last renewed {age:.0f} s ago (timeout {self.timeout_s:.0f} s)"
        return None

    def _busy_message(self, other: dict) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(other.get("start_time", 0))))
        same = " (the same config)" if other.get("config_hash") == self.record["config_hash"] else (
            f" (a different config: hash {other.get('config_hash')} vs this run's {self.record['config_hash']})")
        return (f"workdir {self.workdir} is being written by another run: host {other.get('host')} pid "
                f"{other.get('pid')}, started {started}{same}, lease {self.path} renewed "
                f"{time.time() - float(other.get('renewed', other.get('start_time', 0))):.0f} s ago. "
                f"Use a different --workdir, or stop that run first; if it is dead (e.g. a crashed host), "
                f"delete {self.path} or wait {self.timeout_s:.0f} s for the lease to expire "
                "(config.checkpoint.lease_timeout_s).")

    # ---- owning ----
    def acquire(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        other = self.read()
        if other is not None:
            reason = self.stale_reason(other)
            if reason is None:
                raise WorkdirBusyError(self._busy_message(other))
            log.warning("taking over the stale owner lease of %s (host %s pid %s): %s",
                        self.workdir, other.get("host"), other.get("pid"), reason)
        self._write()
        # two runs starting together: the last rename wins, the other sees it here (or at its next check)
        mine = self.read()
        if not mine or mine.get("run_id") != self.record["run_id"]:
            raise WorkdirBusyError(self._busy_message(mine or {}))
        self._thread = threading.Thread(target=self._heartbeat, name="workdir-lease", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        write_text_atomic(self.path, json.dumps(dict(self.record, renewed=time.time()), indent=1))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                cur = self.read()
                if cur is not None and cur.get("run_id") != self.record["run_id"]:
                    self._lost = cur or {}
                    return
                self._write()
            except Exception as e:  # a transient storage error: try again at the next beat
                log.warning("could not renew the owner lease %s: %s", self.path, e)

    def check(self) -> None:
        """Raises WorkdirBusyError if another run has taken the lease over since `acquire`."""
        cur = self._lost if self._lost is not None else self.read()
        if cur is None or cur.get("run_id") != self.record["run_id"]:
            cur = cur or {}
            raise WorkdirBusyError(
                f"another run took over workdir {self.workdir} while this one was writing it (lease {self.path} "
                f"now names host {cur.get('host')} pid {cur.get('pid')}); this run stops so the two do not "
                "overwrite each other's checkpoints. Give each run its own --workdir.")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        cur = self.read()
        if cur and cur.get("run_id") == self.record["run_id"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
