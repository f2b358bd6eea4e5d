"""omni_jax/layers/{norms,rotary,dense}.py against transformers/torch reference ops."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers.models.qwen2 import modeling_qwen2 as hfq

from omni_jax.layers import Dense, LayerNorm, RMSNorm, apply_rotary, rotary_cos_sin


def test_rmsnorm_matches_qwen2():
    x = np.random.RandomState(0).randn(3, 5, 16).astype(np.float32)
    ref = hfq.Qwen2RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 1.5, 16))
        want = ref(torch.tensor(x)).numpy()
    m = RMSNorm(1e-6)
    got = m.apply({"params": {"scale": np.linspace(0.5, 1.5, 16, dtype=np.float32)}}, x)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_layernorm_matches_torch():
    x = np.random.RandomState(1).randn(4, 10).astype(np.float32) * 3 + 1
    ref = torch.nn.LayerNorm(10, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(-1, 1, 10))
        ref.bias.copy_(torch.linspace(0, 2, 10))
        want = ref(torch.tensor(x)).numpy()
    got = LayerNorm(1e-5).apply({"params": {"scale": np.linspace(-1, 1, 10, dtype=np.float32),
                                            "bias": np.linspace(0, 2, 10, dtype=np.float32)}}, x)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_rotary_matches_qwen2():
    b, t, h, d = 2, 9, 3, 16
    x = np.random.RandomState(2).randn(b, t, h, d).astype(np.float32)
    pos = np.stack([np.arange(t), np.arange(100, 100 + t)])
    cos, sin = rotary_cos_sin(jnp.asarray(pos), d, 1e6)
    got = apply_rotary(jnp.asarray(x), cos, sin)
    inv = 1.0 / (1e6 ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.tensor(pos, dtype=torch.float32)[..., None] * inv
    emb = torch.cat([freqs, freqs], -1)
    qt = torch.tensor(x).transpose(1, 2)
    want, _ = hfq.apply_rotary_pos_emb(qt, qt, emb.cos(), emb.sin())
    np.testing.assert_allclose(got, want.transpose(1, 2).numpy(), atol=2e-6)


def test_dense_matches_torch_linear_and_names_axes():
    x = np.random.RandomState(3).randn(2, 7).astype(np.float32)
    lin = torch.nn.Linear(7, 5)
    m = Dense(5, kernel_axes=("embed", "mlp"), use_bias=True)
    params = {"kernel": lin.weight.detach().numpy().T, "bias": lin.bias.detach().numpy()}
    np.testing.assert_allclose(m.apply({"params": params}, x), lin(torch.tensor(x)).detach().numpy(), atol=1e-6)
    boxed = jax.eval_shape(m.init, jax.random.PRNGKey(0), x)["params"]
    assert boxed["kernel"].names == ("embed", "mlp") and boxed["bias"].names == ("mlp",)
