"""Sharding of the speech-output modules: every logical axis is in THE table, the release
shapes divide a realistic mesh, and a sharded forward on the 8-device simulated mesh equals the
single-device one."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from omni_jax import sharding as shd
from omni_jax.convert import speech as conv
from omni_jax.models.audio_head import AudioEmbed, AudioHead, AudioHeadConfig, audio_head_loss_sum
from omni_jax.models.flow_matching import FlowMatchingDecoder
from omni_jax.models.hift import HiFTConfig, HiFTGenerator
from tests.conftest import FIXTURES

K = jax.random.PRNGKey(0)


def test_release_shapes_use_known_axes_and_divide_a_pod_mesh():
    release = json.load(open(os.path.join(FIXTURES, "reference_config.json")))
    hc, fc = conv.audio_head_config_from_release(release), conv.flow_matching_config_from_release(release)
    boxed = {
        "audio_embed": jax.eval_shape(AudioEmbed(hc).init, K, jnp.zeros((1, 8), jnp.int32))["params"],
        "audio_head": jax.eval_shape(AudioHead(hc).init, K, jnp.zeros((1, 3584)), jnp.zeros((1, 8, 3584)))["params"],
        "flow_matching": jax.eval_shape(FlowMatchingDecoder(fc).init, K, jnp.zeros((1, 4, 1280)), jnp.ones((1, 4)),
                                        jnp.zeros((1, 4, 80)), jnp.zeros((1,)))["params"],
        "vocoder": jax.eval_shape(HiFTGenerator(HiFTConfig()).init, K, jnp.zeros((1, 4, 80)), K)["params"],
    }
    shd.check_rules_cover(boxed)
    devices = np.asarray(jax.devices()[:8])
    mesh = jax.sharding.Mesh(devices.reshape(1, 4, 2, 1), shd.MESH_AXES)
    shd.check_divisible(boxed, mesh)  # fsdp 4 x tensor 2
    specs = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, shd.LOGICAL_AXIS_RULES)
    spec = lambda *names: shd.logical_to_spec(names)
    assert specs["audio_head"]["layers"]["linear1"]["kernel"].spec == spec("layers", "depth", "embed", "mlp")
    assert specs["audio_head"]["layers"]["in_proj"]["kernel"].spec == spec("layers", "embed", "qkv", "heads", "head_dim")
    assert "tensor" in str(specs["audio_head"]["layers"]["linear1"]["kernel"].spec)
    assert specs["vocoder"]["ups_0"]["kernel"].spec == P(None, None, None)  # narrow convs stay replicated


def test_sharded_audio_head_loss_equals_single_device():
    cfg = AudioHeadConfig(hidden_size=64, codebook_sizes=(40, 30, 20, 10, 10, 10, 10, 10), num_layers=2, head_dim=16)
    emb, head = AudioEmbed(cfg), AudioHead(cfg)
    boxed = {"audio_embed": jax.eval_shape(emb.init, K, jnp.zeros((1, 8), jnp.int32))["params"],
             "audio_head": jax.eval_shape(head.init, K, jnp.zeros((1, 64)), jnp.zeros((1, 8, 64)))["params"]}
    rs = np.random.RandomState(0)
    params = jax.tree.map(lambda a: (0.1 * rs.randn(*a.shape)).astype(np.float32), shd.unbox(boxed))
    hidden = rs.randn(8, 64).astype(np.float32)
    codes = np.stack([rs.randint(0, c + 1, 8) for c in cfg.codebook_sizes], -1).astype(np.int32)
    mask = np.ones((8, 8), np.float32)
    loss = lambda p, h: audio_head_loss_sum(emb, head, p, h, jnp.asarray(codes), jnp.asarray(mask))[0]
    single = float(jax.jit(loss)(params, hidden))
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2, "context": 1})
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        ps = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, shd.LOGICAL_AXIS_RULES)
        placed = jax.device_put(params, ps)
        h = jax.device_put(hidden, NamedSharding(mesh, P(("data", "fsdp"))))
        sharded = float(jax.jit(loss, in_shardings=(ps, h.sharding))(placed, h))
    assert placed["audio_head"]["layers"]["linear1"]["kernel"].sharding.spec == shd.logical_to_spec(
        ("layers", "depth", "embed", "mlp"))
    assert abs(sharded - single) <= 1e-4 * abs(single)
