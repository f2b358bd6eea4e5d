"""1-D convolutions on (batch, time, channels) activations, kernels with logical axis names.

Numerically torch.nn.Conv1d / torch.nn.ConvTranspose1d (zero padding). Kernels are
stored (kernel_size, in_channels, out_channels) ("WIO"): torch's Conv1d weight
(out, in, k) is `w.transpose(2, 1, 0)`, its ConvTranspose1d weight (in, out, k) is
`w.transpose(2, 0, 1)` (see omni_jax/convert/speech.py).

  Conv1d(features, kernel_size, stride=1, dilation=1, padding=(left, right) | "causal" | "same")
  ConvTranspose1d(features, kernel_size, stride, padding)   torch's output length
      (T - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + 1
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

Initializer = Callable[..., jax.Array]


def _pad_amounts(padding: Any, kernel_size: int, dilation: int) -> tuple[int, int]:
    span = dilation * (kernel_size - 1)
    if padding == "causal":
        return span, 0
    if padding == "same":
        if span % 2:
            raise ValueError(f"'same' padding needs an even receptive span, got kernel {kernel_size} dilation {dilation}")
        return span // 2, span // 2
    if isinstance(padding, int):
        return padding, padding
    left, right = padding
    return int(left), int(right)


class _Conv(nn.Module):
    """The kernel (kernel_size, in, features), the dilated convolution and the bias shared by
    Conv1d and ConvTranspose1d."""

    features: int
    kernel_size: int
    stride: int = 1
    _: dataclasses.KW_ONLY  # the subclasses' own fields follow stride positionally
    use_bias: bool = True
    kernel_axes: Sequence[str | None] = ("conv_window", "channels", "channels_out")
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    bias_init: Initializer = nn.initializers.zeros
    precision: Any = None

    def _apply(self, x: jax.Array, pad: tuple[int, int], *, transpose: bool) -> jax.Array:
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
            (self.kernel_size, x.shape[-1], self.features), self.param_dtype)
        if transpose:  # stride-dilated input, flipped kernel
            kernel, strides, lhs_dilation = jnp.flip(kernel, 0), (1,), (self.stride,)
        else:
            strides, lhs_dilation = (self.stride,), None
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), window_strides=strides, padding=[pad],
            lhs_dilation=lhs_dilation, rhs_dilation=(self.dilation,), dimension_numbers=("NWC", "WIO", "NWC"),
            precision=self.precision)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, (self.kernel_axes[-1],)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class Conv1d(_Conv):
    """y[b, t, o] = sum_{k, i} x[b, t * stride + k * dilation - left, i] W[k, i, o] (+ bias)."""

    dilation: int = 1
    padding: Any = (0, 0)  # (left, right) | int | "causal" | "same"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self._apply(x, _pad_amounts(self.padding, self.kernel_size, self.dilation), transpose=False)


class ConvTranspose1d(_Conv):
    """torch.nn.ConvTranspose1d (groups 1): a stride-dilated input convolved with the
    flipped kernel, cropped by `padding` on both sides (plus `output_padding` on the right)."""

    padding: int = 0
    output_padding: int = 0
    dilation: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        span = self.dilation * (self.kernel_size - 1)
        return self._apply(x, (span - self.padding, span - self.padding + self.output_padding), transpose=True)


def conv_out_length(length: int, kernel_size: int, stride: int = 1, padding: tuple[int, int] = (0, 0),
                    dilation: int = 1) -> int:
    return (length + padding[0] + padding[1] - dilation * (kernel_size - 1) - 1) // stride + 1


def conv_transpose_out_length(length: int, kernel_size: int, stride: int, padding: int = 0,
                              output_padding: int = 0, dilation: int = 1) -> int:
    return (length - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1
