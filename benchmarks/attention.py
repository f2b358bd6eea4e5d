r"""Blockwise attention on CPU/XLA: what skipping fully masked block pairs saves (same run).

    python benchmarks/attention.py                     # 4k and 16k tokens, causal, packed segments
    python benchmarks/attention.py --seqs 4096 --heads 8 --kv_heads 2 --head_dim 64 --block 512

Forward + backward (jax.grad of a weighted sum) of `dot_product_attention(impl="blockwise")`
with causal masking over rows packed with several samples, once with block skipping (the
default) and once computing every block pair (`block_skip=False`, the previous algorithm's
work), and at 4k the materialising "xla" reference. Prints ms per call (median of --reps),
the speed-up, the fraction of block pairs the masks leave, and the max abs difference of
outputs and gradients between the two blockwise runs (they must agree).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.layers.attention import dot_product_attention


def _segments(t: int, samples: int) -> np.ndarray:
    """One row packed with `samples` samples of random lengths (the last padded)."""
    r = np.random.RandomState(0)
    cuts = np.sort(r.choice(np.arange(1, t), samples - 1, replace=False))
    seg = np.zeros(t, np.int32)
    for i, (a, b) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, t])):
        seg[a:b] = i + 1
    return seg[None]


def _time(fn, *args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def _live_fraction(seg: np.ndarray, block: int) -> float:
    t = seg.shape[1]
    n = -(-t // block)
    live = 0
    for i in range(n):
        qs = seg[0, i * block:(i + 1) * block]
        for j in range(i + 1):  # causal: key blocks at or before the query block
            ks = seg[0, j * block:(j + 1) * block]
            live += qs.min() <= ks.max() and ks.min() <= qs.max()
    return live / (n * n)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--samples", type=int, default=4, help="samples packed per row")
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; heads {a.heads}/{a.kv_heads} x {a.head_dim}, "
          f"block {a.block}, {a.samples} samples per row, causal; fwd+bwd, median of {a.reps}")
    print("| tokens | live block pairs | every block (ms) | skipping (ms) | speed-up | xla (ms) | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for t in a.seqs:
        r = np.random.RandomState(1)
        f = lambda *s: jnp.asarray(r.randn(*s).astype(np.float32))
        q, k, v, w = f(1, t, a.heads, a.head_dim), f(1, t, a.kv_heads, a.head_dim), \
            f(1, t, a.kv_heads, a.head_dim), f(1, t, a.heads, a.head_dim)
        seg = jnp.asarray(_segments(t, a.samples))

        def grads(impl, skip=True):
            def loss(q, k, v, w, seg):
                o = dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True, impl=impl,
                                          block_size=a.block, block_skip=skip)
                return (o * w).sum(), o
            return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))  # inputs are arguments, not constants

        args = (q, k, v, w, seg)
        full, skip = grads("blockwise", False), grads("blockwise", True)
        d = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(full(*args)),
                                                              jax.tree.leaves(skip(*args))))
        t_full = _time(full, *args, reps=a.reps)
        t_skip = _time(skip, *args, reps=a.reps)
        t_xla = f"{_time(grads('xla'), *args, reps=a.reps):.0f}" if t <= 4096 else "-"
        print(f"| {t} | {_live_fraction(np.asarray(seg), a.block):.2f} | {t_full:.0f} | {t_skip:.0f} | "
              f"{t_full / t_skip:.2f}x | {t_xla} | {d:.1e} |")


if __name__ == "__main__":
    main()
