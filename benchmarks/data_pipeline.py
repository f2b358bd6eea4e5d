r"""Data pipeline throughput beside the train step's consumption rate.

  python -m benchmarks.data_pipeline [--rows 64] [--steps 3] [--threads 1,2] [--skip-small]

Pipeline: packed rows of the embedded default dataset (config "shapes", generated under
$OMNI_JAX_DATA_DIR or ~/.cache/omni_jax/datasets if missing) for three mixtures: pure text,
the 1.5 "image_audio_text_2" stage (audio 0.2 / image 0.4 / text 0.4) and the omni
pre-training stage (video, cross-modal TTS, ...). Reported per second: samples, packed
(non-padding) tokens and rows, single-threaded (`build_rows`) and through the grain
step iterator with N threads.

Train step: the `lm` task's jitted step (Qwen2.5-shaped backbone, configs/common.py
presets tiny and small) on packed batches of the same shape; its tokens/s is what a
trainer consumes. The last column says how many pipeline processes (at the measured
rate) keep one such step fed. Noisy shared machine: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import ml_collections
import numpy as np

from configs import backbone_tiny, common
from omni_jax.data import stage_mixtures
from omni_jax.data.omni_pipeline import OmniPipeline, make_omni_iterator


def data_config(mixture, seq_len: int, batch: int, threads: int = 1):
    c = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict(dict(batch_size=batch))
    c.data = common.omni_data(seq_len=seq_len, max_patches=512, max_vision_items=24, max_audio_chunks=6,
                              max_speech_chunks=4, mel_frames=600)
    c.data.mixture = ml_collections.ConfigDict(mixture)
    c.data.num_threads = threads
    c.data.errors.max_fraction = 0.05
    return c


MIXTURES = {
    "text": {"text": dict(dataset="omni_text/shapes", format="text", weight=1.0, split_long=True),
             "corpus": dict(dataset="text_corpus", format="text", weight=1.0, split_long=True)},
    "image_audio_text_2": stage_mixtures.mixture("image_audio_text_2"),
    "omni_pretrain": stage_mixtures.mixture("omni_pretrain"),
}


def bench_pipeline(name: str, seq_len: int, rows: int, threads: list[int], repeats: int = 3) -> list[dict]:
    """Median over `repeats` fresh row ranges (no row is built twice), after a warm-up."""
    t0 = time.perf_counter()
    pipe = OmniPipeline(data_config(MIXTURES[name], seq_len, 8))
    plan_s = time.perf_counter() - t0
    steps = max(rows // 8, 2)
    total = 8 * steps * repeats * (1 + len(threads)) + 64
    for r in range(total):
        pipe.rows[r]  # plans every epoch the measured rows need (a one-off per epoch, not per row)
    pipe.build_rows(range(8))  # warm-up: readers, TTS caches, the BLAS thread controller
    out, next_step = [], 1

    def record(how, runs):
        runs.sort(key=lambda x: x[2])
        samples, toks, dt = runs[len(runs) // 2]
        out.append(dict(mixture=name, how=how, samples=samples / dt, tokens=toks / dt, rows=8 * steps / dt,
                        plan_s=plan_s, fill=toks / (8 * steps * seq_len)))

    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        b = pipe.build_rows(range(8 * next_step, 8 * (next_step + steps)))
        dt = time.perf_counter() - t0
        runs.append((int(b["segment_ids"].max(axis=1).sum()), int((b["segment_ids"] > 0).sum()), dt))
        next_step += steps
    record("build_rows, 1 thread", runs)
    for th in threads:
        runs = []
        for _ in range(repeats):
            it = make_omni_iterator(data_config(MIXTURES[name], seq_len, 8, threads=th), start_step=next_step,
                                    pipeline=pipe)
            t0 = time.perf_counter()
            samples = toks = 0
            for _ in range(steps):
                bb = next(it)
                toks += int((bb["segment_ids"] > 0).sum())
                samples += int(bb["segment_ids"].max(axis=1).sum())  # packed samples (segments) per row
            runs.append((samples, toks, time.perf_counter() - t0))
            next_step += steps
        record(f"step iterator, {th} thread(s)", runs)
    return out


def bench_step(size: str, seq_len: int, batch: int, steps: int) -> dict:
    from omni_jax import sharding as shd
    from omni_jax.tasks import get_task
    from omni_jax.train import step as step_lib
    from omni_jax.train.optimizer import build_optimizer, stage_from_config
    from flax import linen as nn

    c = backbone_tiny.get_config()
    c.model.llm = common.qwen2(size)
    c.data.seq_len = seq_len
    c.train.batch_size = batch
    task = get_task(c)
    mesh = shd.make_mesh({"data": -1})
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        layout = step_lib.make_layout(task, mesh, batch)
        stage = stage_from_config("pretrain", c.stages.pretrain)
        opt = build_optimizer(stage, layout.abstract_params)
        params = step_lib.init_params(task, layout, 0)
        state = step_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                    opt_state=step_lib.init_opt_state(opt, layout, params),
                                    rng=jax.random.PRNGKey(0))
        fn = step_lib.make_train_step(task, opt, layout)
        rng = np.random.default_rng(0)
        V = c.model.llm.vocab_size
        local = {"tokens": rng.integers(1, V, (batch, seq_len), dtype=np.int32),
                 "targets": rng.integers(1, V, (batch, seq_len), dtype=np.int32),
                 "loss_mask": np.ones((batch, seq_len), np.float32),
                 "segment_ids": np.ones((batch, seq_len), np.int32),
                 "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1))}
        gb = step_lib.global_batch_from_local(local, layout)
        state, m = fn(state, gb)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = fn(state, gb)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / steps
    return dict(size=size, params=c.model.llm.to_dict(), step_s=dt, tokens=batch * seq_len / dt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--skip-steps", action="store_true", help="pipeline table only")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",") if t]
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"{os.cpu_count()} CPU(s); data dir {os.environ.get('OMNI_JAX_DATA_DIR', '~/.cache/omni_jax/datasets')}")
    rows = []
    for name in MIXTURES:
        rows += bench_pipeline(name, a.seq_len, a.rows, threads)
    print(f"\nPipeline (seq_len {a.seq_len}; planning once per run, footprints cached on disk)")
    print("| mixture | how | samples/s | packed tokens/s | rows/s | token fill | planning s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mixture']} | {r['how']} | {r['samples']:.1f} | {r['tokens']:.0f} | {r['rows']:.1f} | "
              f"{r['fill']:.1%} | {r['plan_s']:.1f} |")
    if a.skip_steps:
        return
    steps = [bench_step("tiny", a.seq_len, a.batch, a.steps)]
    if not a.skip_small:
        steps.append(bench_step("small", a.seq_len, a.batch, max(1, a.steps // 2)))
    print(f"\nTrain step consumption (lm task, batch {a.batch} x {a.seq_len}, fp32, all local devices)")
    print("| backbone | step s | tokens/s consumed | " + " | ".join(f"{n} pipelines needed" for n in MIXTURES) + " |")
    print("|---|---:|---:|" + "---:|" * len(MIXTURES))
    best = {n: max(r["tokens"] for r in rows if r["mixture"] == n) for n in MIXTURES}
    for s in steps:
        print(f"| {s['size']} | {s['step_s']:.3f} | {s['tokens']:.0f} | "
              + " | ".join(f"{s['tokens'] / best[n]:.2f}" for n in MIXTURES) + " |")


if __name__ == "__main__":
    main()
