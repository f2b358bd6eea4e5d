r"""Page faults of the XLA attention on CPU: time, system time and minor faults per call.

    python benchmarks/attention_page_faults.py                 # glibc malloc's defaults
    python benchmarks/attention_page_faults.py --malloc=tuned  # one arena, no mmap, trim above 1 GiB

The main job's frozen audio encoder runs `omni_jax.layers.attention` with impl "xla" on 16 clips x
4 heads x 300 frames: a 23 MB score matrix per call, a fresh buffer that glibc hands back to the
kernel when XLA frees it, so every call faults its pages in again (benchmarks/README.md, "The
asr_block step: page faults and the audio encoder's attention"). Prints, per shape and kernel,
the median ms per call (forward; forward + gradient), the process's system ms and minor page
faults per call (getrusage), and the largest difference from the XLA kernel on valid rows.
`--malloc=tuned` applies mallopt(3) settings before jax starts its threads; they remove the faults
here but did not speed up the whole train step (the README's table), so nothing in omni_jax sets them.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # <malloc.h>


def tune_malloc() -> None:
    libc = ctypes.CDLL("libc.so.6")
    ok = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0), libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)]
    if not all(ok):
        raise SystemExit(f"mallopt refused a setting: {ok}")


def measure(fn, args, calls: int):
    """(median ms, system ms per call, minor faults per call) over `calls` calls after 3 warm-ups."""
    import jax

    for _ in range(3):
        jax.block_until_ready(fn(*args))
    times, u0 = [], resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    return (statistics.median(times) * 1e3, (u1.ru_stime - u0.ru_stime) / calls * 1e3,
            (u1.ru_minflt - u0.ru_minflt) / calls)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--malloc", choices=("default", "tuned"), default="default")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--block", type=int, default=150, help="the blockwise kernel's block size")
    a = p.parse_args()
    if a.malloc == "tuned":
        tune_malloc()  # before jax exists: arenas are assigned on a thread's first malloc

    import jax
    import jax.numpy as jnp
    import numpy as np

    from omni_jax.layers.attention import dot_product_attention

    print(f"malloc: {a.malloc}; {a.calls} calls per row\n")
    print("| clips x frames (4 heads, dim 16) | kernel | fwd ms | fwd sys ms | fwd faults | fwd+grad ms "
          "| fwd+grad sys ms | fwd+grad faults | max diff vs xla |\n|---|---|---|---|---|---|---|---|---|")
    for b, t in ((16, 300), (8, 256)):
        r = np.random.RandomState(0)
        q, k, v = (jnp.asarray(r.randn(b, t, 4, 16), jnp.float32) for _ in range(3))
        lengths = r.randint(t // 3, t + 1, size=b)
        seg = jnp.asarray((np.arange(t)[None] < lengths[:, None]).astype(np.int32))
        valid = np.asarray(seg)[:, :, None, None] > 0
        ref = None
        for impl in ("xla", "blockwise"):
            def attend(q, k, v, s, impl=impl):
                return dot_product_attention(q, k, v, q_segment_ids=s, kv_segment_ids=s, impl=impl,
                                             block_size=a.block)

            fwd = jax.jit(attend)
            grad = jax.jit(jax.grad(lambda q, k, v, s: (attend(q, k, v, s) ** 2).sum(), argnums=(0, 1, 2)))
            out = np.asarray(fwd(q, k, v, seg))
            ref = out if ref is None else ref
            diff = float(np.abs(np.where(valid, out - ref, 0)).max())
            f, g = measure(fwd, (q, k, v, seg), a.calls), measure(grad, (q, k, v, seg), a.calls)
            name = impl if impl == "xla" else f"blockwise {a.block}"
            print(f"| {b} x {t} | {name} | {f[0]:.1f} | {f[1]:.1f} | {f[2]:.0f} | {g[0]:.1f} | {g[1]:.1f} "
                  f"| {g[2]:.0f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
