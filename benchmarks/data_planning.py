r"""Data planning and per-host reading at scale: the length index, epoch packing, read volume, workers.

  python -m benchmarks.data_planning [--records 10000000] [--read-records 40000] [--steps 6]

1. Planning a 10-million-record component on one host, from its cached length index (the
   state of every run after the first; the index itself is measured once, split over the
   processes, see 2): load the index, derive epoch 0's permutation and greedy packing
   (omni_jax/data/mixture.py ComponentPlan, the production code), then look up a row of
   epoch 1 (planned on demand; a plan keeps the last 2 epochs' rows and one row count per
   epoch). Reported: wall seconds (and CPU seconds: this machine is shared) and peak
   resident memory over the process's baseline. Synthetic footprints: token lengths log-normal
   (median ~150, capped at the row), 30% of records with one image (64-512 patches).
2. Per-host read volume with 1, 2, 4 processes (threads standing for processes here; the
   real-process test is tests/data/test_data_processes.py): records each process reads to
   build its share of the length index, and to build its rows of `--steps` global batches.
3. Samples/s per host through the step iterator with 0, 1, 2 grain worker processes
   (config.data.num_workers) on the embedded dataset's image/audio/text mixture (decoding
   images and audio features dominates), measured after a warm-up step (worker start-up
   excluded). On this 2-core shared machine the worker figures are a floor.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time

import ml_collections
import numpy as np

from configs import common
from omni_jax.data import formats as formats_lib
from omni_jax.data.errors import ErrorBudget
from omni_jax.data.mixture import ComponentPlan, _save_index, parse_mixture
from omni_jax.data.omni_batch import OmniShapes
from omni_jax.data.tokenizer import make_tokenizer

SEQ = 2048


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SyntheticText:
    """`n` text records made on demand (record i is a function of i); counts nothing itself."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
        return {"id": f"syn-{i}", "text": " ".join(rng.choice(words, int(rng.integers(20, 200))))}


def component_plan(source, cache_dir, key, process_index=0, process_count=1, open_rows=8):
    comp = parse_mixture({"syn": dict(dataset="synthetic", format="text", weight=1.0, split_long=True)})[0]
    d = common.omni_data(seq_len=SEQ, max_patches=1024, max_vision_items=8, max_audio_chunks=0,
                         max_speech_chunks=0, mel_frames=600)
    shapes = OmniShapes.from_config(d)
    tok = make_tokenizer("byte", 384, None)
    ctx = formats_lib.FormatContext(tokenizer=tok, media=None, chunk_samples=shapes.chunk_samples, system="",
                                    prompts=None, fields={}, tts=None)
    return ComponentPlan(0, comp, source, ctx, shapes, 0, open_rows, ErrorBudget(max_fraction=1.0), cache_dir=cache_dir,
                         cache_key=key, process_index=process_index, process_count=process_count)


def write_synthetic_index(path: str, n: int) -> None:
    rng = np.random.default_rng(0)
    fp = np.zeros((n, 6), np.int32)
    fp[:, 0] = np.minimum(rng.lognormal(5.0, 1.0, n), SEQ).astype(np.int32) + 1
    img = rng.random(n) < 0.3
    fp[:, 1] = img * rng.integers(64, 513, n)
    fp[:, 2] = img
    _save_index(path, fp, [])


def bench_planning(n: int, tmp: str) -> dict:
    import multiprocessing

    cache = os.path.join(tmp, "plans")
    # the synthetic index is written by another process, so this one's peak memory is planning's alone
    p = multiprocessing.get_context("fork").Process(target=write_synthetic_index,
                                                    args=(os.path.join(cache, "big.npz"), n))
    p.start()
    p.join()
    index_mb = os.path.getsize(os.path.join(cache, "big.npz")) / 2 ** 20
    base_rss = rss_mb()
    t0 = time.perf_counter()
    plan = component_plan(SyntheticText(n), cache, "big")
    t_load = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    rows0 = plan.rows_per_epoch()
    t_epoch, cpu_epoch = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    plan.row(rows0 + 5)  # epoch 1, planned on demand
    t_epoch1 = time.perf_counter() - t0
    return dict(records=n, index_mb=index_mb, load_s=t_load, epoch0_s=t_epoch, epoch0_cpu_s=cpu_epoch, epoch1_s=t_epoch1, rows=rows0,
                peak_over_base_mb=peak_mb() - base_rss, rss_after_mb=rss_mb() - base_rss,
                kept_epochs=len(plan._plans), reads=plan.reads)


def bench_reads(n: int, steps: int, batch: int, tmp: str) -> list[dict]:
    out = []
    for N in (1, 2, 4):
        cache = os.path.join(tmp, f"reads{N}")
        plans: list = [None] * N
        errs = []

        def host(p):
            try:
                plans[p] = component_plan(SyntheticText(n), cache, "idx", p, N)
            except Exception as e:  # pragma: no cover - reported below
                errs.append(e)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=host, args=(p,)) for p in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errs:
            raise errs[0]
        dt = time.perf_counter() - t0
        for p, plan in enumerate(plans):
            planned = plan.reads
            lo, hi = batch * p // N, batch * (p + 1) // N
            for s in range(steps):  # the records of this host's rows of `steps` global batches
                for r in range(s * batch + lo, s * batch + hi):
                    for rec, _ in plan.row(r):
                        plan.format(int(rec))
            out.append(dict(processes=N, process=p, plan_reads=planned, build_reads=plan.reads - planned,
                            records=n, index_s=dt))
    return out


def bench_workers(steps: int, tmp: str) -> list[dict]:
    from omni_jax.data import stage_mixtures
    from omni_jax.data.builders import prepare
    from omni_jax.data.omni_pipeline import OmniPipeline, make_omni_iterator

    data = os.path.join(tmp, "data")
    mix = stage_mixtures.mixture("image_audio_text_2")
    mix = {k: dict(v, dataset=v["dataset"].split("/")[0] + "/shapes_tiny") if "/" in v["dataset"] else dict(v)
           for k, v in mix.items()}
    for v in mix.values():
        if "/" in v["dataset"]:
            prepare(v["dataset"], data)

    def config(w):
        c = ml_collections.ConfigDict()
        c.train = ml_collections.ConfigDict(dict(batch_size=8))
        c.data = common.omni_data(seq_len=512, max_patches=512, max_vision_items=24, max_audio_chunks=6,
                                  max_speech_chunks=4, mel_frames=600)
        c.data.mixture = ml_collections.ConfigDict(mix)
        c.data.data_dir = data
        c.data.num_workers = w
        c.data.errors.max_fraction = 0.05
        return c

    pipe = OmniPipeline(config(0))
    out = []
    for w in (0, 1, 2):
        it = make_omni_iterator(config(w), pipeline=pipe, start_step=1)
        next(it)  # warm-up: worker start-up, readers
        t0 = time.perf_counter()
        samples = 0
        for _ in range(steps):
            b = next(it)
            samples += int(b["segment_ids"].max(axis=1).sum())
        dt = time.perf_counter() - t0
        it.close()
        out.append(dict(workers=w, samples_s=samples / dt, steps_s=steps / dt))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--read-records", type=int, default=40_000)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: plan,reads,workers")
    a = ap.parse_args()
    skip = set(a.skip.split(","))
    print(f"{os.cpu_count()} CPU(s); row length {SEQ} tokens, 8 open rows")
    with tempfile.TemporaryDirectory() as tmp:
        if "plan" not in skip:
            r = bench_planning(a.records, tmp)
            print(f"\nPlanning {r['records']:,} records from the cached length index ({r['index_mb']:.0f} MB on disk)")
            print("| load index s | pack epoch 0 s (CPU s) | epoch 1 on demand s | rows/epoch | peak memory over baseline MB "
                  "| resident after MB | epoch plans kept | records read |")
            print("|---:|---:|---:|---:|---:|---:|---:|---:|")
            print(f"| {r['load_s']:.1f} | {r['epoch0_s']:.1f} ({r['epoch0_cpu_s']:.1f}) | {r['epoch1_s']:.1f} | {r['rows']:,} | "
                  f"{r['peak_over_base_mb']:.0f} | {r['rss_after_mb']:.0f} | {r['kept_epochs']} | {r['reads']} |")
        if "reads" not in skip:
            rows = bench_reads(a.read_records, a.steps, a.batch, tmp)
            print(f"\nRecords read per host ({a.read_records:,} records; length index built from scratch; then "
                  f"{a.steps} global batches of {a.batch} rows)")
            print("| processes | process | length index reads | share | batch-building reads | share of 1-process |")
            print("|---:|---:|---:|---:|---:|---:|")
            one = next(r["build_reads"] for r in rows if r["processes"] == 1)
            for r in rows:
                print(f"| {r['processes']} | {r['process']} | {r['plan_reads']:,} | {r['plan_reads'] / r['records']:.3f} "
                      f"| {r['build_reads']:,} | {r['build_reads'] / one:.3f} |")
        if "workers" not in skip:
            rows = bench_workers(a.steps, tmp)
            print("\nBatch building per host, image/audio/text mixture (image_audio_text_2 on shapes_tiny), "
                  "8 rows x 512 tokens")
            print("| grain worker processes | samples/s | steps/s |")
            print("|---:|---:|---:|")
            for r in rows:
                print(f"| {r['workers']} | {r['samples_s']:.1f} | {r['steps_s']:.2f} |")


if __name__ == "__main__":
    main()
