r"""Train-step throughput: omni_jax's Qwen2.5 backbone vs transformers' Qwen2 (PyTorch), same run.

    python benchmarks/backbone_step.py                       # the calibration config of MEASURED.md
    python benchmarks/backbone_step.py --hidden 256 --layers 4 --vocab 4096 --batch 4 --seq 128
    python benchmarks/backbone_step.py --unroll 1,all --remat none,dots_no_batch   # one row per pair

Same config, batch, sequence length and optimizer (AdamW) on both sides, fp32 on CPU.
Prints a table: tokens/s, ms per step, achieved GFLOP/s (6 * params * tokens + causal
attention, the same formula for both), that as a fraction of a plain 1024^3 fp32 matmul
measured in this process (jnp and torch), and the JAX / PyTorch throughput ratio, for every
`--unroll` (config.model.llm.scan_unroll) x `--remat` (remat_policy) pair.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402


def matmul_gflops(n: int = 1024, reps: int = 10) -> tuple[float, float]:
    import torch

    a = jnp.asarray(np.random.RandomState(0).randn(n, n).astype(np.float32))
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        t.append(time.perf_counter() - t0)
    ta = torch.from_numpy(np.asarray(a))
    ta @ ta
    tt = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ta @ ta
        tt.append(time.perf_counter() - t0)
    flops = 2 * n ** 3
    return flops / statistics.median(t) / 1e9, flops / statistics.median(tt) / 1e9


def make_config(a, unroll="1", remat="none") -> ml_collections.ConfigDict:
    from configs import common

    c = common.base()
    c.model = ml_collections.ConfigDict(dict(llm=common.qwen2("tiny")))
    c.model.llm.update(vocab_size=a.vocab, hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads,
                       num_kv_heads=a.kv_heads, head_dim=a.hidden // a.heads, intermediate_size=a.mlp,
                       remat_policy=remat, attention_impl=a.attention, scan_unroll=a.layers if unroll == "all" else int(unroll))
    c.data = common.text_data(seq_len=a.seq)
    c.train.batch_size = a.batch
    c.stages.s = dict(steps=1000, rules=[(".*", "all")],
                      groups=dict(all=dict(lr=1e-4, schedule="constant", weight_decay=0.0, b2=0.999)),
                      grad_clip_norm=None)
    c.stage_order = ("s",)
    return c


def make_batch(a) -> dict[str, np.ndarray]:
    """Random tokens (seed 0), one full-length sequence per row."""
    rng = np.random.RandomState(0)
    toks = rng.randint(1, a.vocab, (a.batch, a.seq + 1)).astype(np.int32)
    return {"tokens": toks[:, :-1], "targets": toks[:, 1:], "loss_mask": np.ones((a.batch, a.seq), np.float32),
            "segment_ids": np.ones((a.batch, a.seq), np.int32),
            "positions": np.broadcast_to(np.arange(a.seq, dtype=np.int32), (a.batch, a.seq)).copy()}


def build_step(c, a, batch_np, mesh):
    """(jitted train step, initial TrainState, device batch) on `mesh`; call inside `step_scope()`."""
    from omni_jax.tasks import get_task
    from omni_jax.train import step as step_lib
    from omni_jax.train.optimizer import build_optimizer, stage_from_config

    task = get_task(c)
    layout = step_lib.make_layout(task, mesh, a.batch)
    opt = build_optimizer(stage_from_config("s", c.stages.s), layout.abstract_params)
    params = step_lib.init_params(task, layout, 0)
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, step_lib.init_opt_state(opt, layout, params),
                                jax.random.PRNGKey(0))
    return step_lib.make_train_step(task, opt, layout), state, step_lib.global_batch_from_local(batch_np, layout)


@contextlib.contextmanager
def step_scope():
    """Yields the one-device mesh; the step is built and run under it and the logical-axis rules."""
    from omni_jax import sharding as shd

    mesh = shd.make_mesh(dict(data=1), jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        yield mesh


def time_steps(fn, state, batch, warmup: int, steps: int):
    """(seconds of each of `steps` steps after `warmup` untimed ones, the state after them)."""
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, m = fn(state, batch)
        jax.block_until_ready(m["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, state


def bench_jax(c, a, batch_np) -> list[float]:
    with step_scope() as mesh:
        fn, state, batch = build_step(c, a, batch_np, mesh)
        return time_steps(fn, state, batch, a.warmup, a.steps)[0]


def bench_torch(a, batch_np) -> list[float]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.mlp, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, tie_word_embeddings=False,
                      max_position_embeddings=max(a.seq, 512), attn_implementation=a.torch_attention)
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.from_numpy(batch_np["tokens"]).long()
    labels = torch.from_numpy(batch_np["targets"]).long()
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, a.vocab), labels.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--mlp", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--remat", default="none", help="comma list of config.model.llm.remat_policy values to time")
    p.add_argument("--attention", default="xla")
    p.add_argument("--unroll", default="1,all",
                   help="comma list of config.model.llm.scan_unroll values to time ('all' = the number of layers)")
    p.add_argument("--torch_attention", default="sdpa")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    a = p.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    batch = make_batch(a)
    from omni_jax.tasks import get_task

    task = get_task(make_config(a))
    flops_step = task.flops_per_token() * a.batch * a.seq
    params = task.model_cfg.num_params()
    mm_jax, mm_torch = matmul_gflops()
    rows = [(f"omni_jax (unroll {u}, remat {r})", statistics.median(bench_jax(make_config(a, u, r), a, batch)), mm_jax)
            for r in a.remat.split(",") for u in a.unroll.split(",")]
    tt = statistics.median(bench_torch(a, batch))
    rows.append(("transformers (eager)", tt, mm_torch))
    tokens = a.batch * a.seq
    print(f"\nQwen2 train step, fp32 CPU ({jax.device_count()} jax devices, torch threads {torch.get_num_threads()}): "
          f"{params / 1e6:.1f}M params, batch {a.batch} x {a.seq}, {flops_step / 1e9:.1f} GFLOP/step")
    print(f"plain 1024^3 fp32 matmul: jnp {mm_jax:.1f} GFLOP/s, torch {mm_torch:.1f} GFLOP/s\n")
    print(f"| {'framework':<34} | {'ms/step':>8} | {'tokens/s':>9} | {'GFLOP/s':>8} | {'of matmul':>9} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 11}|")
    for name, t, mm in rows:
        print(f"| {name:<34} | {t * 1e3:8.1f} | {tokens / t:9.0f} | {flops_step / t / 1e9:8.1f} | {flops_step / t / 1e9 / mm:8.0%} |")
    print()
    for name, t, _ in rows[:-1]:
        print(f"{name} / transformers throughput ratio: {tt / t:.2f}x")


if __name__ == "__main__":
    main()
