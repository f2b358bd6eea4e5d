"""SwiGLU's gated activation `silu(gate) * up` with a hand-written backward pass.

    h = swiglu(gate, up)        # == jax.nn.silu(gate) * up, bit for bit, in gate's dtype

The forward is the one of transformers' Qwen2MLP (`act_fn(gate_proj(x)) * up_proj(x)`); only
the backward differs from autodiff, in two ways that matter to XLA's CPU backend (measured in
benchmarks/README.md, "Backbone train step on CPU"):
  * it keeps the two matmul outputs (gate, up) as residuals and recomputes the sigmoid, instead
    of autodiff's five (gate, up and three intermediates of silu: three fewer [tokens, mlp]
    tensors per layer stored, stacked over the layer scan and read back);
  * the two cotangents it returns pass through `lax.optimization_barrier`, so each is computed
    once in the layout of the matmul that reads it. Without the barrier XLA CPU fused the
    sigmoid derivative a second time into the physical transpose that feeds the gate weight's
    gradient (x^T . d_gate) and ran that transposing loop with scalar `exp`: 34 ms a layer for a
    [1024, 1408] tensor at the calibration config, the largest non-matmul cost of the step.
The gradient is autodiff's formula (d silu / d g = s + g * (s * (1 - s)), s = sigmoid(g)),
equal to jax.grad of the plain expression within float rounding (tests/layers/test_activations.py).
"""

from __future__ import annotations

import jax


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up (SwiGLU's gated activation); gate and up share shape and dtype."""
    return jax.nn.silu(gate) * up


def _fwd(gate, up):
    return jax.nn.silu(gate) * up, (gate, up)


def _bwd(res, dh):
    gate, up = res
    s = jax.nn.sigmoid(gate)
    silu = gate * s
    d_gate = dh * up * (s + gate * (s * (1 - s)))
    d_up = dh * silu
    return jax.lax.optimization_barrier((d_gate.astype(gate.dtype), d_up.astype(up.dtype)))


swiglu.defvjp(_fwd, _bwd)
