"""A dense (einsum) layer whose kernel and bias carry logical axis names.

Matches torch.nn.Linear numerically; the kernel is stored input-major
(in..., out...), i.e. the transpose of torch's (out, in) weight.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

Initializer = Callable[..., jax.Array]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: Any) -> Any:
    """'float32' | 'bfloat16' | 'float16' (or a dtype) -> jnp dtype, with a clear error."""
    if not isinstance(name, str):
        return jnp.dtype(name)
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def _merge_token_axes() -> bool:
    """True on CPU (the current mesh's devices, else the default backend) unless the mesh splits
    the sequence over a `context` axis of size > 1."""
    from omni_jax.layers.ring_attention import context_size

    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    platform = device.platform if device is not None else jax.default_backend()
    return platform == "cpu" and context_size() == 1


class Dense(nn.Module):
    """y = x @ W + b over the last `len(in_features)` axes of x.

    Attributes:
      features: output shape (int or tuple), e.g. (heads, head_dim).
      kernel_axes: logical names of the kernel, input dims first then output dims.
      in_dims: how many trailing input axes to contract (default 1).

    On CPU the leading (batch, length, ...) axes are merged into one token axis before the
    matmul, unless the mesh splits the sequence over `context` (merging a split length axis
    would reshard). The same products (up to fp32 summation order); what changes is the kernel
    gradient x^T . dy: with one contracted token axis XLA's CPU backend reads both operands as
    they lie, while with two it first copied dy into a transposed [out, tokens] buffer, a strided
    loop; merging made the calibration backbone step about 10% faster (benchmarks/README.md,
    "Backbone train step on CPU"). TPU and GPU programs keep the axes apart: the copy is XLA
    CPU's, and on TPU the merge changed little (7B plans: image_text_1 on v5p-64 the same
    temporaries per chip, sft_1 on v5e-32 0.5 GiB fewer), so the TPU tables stay as measured.
    """

    features: int | Sequence[int]
    kernel_axes: Sequence[str | None]
    in_dims: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(0.02)
    bias_init: Initializer = nn.initializers.zeros
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        in_shape = x.shape[x.ndim - self.in_dims:]
        if len(self.kernel_axes) != len(in_shape) + len(features):
            raise ValueError(
                f"{self.name}: kernel_axes {tuple(self.kernel_axes)} must name "
                f"{len(in_shape) + len(features)} dims (in {in_shape} + out {features})"
            )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
            in_shape + features,
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        lead = x.shape[:x.ndim - self.in_dims]
        flat = len(lead) > 1 and _merge_token_axes()
        if flat:  # (batch, length, in...) -> (tokens, in...): see the class docstring
            x = x.reshape((-1,) + in_shape)
        contract = tuple(range(x.ndim - self.in_dims, x.ndim))
        y = jax.lax.dot_general(
            x, kernel, ((contract, tuple(range(self.in_dims))), ((), ())), precision=self.precision
        )
        if flat:
            y = y.reshape(lead + features)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(self.bias_init, tuple(self.kernel_axes[self.in_dims:])),
                features,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y
