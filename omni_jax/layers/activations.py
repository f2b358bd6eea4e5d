"""SwiGLU's gated activation `silu(gate) * up` with a hand-written backward pass.

    h = swiglu(gate, up)        # == jax.nn.silu(gate) * up, bit for bit, in gate's dtype

The forward is the one of transformers' Qwen2MLP (`act_fn(gate_proj(x)) * up_proj(x)`); only
the backward differs from autodiff: it keeps the two matmul outputs (gate, up) as residuals and
recomputes the sigmoid, instead of autodiff's five (gate, up and three intermediates of silu):
three fewer [tokens, mlp] tensors per layer stored, stacked over the layer scan and read back.
On XLA's CPU backend that made the calibration backbone step about 6% faster without remat and
no different with `dots_no_batch` (benchmarks/README.md, "Backbone train step on CPU"). Passing
the cotangents through `lax.optimization_barrier` changed nothing on CPU and cost the 7B
image_text_1 TPU plan 0.3 GiB of temporaries per chip (it stops XLA fusing them into the
matmuls that read them), so there is none.
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
    return d_gate.astype(gate.dtype), d_up.astype(up.dtype)


swiglu.defvjp(_fwd, _bwd)
