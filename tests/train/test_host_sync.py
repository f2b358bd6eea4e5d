"""omni_jax/train/host_sync.py with real processes: the data-error budget is global (every
process stops at the same step with the message one process would give), and a signal to
one process makes every process save the same step (tests/train/test_multiprocess.py runs
that through launch.train)."""

import json
import sys

from omni_jax.data.errors import DataErrorBudgetExceeded
from omni_jax.data.omni_pipeline import make_omni_iterator
from omni_jax.data.sources import register_memory_source
from tests import multiprocess as mp
from tests.train import host_sync_child as child


def _lines(log):
    return [json.loads(l) for l in log.splitlines() if l.startswith('{"step"')]


def test_error_budget_is_summed_over_processes(tmp_path):
    argv = lambda i, port: [sys.executable, "-m", "tests.train.host_sync_child", str(port), "2", str(i)]
    g = mp.Group(2, argv, str(tmp_path / "logs"), local_devices=1, timeout=180)
    # the same records read by one process: the global batches, the tally a single budget keeps
    register_memory_source("mp_err", child.records())
    it = make_omni_iterator(child.budget_config())
    one = []
    for step in range(20):
        try:
            next(it)
        except DataErrorBudgetExceeded as e:
            one.append({"step": step, "stopped": str(e)})
            break
        one.append({"step": step, "tally": it.get_state()["errors"]})
    assert "stopped" in one[-1] and one[-1]["step"] >= 3, one  # the run reaches a few steps first
    assert g.wait() == [3, 3], [g.log(i) for i in range(2)]
    got = [_lines(g.log(i, tail=10**6)) for i in range(2)]
    mine = [[l.pop("mine") for l in lines] for lines in got]
    # every process: the same tallies at every step (the checkpointed state), the same stop step and message
    assert got[0] == got[1] == one, (got, one)
    # both processes met bad records, and only the sum of theirs reaches the global count
    assert min(sum(m) for m in mine) >= 1, mine
    assert f"budget: {sum(mine[0]) + sum(mine[1])} bad record(s)" in one[-1]["stopped"], (mine, one[-1])
    assert all(sum(m) <= 4 for m in mine)  # neither process alone exceeds max_count=4: a local budget never stops
