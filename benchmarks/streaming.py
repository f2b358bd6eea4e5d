r"""Streamed speech replies on this machine: time to first audio and real-time factor.

    python benchmarks/streaming.py                       # tiny 1.5 model, decoding every 5 and every 25 codes
    python benchmarks/streaming.py --size small --chunk_frames 25 --max_new_tokens 160

A randomly initialised 1.5 model of `--size` (configs/omni15, written as a release directory
and loaded with OmniRunner) answers a text prompt with greedy text; the release's chunking
makes it start speaking after 50 text tokens. `OmniRunner.respond_stream` is run once to
compile, then timed: time to first audio = from the call to the first 24 kHz chunk (prompt
encoding + prefill + the text tokens before speech + the first piece's flow matching and
HiFT); RTF = wall time of the whole reply / seconds of speech produced (< 1: faster than real
time). The speech of a random model is noise; the timing is that of the real pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, ".")

import jax  # noqa: E402


def build(size: str, d: str):
    from configs.omni15 import pipeline
    from omni_jax import sharding as shd
    from omni_jax.convert.omni import save_release
    from omni_jax.generate.omni_infer import OmniRunner
    from omni_jax.tasks.omni import OmniTask
    from tests.reference_models import random_params

    c = pipeline.get_config(size)
    task = OmniTask(c)
    params = random_params(task, 3)
    state = jax.device_get(shd.unbox(jax.jit(task.init_state)(jax.random.PRNGKey(4))))
    save_release(os.path.join(d, "release"), params, state, task.model_cfg, dtype=None)
    return OmniRunner.load(os.path.join(d, "release"))


def run_once(runner, a, chunk_frames):
    from omni_jax.generate.omni_infer import Prompt
    from omni_jax.generate.sampling import SamplingParams

    t0 = time.perf_counter()
    first_text = first_audio = None
    samples = chunks = 0
    for kind, v in runner.respond_stream(Prompt(text="what colour is the circle?"), speech=True,
                                         max_new_tokens=a.max_new_tokens, text=SamplingParams(do_sample=False),
                                         chunk_frames=chunk_frames, steps_per_call=a.steps_per_call):
        if kind == "text" and first_text is None:
            first_text = time.perf_counter() - t0
        if kind == "audio":
            if first_audio is None:
                first_audio = time.perf_counter() - t0
            samples, chunks = samples + len(v), chunks + 1
    total = time.perf_counter() - t0
    return first_text, first_audio, total, samples / 24000, chunks


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="tiny")
    p.add_argument("--chunk_frames", type=int, nargs="+", default=[5, 25])
    p.add_argument("--max_new_tokens", type=int, default=120)
    p.add_argument("--steps_per_call", type=int, default=8)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        runner = build(a.size, d)
        print(f"size={a.size} backend={jax.default_backend()} devices={len(jax.devices())} "
              f"max_new_tokens={a.max_new_tokens} steps_per_call={a.steps_per_call}")
        for cf in a.chunk_frames:
            t = time.perf_counter()
            run_once(runner, a, cf)  # compile
            compile_s = time.perf_counter() - t
            ft, fa, total, secs, chunks = run_once(runner, a, cf)
            if not secs:
                print(f"chunk_frames={cf}: no speech within {a.max_new_tokens} steps")
                continue
            print(f"chunk_frames={cf:3d}: first text {ft:.3f} s, first audio {fa:.3f} s, total {total:.2f} s for "
                  f"{secs:.2f} s of speech in {chunks} chunks -> RTF {total / secs:.3f} "
                  f"(first run incl. compile {compile_s:.1f} s)")


if __name__ == "__main__":
    main()
