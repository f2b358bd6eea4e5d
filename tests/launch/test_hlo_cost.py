"""launch/hlo_cost.py: loop-aware matmul flops of a compiled program (XLA's cost_analysis counts a
while loop's body once)."""

import jax
import jax.numpy as jnp

from launch import hlo_cost


def test_a_scan_of_matmuls_counts_every_iteration():
    m, layers = 64, 8

    def loss(x, w):
        def body(h, wi):
            return jnp.tanh(h @ wi), None
        return jax.lax.scan(body, x, w)[0].sum()

    x = jnp.ones((m, m), jnp.float32)
    w = jnp.ones((layers, m, m), jnp.float32)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1)), device=jax.devices()[0]).lower(x, w).compile()
    c = hlo_cost.costs(compiled.as_text())
    one = 2 * m ** 3
    assert c["loops_unknown_trip_count"] == 0 and c["loops"] >= 2
    assert c["flops"] == 3 * layers * one, c  # forward, and the gradients to h and to w, every layer
    reported = compiled.cost_analysis()
    reported = reported[0] if isinstance(reported, (list, tuple)) else reported
    assert reported["flops"] < 2 * 3 * one  # what the loop-aware count is for: the body counted once
    assert c["bytes"] > layers * m * m * 4  # every layer's weights are read


def test_collective_bytes_count_every_trip_of_the_loop_around_them():
    """A (64, 64) fp32 psum over 8 devices in each of 5 scan steps: 5 x 16 KiB of all-reduce results
    per device (what launch/aot_plans.py records per plan as hlo_collective_bytes_per_device)."""
    import numpy as np

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ("x",))
    steps, m = 5, 64

    def per_device(w):
        def body(acc, _):
            return acc + jax.lax.psum(jnp.tanh(acc @ w), "x"), None
        return jax.lax.scan(body, w, None, length=steps)[0]

    fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=jax.P(), out_specs=jax.P(), check_vma=False))
    c = hlo_cost.costs(fn.lower(jnp.ones((m, m), jnp.float32)).compile().as_text())
    assert c["collective_bytes"] == {"all-reduce": steps * m * m * 4}, c["collective_bytes"]
