"""One process of tests/train/test_host_sync.py's error-budget run (python -m tests.train.host_sync_child
PORT N I): a 16-record omni mixture with 4 undecodable images, each process building its rows,
the budget agreed through HostSync as in the trainer's loop. Prints one JSON line per step."""

import json
import sys

from omni_jax import distributed


def records():
    from tests.data.test_errors import good, png

    return [good(k) for k in range(40)] + [{"id": f"t{k}", "image": png(seed=k)[:150], "caption": f"broken {k}."}
                                           for k in range(4)]


def budget_config():
    from tests.data.test_errors import config

    return config("mp_err", errors=dict(max_fraction=1.0, max_count=4), batch=4)


def main(port: int, n: int, i: int) -> int:
    distributed.initialize(f"127.0.0.1:{port}", n, i, timeout_s=60)
    from omni_jax.data.errors import DataErrorBudgetExceeded
    from omni_jax.data.omni_pipeline import make_omni_iterator
    from omni_jax.data.sources import register_memory_source
    from omni_jax.train.host_sync import HostSync

    register_memory_source("mp_err", records())
    it = make_omni_iterator(budget_config(), process_index=i, process_count=n)
    it.defer_errors = True
    sync = HostSync(timeout_s=60)
    for step in range(20):
        mine = None
        try:
            next(it)
            mine = len(it._report["events"])  # this process's own bad records in the step
            sync.agree(False, it)
        except DataErrorBudgetExceeded as e:
            print(json.dumps({"step": step, "stopped": str(e), "mine": mine}), flush=True)
            return 3
        print(json.dumps({"step": step, "tally": it.get_state()["errors"], "mine": mine}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:4])))
