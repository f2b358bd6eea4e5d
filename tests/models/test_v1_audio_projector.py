"""omni_jax/models/v1_audio_projector.py vs the report's Conv-GMLP written with torch.nn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omni_jax.models.v1_audio_projector import V1AudioProjector, V1AudioProjectorConfig

D, LLM = 8, 24


class TorchConvGMLP(nn.Module):
    def __init__(self, d, llm, n, linear_shortcut):
        super().__init__()
        self.n = n
        self.gate_proj = nn.Conv1d(d, n * d, n, n, bias=False)
        self.up_proj = nn.Conv1d(d, n * d, n, n, bias=False)
        self.shortcut = nn.Linear(n * d, n * d) if linear_shortcut else nn.Identity()
        self.out_proj = nn.Linear(n * d, llm)

    def forward(self, x):  # (T, d), one clip
        x = x[: x.shape[0] // self.n * self.n]  # a trailing partial group is dropped
        g, u = self.gate_proj(x.T[None])[0].T, self.up_proj(x.T[None])[0].T
        return self.out_proj(F.silu(g) * u + self.shortcut(x.reshape(-1, self.n * x.shape[1])))


def _params(ref, n, linear):
    p = {"gate_proj": {"kernel": ref.gate_proj.weight.detach().numpy().transpose(2, 1, 0)},
         "up_proj": {"kernel": ref.up_proj.weight.detach().numpy().transpose(2, 1, 0)},
         "out_proj": {"kernel": ref.out_proj.weight.detach().numpy().T, "bias": ref.out_proj.bias.detach().numpy()}}
    if linear:
        p["shortcut"] = {"kernel": ref.shortcut.weight.detach().numpy().T, "bias": ref.shortcut.bias.detach().numpy()}
    return p


@pytest.mark.parametrize("rate,shortcut", [(2, "linear"), (4, "linear"), (8, "linear"), (4, "identity")])
def test_matches_reference_and_downsamples(rate, shortcut):
    torch.manual_seed(rate)
    ref = TorchConvGMLP(D, LLM, rate, shortcut == "linear").eval()
    cfg = V1AudioProjectorConfig(d_model=D, llm_hidden_size=LLM, rate=rate, shortcut=shortcut)
    model = V1AudioProjector(cfg)
    x = np.random.RandomState(0).randn(3, 21, D).astype(np.float32)
    lengths = np.array([21, 13, 5], np.int32)
    y, out_len = jax.jit(model.apply)({"params": _params(ref, rate, shortcut == "linear")}, x, lengths)
    assert y.shape == (3, 21 // rate, LLM) and out_len.tolist() == [n // rate for n in lengths]
    worst = 0.0
    for b, n in enumerate(lengths):
        if out_len[b] == 0:  # shorter than one group: no token at all
            assert not np.asarray(y[b]).any()
            continue
        with torch.no_grad():
            want = ref(torch.tensor(x[b, :n])).numpy()
        assert want.shape[0] == out_len[b]
        worst = max(worst, float(np.abs(np.asarray(y[b, : out_len[b]]) - want).max()))
        assert not np.asarray(y[b, out_len[b]:]).any()
    print(f"v1 Conv-GMLP projector (rate {rate}, {shortcut} shortcut) max abs diff vs torch: {worst:.3e}")
    assert worst <= 1e-5


def test_param_tree_and_errors():
    cfg = V1AudioProjectorConfig(d_model=D, llm_hidden_size=LLM, rate=8)
    shapes = jax.eval_shape(V1AudioProjector(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 16, D)), jnp.ones(1, jnp.int32))
    flat = {"/".join(k): v.value.shape for k, v in
            __import__("flax").traverse_util.flatten_dict(shapes["params"]).items()}
    assert flat == {"gate_proj/kernel": (8, D, 8 * D), "up_proj/kernel": (8, D, 8 * D),
                    "shortcut/kernel": (8 * D, 8 * D), "shortcut/bias": (8 * D,),
                    "out_proj/kernel": (8 * D, LLM), "out_proj/bias": (LLM,)}
    with pytest.raises(ValueError, match="downsamples by one of"):
        V1AudioProjectorConfig.from_dict({"rate": 3})
    with pytest.raises(ValueError, match=r"expects \(batch, frames, 8\) features"):
        V1AudioProjector(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 5)), jnp.ones(1, jnp.int32))
