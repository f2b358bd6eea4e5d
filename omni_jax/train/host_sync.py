"""What every process agrees on at each step boundary: stop (a signal reached any process) and
the data-error tally of the step's batch (the error budget counts every process's records).

    sync = HostSync()
    batch = next(data)
    if sync.agree(stop_requested, data): ...save the same step on every process and stop...

A SIGTERM / SIGINT usually reaches one host of a pod (or reaches them at different steps);
a collective save started by that host alone would hang the others. Here every process
publishes its flag and its batch's error report to the coordinator's key-value store and
reads everyone's (omni_jax.distributed.kv_allgather: host only, ~1 ms a round on
127.0.0.1, never waits for the device queue), so all processes take the same decision at the
same step. The role of orbax's / JAX's preemption sync point (reached_preemption_sync_point),
extended to SIGINT and to the error budget. One process: no communication, same decisions.
"""

from __future__ import annotations

import jax

from omni_jax import distributed


class HostSync:
    def __init__(self, timeout_s: float = 3600.0):
        self.timeout_s = float(timeout_s)
        self._round = 0

    def agree(self, stop_requested: bool, data) -> bool:
        """True when some process asked to stop (then no error is counted for the discarded batch);
        else adds every process's error report of the batch to the budget (raising the same
        DataErrorBudgetExceeded on every process) and returns False."""
        report = data.take_report() if getattr(data, "defer_errors", False) else None
        local = {"stop": bool(stop_requested), "errors": report}
        if jax.process_count() == 1:
            everyone = [local]
        else:
            tag = f"step/{self._round}"
            everyone = distributed.kv_allgather(tag, local, timeout_s=self.timeout_s)
            if self._round:  # everyone has read the previous round by now
                distributed.kv_delete(f"step/{self._round - 1}")
            self._round += 1
        if any(e["stop"] for e in everyone):
            return True
        if report is not None:
            data.apply_reports([e["errors"] for e in everyone])
        return False
