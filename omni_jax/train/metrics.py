"""Metrics: a JSONL log (one line per logged step) and TensorBoard event files.

`metrics.jsonl` lines look like
  {"step": 120, "stage": "pretrain", "loss": 1.93, "lr/llm": 0.00289,
   "tokens_per_s": 5231.0, "padded_tokens_per_s": 6144.0, "step_time_s": 0.024, ...}
`tokens_per_s` counts real tokens (segment id > 0) over the steps since the last log line;
`padded_tokens_per_s` counts every token slot of the batch, padding included; `real_tokens`
is the real-token count of the logged step.
On resume the log is cut back to the restored step, so a crash between a log line and
the next checkpoint never leaves duplicate or orphaned steps in the file.
Only process 0 writes. The workdir is an `etils.epath` path (omni_jax/workdir.py): on a
local disk lines are appended and flushed; on an object store (gs://, s3://), which cannot
append, the whole file is rewritten atomically at most every `flush_every_s` and at close, and
TensorBoard event files are uploaded whole through epath on each TensorBoard flush.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from typing import Any, Mapping

import jax
from etils import epath

from omni_jax.workdir import is_local, workdir_path, write_text_atomic


class _EpathRecordWriter:
    """A tensorboardX record writer for object-store paths: buffers the event file and writes it
    whole through epath on flush (object stores cannot append)."""

    def __init__(self, path: str):
        self.path = epath.Path(path)
        self.buffer = io.BytesIO()

    def write(self, val: bytes) -> None:
        self.buffer.write(val)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathRecordWriterFactory:
    def open(self, path: str) -> _EpathRecordWriter:
        return _EpathRecordWriter(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def _tensorboard_writer(logdir: epath.Path, filename_suffix: str = ""):
    from tensorboardX import SummaryWriter

    if not is_local(logdir):
        from tensorboardX import record_writer

        record_writer.register_writer_factory(os.fspath(logdir).split(":")[0], _EpathRecordWriterFactory())
    return SummaryWriter(os.fspath(logdir), filename_suffix=filename_suffix)


class MetricsWriter:
    def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None, tensorboard: bool = True,
                 flush_every_s: float = 30.0):
        self.enabled = jax.process_index() == 0
        workdir = workdir_path(workdir)
        self.path = workdir / "metrics.jsonl"
        self._local = is_local(workdir)
        self._tb = None
        self._lines: list[str] = []
        self._flush_every_s, self._flushed_at = flush_every_s, time.monotonic()
        if not self.enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        self._f = self.path.open("a") if self._local else None
        if tensorboard:
            try:
                self._tb = _tensorboard_writer(workdir / "tensorboard")
            except ImportError:  # pragma: no cover
                self._tb = None

    def _truncate(self, resume_step: int | None) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if resume_step is not None and rec.get("step", 0) <= resume_step:
                keep.append(line + "\n")
        write_text_atomic(self.path, "".join(keep))
        self._lines = keep

    def write(self, step: int, scalars: Mapping[str, Any], **extra: Any) -> None:
        if not self.enabled:
            return
        rec: dict[str, Any] = {"step": int(step), **extra}
        for k, v in scalars.items():
            v = float(v)
            rec[k] = v if math.isfinite(v) else str(v)
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(k, v, int(step))
        line = json.dumps(rec) + "\n"
        if self._local:
            self._f.write(line)
            self._f.flush()
        else:
            self._lines.append(line)
            if time.monotonic() - self._flushed_at >= self._flush_every_s:
                self._flush_remote()

    def flush(self) -> None:
        """Everything written so far is in metrics.jsonl (and the TensorBoard event file)."""
        if not self.enabled:
            return
        if self._local:
            self._f.flush()
        else:
            self._flush_remote()
        if self._tb is not None:
            self._tb.flush()

    def _flush_remote(self) -> None:
        write_text_atomic(self.path, "".join(self._lines))
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            if self._local:
                self._f.close()
            else:
                self._flush_remote()
            if self._tb is not None:
                self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    text = (workdir_path(workdir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
