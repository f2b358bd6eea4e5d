"""omni_jax/models/siglip.py: parity with transformers' SiglipVisionModel (tiny random
config, with the attention-pooling head), tiles as extra batch axes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax import sharding as shd
from omni_jax.convert import vision as cv
from omni_jax.convert.mapping import import_params
from omni_jax.models.siglip import Siglip, SiglipConfig
from tests.vision_reference import state_dict_numpy, tiny_hf_siglip

SIZE = 60  # not a multiple of the 14 px patch: the last 4 pixel rows/cols are dropped, as in Conv2d


def _abstract(cfg):
    return shd.unbox(jax.eval_shape(Siglip(cfg).init, jax.random.PRNGKey(0),
                                    jnp.zeros((1, cfg.image_size, cfg.image_size, 3)))["params"])


@pytest.fixture(scope="module")
def ref():
    hf = tiny_hf_siglip(image_size=SIZE)
    cfg = cv.siglip_config_from_hf(hf.config.to_dict())
    assert cfg.use_head
    params = import_params(state_dict_numpy(hf), cv.siglip_rules(cfg, prefix="", ours=""), _abstract(cfg),
                           ignore=cv.IGNORE)
    return hf, cfg, params


def test_hidden_states_and_pooled_output_match_transformers(ref):
    hf, cfg, params = ref
    x = np.random.RandomState(0).randn(2, 3, 3, SIZE, SIZE).astype(np.float32)  # (images, tiles, C, H, W)
    with torch.no_grad():
        o = hf(torch.from_numpy(x.reshape(6, 3, SIZE, SIZE)))
    hidden, pooled = jax.jit(Siglip(cfg).apply)({"params": params}, x.transpose(0, 1, 3, 4, 2))
    assert hidden.shape == (2, 3, cfg.num_patches, cfg.hidden_size) and pooled.shape == (2, 3, cfg.hidden_size)
    d = float(np.abs(np.asarray(hidden).reshape(6, cfg.num_patches, -1) - o.last_hidden_state.numpy()).max())
    dp = float(np.abs(np.asarray(pooled).reshape(6, -1) - o.pooler_output.numpy()).max())
    print(f"SigLIP last_hidden_state max abs diff vs transformers (fp32): {d:.3e}; pooled: {dp:.3e}")
    assert d <= 1e-5 and dp <= 1e-5


def test_without_head_checkpoint_head_is_ignored_on_request(ref):
    hf, cfg, params = ref
    nohead = SiglipConfig(**{**cfg.__dict__, "use_head": False})
    sd = state_dict_numpy(hf)
    with pytest.raises(Exception, match=r"(?s)unexpected tensor\(s\).*head\.probe"):
        import_params(sd, cv.siglip_rules(nohead, prefix="", ours=""), _abstract(nohead), ignore=cv.IGNORE)
    p = import_params(sd, cv.siglip_rules(nohead, prefix="", ours=""), _abstract(nohead),
                      ignore=cv.IGNORE + cv.SIGLIP_HEAD_IGNORE)
    x = np.random.RandomState(1).randn(1, SIZE, SIZE, 3).astype(np.float32)
    h, pooled = jax.jit(Siglip(nohead).apply)({"params": p}, x)
    h_ref, _ = jax.jit(Siglip(cfg).apply)({"params": params}, x)
    assert pooled is None and np.array_equal(np.asarray(h), np.asarray(h_ref))


def test_errors_name_the_fix(ref):
    _, cfg, params = ref
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 60, 60, 3\); resize/tile"):
        Siglip(cfg).apply({"params": params}, jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match=r"config.model.siglip: unknown key\(s\) \['width'\]"):
        SiglipConfig.from_dict({"width": 1})


def test_so400m_shapes():
    cfg = SiglipConfig()
    assert (cfg.grid, cfg.num_patches, cfg.head_dim) == (27, 729, 72)
    shapes = jax.tree.map(lambda a: a.shape, _abstract(cfg))
    assert shapes["layers"]["self_attn"]["q_proj"]["kernel"] == (27, 1152, 16, 72)
    assert shapes["embeddings"]["position_embedding"] == (729, 1152)
    n = sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))
    from transformers import SiglipVisionConfig, SiglipVisionModel
    with torch.device("meta"):  # the so400m/14-384 vision tower, no memory
        ref = SiglipVisionModel(SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                                   num_attention_heads=16, image_size=384, patch_size=14))
    want = sum(p.numel() for n_, p in ref.named_parameters() if not n_.startswith("head."))
    assert n == want == 412_987_248
