"""Metrics: a JSONL log (one line per logged step) and TensorBoard event files.

`metrics.jsonl` lines look like
  {"step": 120, "stage": "pretrain", "loss": 1.93, "lr/llm": 0.00289,
   "tokens_per_s": 5231.0, "padded_tokens_per_s": 6144.0, "step_time_s": 0.024, ...}
`tokens_per_s` counts real tokens (segment id > 0) over the steps since the last log line;
`padded_tokens_per_s` counts every token slot of the batch, padding included; `real_tokens`
is the real-token count of the logged step.
On resume the log is cut back to the restored step, so a crash between a log line and
the next checkpoint never leaves duplicate or orphaned steps in the file.
Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax


class MetricsWriter:
    def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._truncate(resume_step)
        self._f = open(self.path, "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # pragma: no cover
                self._tb = None

    def _truncate(self, resume_step: int | None) -> None:
        if not os.path.exists(self.path):
            return
        keep = []
        with open(self.path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if resume_step is not None and rec.get("step", 0) <= resume_step:
                    keep.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def write(self, step: int, scalars: Mapping[str, Any], **extra: Any) -> None:
        if not self.enabled:
            return
        rec: dict[str, Any] = {"step": int(step), **extra}
        for k, v in scalars.items():
            v = float(v)
            rec[k] = v if math.isfinite(v) else str(v)
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(k, v, int(step))
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            if self._tb is not None:
                self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
