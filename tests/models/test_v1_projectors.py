"""omni_jax/models/v1_projectors.py against the torch primitives a PyTorch port would use
(nn.AdaptiveAvgPool2d, nn.Sequential(Linear, GELU, Linear), nn.Conv2d), token counts,
the average-taps initialisation, round trips and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from torch import nn as tnn

from omni_jax import sharding as shd
from omni_jax.convert import vision as cv
from omni_jax.convert.mapping import export_params, import_params
from omni_jax.models.v1_projectors import (V1Projector, V1ProjectorConfig, V1VideoProjector,
                                           adaptive_avg_pool)

CFG = V1ProjectorConfig(vision_width=24, llm_width=40)


class TorchV1Projector(tnn.Module):
    """What a PyTorch port of our v1 projectors is: these names are cv.v1_projector_rules'."""

    def __init__(self, cfg: V1ProjectorConfig):
        super().__init__()
        self.cfg = cfg
        self.mlp = tnn.Sequential(tnn.Linear(cfg.vision_width, cfg.llm_width), tnn.GELU(),
                                  tnn.Linear(cfg.llm_width, cfg.llm_width))
        self.conv = tnn.Conv2d(cfg.vision_width, cfg.vision_width, cfg.video_kernel)

    def _pool_mlp(self, grid_map, out_grid):  # (n, C, H, W)
        x = tnn.functional.adaptive_avg_pool2d(grid_map, out_grid)
        return self.mlp(x.flatten(2).transpose(1, 2))

    def image(self, feats):  # (n, 729, C)
        g = self.cfg.vision_grid
        return self._pool_mlp(feats.transpose(1, 2).reshape(len(feats), -1, g, g), self.cfg.pool_grid)

    def video(self, feats):
        g = self.cfg.vision_grid
        x = self.conv(feats.transpose(1, 2).reshape(len(feats), -1, g, g))
        return self._pool_mlp(x, self.cfg.video_pool_grid)


def _abstract():
    f = jnp.zeros((1, 729, CFG.vision_width))
    img = jax.eval_shape(V1Projector(CFG).init, jax.random.PRNGKey(0), f)["params"]
    vid = jax.eval_shape(V1VideoProjector(CFG).init, jax.random.PRNGKey(0), f)["params"]
    return shd.unbox({"v1_projector": img, "v1_video_projector": vid})


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    tm = TorchV1Projector(CFG).eval()
    sd = {("model.vision_projector." if k.startswith("mlp") else "model.video_projector.") + k: v.numpy()
          for k, v in tm.state_dict().items()}
    params = import_params(sd, cv.v1_projector_rules(CFG), _abstract())
    return tm, params, sd


def test_image_and_video_tokens_match_torch(ref):
    tm, params, _ = ref
    feats = np.random.RandomState(0).randn(2, 3, 729, CFG.vision_width).astype(np.float32)  # (images, tiles, ...)
    with torch.no_grad():
        want_img = tm.image(torch.from_numpy(feats.reshape(6, 729, -1))).numpy()
        want_vid = tm.video(torch.from_numpy(feats.reshape(6, 729, -1))).numpy()
    img = V1Projector(CFG).apply({"params": params["v1_projector"]}, feats)
    conv = V1VideoProjector(CFG).apply({"params": params["v1_video_projector"]}, feats)
    vid = V1Projector(CFG).apply({"params": params["v1_projector"]}, conv, method=V1Projector.video)
    assert img.shape == (2, 3, 182, CFG.llm_width) and vid.shape == (2, 3, 546, CFG.llm_width)
    d_img = float(np.abs(np.asarray(img).reshape(6, 182, -1) - want_img).max())
    d_vid = float(np.abs(np.asarray(vid).reshape(6, 546, -1) - want_vid).max())
    print(f"v1 projector max abs diff vs torch (fp32): image {d_img:.3e}, video {d_vid:.3e}")
    assert d_img <= 1e-5 and d_vid <= 1e-5


@pytest.mark.parametrize("hw,out", [((27, 27), (14, 13)), ((26, 26), (21, 26)), ((27, 27), (5, 27)), ((7, 9), (3, 4))])
def test_adaptive_pool_equals_torch(hw, out):
    x = np.random.RandomState(1).randn(2, *hw, 3).astype(np.float32)
    want = tnn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out).permute(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool(jnp.asarray(x), out)), want.numpy(), atol=1e-6)


def test_token_count_is_adjustable():
    cfg = V1ProjectorConfig(vision_width=8, llm_width=8, video_pool_grid=(14, 13))
    assert (cfg.image_tokens, cfg.video_tokens) == (182, 182)
    assert (V1ProjectorConfig().image_tokens, V1ProjectorConfig().video_tokens) == (182, 546)
    f = jnp.zeros((1, 729, 8))
    conv = V1VideoProjector(cfg).init_with_output(jax.random.PRNGKey(0), f)[0]
    p = V1Projector(cfg).init(jax.random.PRNGKey(0), f)
    assert V1Projector(cfg).apply(p, conv, method=V1Projector.video).shape == (1, 182, 8)


def test_video_conv_starts_as_a_2x2_average():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 729, 8))
    y, _ = V1VideoProjector(V1ProjectorConfig(vision_width=8, llm_width=8)).init_with_output(jax.random.PRNGKey(1), x)
    g = x.reshape(1, 27, 27, 8)
    avg = (g[:, :-1, :-1] + g[:, 1:, :-1] + g[:, :-1, 1:] + g[:, 1:, 1:]) / 4
    np.testing.assert_allclose(np.asarray(y).reshape(1, 26, 26, 8), np.asarray(avg), atol=1e-6)


def test_round_trip_is_bit_exact_and_loads_strictly_into_torch(ref):
    tm, params, sd = ref
    out = export_params(params, cv.v1_projector_rules(CFG))
    assert list(out) == list(sd) and all(np.array_equal(out[k], sd[k]) for k in sd)
    fresh = TorchV1Projector(CFG)
    fresh.load_state_dict({k.split(".", 2)[2]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()},
                          strict=True)


def test_config_errors():
    with pytest.raises(ValueError, match=r"pool_grid=\(28, 13\) must be \(rows, cols\) with 1 <= each <= 27"):
        V1ProjectorConfig.from_dict({"pool_grid": [28, 13]})
    with pytest.raises(ValueError, match="video_pool_grid=.*<= 26"):
        V1ProjectorConfig.from_dict({"video_pool_grid": [27, 27]})
    with pytest.raises(ValueError, match="V1Projector: 100 tokens per image, expected vision_grid"):
        V1Projector(CFG).init(jax.random.PRNGKey(0), jnp.zeros((1, 100, CFG.vision_width)))


def test_v1_tower_tree_composition_and_sharding_on_8_devices():
    from jax.sharding import NamedSharding, PartitionSpec as P

    from omni_jax.models.siglip import SiglipConfig
    from omni_jax.models.v1_projectors import V1VisionTower

    scfg = SiglipConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, image_size=42)
    pcfg = V1ProjectorConfig(vision_width=32, llm_width=16, vision_grid=3, pool_grid=(2, 1), video_pool_grid=(1, 2))
    tower = V1VisionTower(scfg, pcfg)
    tiles = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 42, 42, 3))
    frames = jax.random.normal(jax.random.PRNGKey(1), (4, 1, 42, 42, 3))
    boxed = jax.eval_shape(tower.init, jax.random.PRNGKey(2), tiles, frames)["params"]
    assert set(boxed) == {"siglip", "v1_projector", "v1_video_projector"}
    rs = np.random.RandomState(0)
    params = jax.tree.map(lambda a: (0.2 * rs.randn(*a.shape)).astype(np.float32), shd.unbox(boxed))
    img, vid = jax.jit(tower.apply)({"params": params}, tiles, frames)
    assert img.shape == (4, 2, 2, 16) and vid.shape == (4, 1, 2, 16)
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    shd.check_rules_cover(boxed)
    shd.check_divisible(boxed, mesh)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, shd.LOGICAL_AXIS_RULES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        data = NamedSharding(mesh, P(("data", "fsdp")))
        got = jax.jit(tower.apply, in_shardings=({"params": shardings}, data, data))(
            {"params": jax.device_put(params, shardings)}, tiles, frames)
    np.testing.assert_allclose(got[0], img, atol=2e-6)
    np.testing.assert_allclose(got[1], vid, atol=2e-6)
    with pytest.raises(ValueError, match="set v1_projector.vision_grid / vision_width to match"):
        jax.eval_shape(V1VisionTower(scfg, V1ProjectorConfig(vision_width=32, llm_width=16)).init,
                       jax.random.PRNGKey(0), tiles, frames)
