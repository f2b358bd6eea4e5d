"""omni_jax/layers/{conv1d,spectral}.py against torch: Conv1d (padding, stride, dilation),
ConvTranspose1d, stft / istft (centred, Hann)."""

import jax
import numpy as np
import pytest
import torch

from omni_jax.layers import spectral
from omni_jax.layers.conv1d import Conv1d, ConvTranspose1d, conv_out_length, conv_transpose_out_length


@pytest.mark.parametrize("k,stride,pad,dil", [(3, 1, (2, 0), 1), (7, 1, (3, 3), 1), (30, 15, (7, 7), 1), (3, 1, (3, 3), 3)])
def test_conv1d_matches_torch(k, stride, pad, dil):
    tc = torch.nn.Conv1d(5, 6, k, stride, padding=0, dilation=dil)
    x = np.random.RandomState(0).randn(2, 5, 61).astype(np.float32)
    ref = tc(torch.nn.functional.pad(torch.tensor(x), pad)).detach().numpy()
    params = {"params": {"kernel": tc.weight.detach().numpy().transpose(2, 1, 0), "bias": tc.bias.detach().numpy()}}
    out = np.asarray(Conv1d(6, k, stride, dil, padding=pad).apply(params, x.transpose(0, 2, 1)))
    assert out.shape[1] == conv_out_length(61, k, stride, pad, dil)
    np.testing.assert_allclose(out.transpose(0, 2, 1), ref, atol=1e-5)


@pytest.mark.parametrize("k,stride,pad", [(16, 8, 4), (11, 5, 3), (7, 3, 2), (3, 4, 0)])
def test_conv_transpose1d_matches_torch(k, stride, pad):
    tc = torch.nn.ConvTranspose1d(5, 6, k, stride, padding=pad)
    x = np.random.RandomState(1).randn(2, 5, 10).astype(np.float32)
    ref = tc(torch.tensor(x)).detach().numpy()
    params = {"params": {"kernel": tc.weight.detach().numpy().transpose(2, 0, 1), "bias": tc.bias.detach().numpy()}}
    out = np.asarray(ConvTranspose1d(6, k, stride, pad).apply(params, x.transpose(0, 2, 1)))
    assert out.shape[1] == conv_transpose_out_length(10, k, stride, pad)
    np.testing.assert_allclose(out.transpose(0, 2, 1), ref, atol=1e-5)


def test_stft_and_istft_match_torch():
    rs = np.random.RandomState(2)
    x = rs.randn(2, 480 * 3).astype(np.float32)
    w = torch.hann_window(16)
    ref = torch.stft(torch.tensor(x), 16, 4, 16, window=w, return_complex=True).numpy().transpose(0, 2, 1)
    got = np.asarray(jax.jit(lambda v: spectral.stft(v, 16, 4))(x))
    assert got.shape == (2, 361, 9) and np.abs(got - ref).max() <= 1e-5
    spec = (rs.randn(2, 361, 9) + 1j * rs.randn(2, 361, 9)).astype(np.complex64)
    ref = torch.istft(torch.tensor(spec.transpose(0, 2, 1)), 16, 4, 16, window=w).numpy()
    got = np.asarray(jax.jit(lambda s: spectral.istft(s, 16, 4))(spec))
    assert got.shape == (2, 1440) and np.abs(got - ref).max() <= 1e-5
