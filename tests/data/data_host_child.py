"""One data process of tests/data/test_data_processes.py (a plain OS process, no jax.distributed).

    python -m tests.data.data_host_child '<json args>'

Plans the mixture as process `process_index` of `process_count` (its share of the length
index), builds its rows of the first `steps` global batches, and saves them with the
number of records it read while planning and while building (and how many the rows it
built hold)."""

import json
import sys

import numpy as np


def main(args: dict) -> None:
    from tests.data.test_data_processes import make_config
    from omni_jax.data.omni_pipeline import OmniPipeline, make_omni_iterator

    p, n = args["process_index"], args["process_count"]
    c = make_config(args["data_dir"], num_workers=args.get("num_workers", 0))
    pipe = OmniPipeline(c, process_index=p, process_count=n)
    plan_reads = {pl.comp.name: pl.reads for pl in pipe.plans}
    B = int(c.train.batch_size)
    mine = np.arange(B)[p * B // n:(p + 1) * B // n] if args.get("rows") is None else np.asarray(args["rows"])
    for s in range(args["steps"]):  # what building this process's rows reads (no prefetching here)
        pipe.build_rows(s * B + mine)
    build_reads = sum(pl.reads for pl in pipe.plans) - sum(plan_reads.values())
    entries = sum(len(pipe.rows[int(s * B + r)][1]) for s in range(args["steps"]) for r in mine)
    it = make_omni_iterator(c, pipeline=pipe, process_index=p, process_count=n, rows=args.get("rows"))
    batches = [next(it) for _ in range(args["steps"])]
    it.close()
    out = {f"{k}_{s}": v for s, b in enumerate(batches) for k, v in b.items()}
    np.savez(args["out"], **out)
    with open(args["out"] + ".json", "w") as f:
        json.dump({"plan_reads": plan_reads, "build_reads": build_reads,
                   "entries": int(entries), "records": {pl.comp.name: len(pl.source) for pl in pipe.plans}}, f)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
