"""omni_jax/models/navit.py: merged-output parity with transformers' Qwen2-VL vision
transformer for packed images of different sizes and videos, padding invariance, sharding
on the 8-device mesh, remat / blockwise attention, bf16, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from omni_jax import sharding as shd
from omni_jax.convert import vision as cv
from omni_jax.convert.mapping import import_params
from omni_jax.data import vision_preprocessing as vp
from omni_jax.models.navit import NaViTConfig, VisionTower, merged_segment_ids
from tests.vision_reference import state_dict_numpy, tiny_hf_navit

ROW = 192  # static patches per row


def _abstract(cfg, p=ROW):
    z = jnp.zeros
    return jax.eval_shape(VisionTower(cfg).init, jax.random.PRNGKey(0), z((1, p, cfg.patch_dim)),
                          z((1, p, 2), jnp.int32), z((1, p), jnp.int32))["params"]


@pytest.fixture(scope="module")
def ref():
    hf = tiny_hf_navit()
    cfg = cv.navit_config_from_hf(hf.config.to_dict())
    params = import_params(state_dict_numpy(hf), cv.navit_rules(cfg, "hf", prefix=""),
                           shd.unbox(_abstract(cfg)), ignore=cv.IGNORE)
    return hf, cfg, params


def _items():
    """Two preprocessed images of different sizes, a transformers-style video (grid_t = 2:
    two temporal patches, each its own attention segment) and a release-style video (frames
    sampled at 1 fps, each frame its own grid_t = 1 image)."""
    rs = np.random.RandomState(0)
    img_a = vp.preprocess_image((rs.rand(60, 90, 3) * 255).astype(np.uint8), min_pixels=28 * 28)
    img_b = vp.preprocess_image((rs.rand(40, 30, 3) * 255).astype(np.uint8), min_pixels=28 * 28)
    hf_video = (rs.randn(2 * 4 * 4, vp.PATCH_DIM).astype(np.float32), (2, 4, 4))
    frames = (rs.rand(3, 30, 50, 3) * 255).astype(np.uint8)
    release_video = [vp.preprocess_image(frames[i], video=True, min_pixels=28 * 28)
                     for i in vp.sample_frame_indices(3, fps=1.5, max_frames=2)]
    return [img_a, img_b, hf_video] + release_video


def _hf_merged(hf, items):
    with torch.no_grad():
        x = torch.from_numpy(np.concatenate([p for p, _ in items]))
        return hf(x, grid_thw=torch.tensor([g for _, g in items])).pooler_output.numpy()


def _tokens(grid):
    t, h, w = grid
    return t * h * w // 4


def test_merged_outputs_match_transformers_for_packed_images_and_videos(ref):
    hf, cfg, params = ref
    items = _items()
    assert items[0][1] != items[1][1] and items[2][1][0] == 2  # two sizes; a video with grid_t = 2
    want = _hf_merged(hf, items)  # one transformers call, items in list order
    want = np.split(want, np.cumsum([_tokens(g) for _, g in items])[:-1])
    # two padded rows: [image a, transformers video], [image b, release-style frames]
    rows = [[0, 2], [1] + list(range(3, len(items)))]
    batch = vp.pack_vision_batch([[items[i] for i in r] for r in rows], ROW)
    out = np.asarray(jax.jit(VisionTower(cfg).apply)(
        {"params": params}, batch["patches"], batch["positions"], batch["segment_ids"]))
    assert out.shape == (2, ROW // 4, cfg.out_hidden_size)
    d = 0.0
    for r, row in enumerate(rows):
        for k, i in enumerate(row):
            got = out[r][batch["token_item"][r] == k]
            assert got.shape == want[i].shape
            d = max(d, float(np.abs(got - want[i]).max()))
    print(f"NaViT + merger (2 images, 2 videos, 2 padded rows) max abs diff vs transformers (fp32): {d:.3e}")
    assert d <= 1e-5


def test_tokens_do_not_depend_on_row_length_or_neighbours(ref):
    _, cfg, params = ref
    items = _items()
    apply = jax.jit(VisionTower(cfg).apply)
    alone = vp.pack_vision_batch([[items[1]]], 64)
    packed = vp.pack_vision_batch([[items[0], items[1]]], ROW)
    a = np.asarray(apply({"params": params}, alone["patches"], alone["positions"], alone["segment_ids"]))[0]
    b = np.asarray(apply({"params": params}, packed["patches"], packed["positions"], packed["segment_ids"]))[0]
    np.testing.assert_allclose(a[alone["token_item"][0] == 0], b[packed["token_item"][0] == 1], atol=2e-6)
    seg = merged_segment_ids(jnp.asarray(packed["segment_ids"]))
    assert np.array_equal(np.asarray(seg)[0] > 0, packed["token_item"][0] >= 0)


def test_sharded_forward_on_8_devices_equals_single_device(ref):
    _, cfg, params = ref
    items = _items()
    batch = vp.pack_vision_batch([[items[0]], [items[1]], [items[2]], items[3:]], ROW)
    args = (batch["patches"], batch["positions"], batch["segment_ids"])
    model = VisionTower(cfg)
    want = np.asarray(jax.jit(model.apply)({"params": params}, *args))
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    boxed = _abstract(cfg)
    shd.check_rules_cover(boxed)
    shd.check_divisible(boxed, mesh)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, shd.LOGICAL_AXIS_RULES)
    assert shardings["visual"]["blocks"]["attn"]["qkv"]["kernel"].spec == P(None, ("fsdp", "context"), None, "tensor", None)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_AXIS_RULES):
        sharded = jax.device_put(params, shardings)
        data = NamedSharding(mesh, P(("data", "fsdp")))
        got = jax.jit(model.apply, in_shardings=({"params": shardings}, data, data, data))(
            {"params": sharded}, *args)
        assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


def test_remat_and_blockwise_attention_give_the_same_gradients(ref):
    _, cfg, params = ref
    items = _items()
    batch = vp.pack_vision_batch([[items[1], items[3]]], 32)
    args = (batch["patches"], batch["positions"], batch["segment_ids"])

    def grads(c):
        m = VisionTower(c)
        return jax.jit(jax.grad(lambda p: (m.apply({"params": p}, *args) ** 2).sum()))(params)

    want = grads(cfg)
    got = grads(dataclasses.replace(cfg, remat_policy="full", attention_impl="blockwise", attention_block_size=8))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_bf16_compute_stays_close(ref):
    _, cfg, params = ref
    batch = vp.pack_vision_batch([[_items()[0]]], 32)
    args = (batch["patches"], batch["positions"], batch["segment_ids"])
    f32 = jax.jit(VisionTower(cfg).apply)({"params": params}, *args)
    bf = jax.jit(VisionTower(dataclasses.replace(cfg, dtype="bfloat16")).apply)({"params": params}, *args)
    assert bf.dtype == jnp.bfloat16
    diff, peak = float(jnp.abs(bf.astype(jnp.float32) - f32).max()), float(jnp.abs(f32).max())
    print(f"navit bf16 vs fp32 max abs diff {diff:.3e} = {diff / peak:.3e} of the max |value| {peak:.3f}")
    assert diff < BF16_REL_TOL * peak


BF16_REL_TOL = 0.01  # measured 5.6e-3 of the max |value| on these inputs (was 10%)


@pytest.mark.parametrize("demoted", ["", "norms", "attention"])
def test_bf16_compute_keeps_norms_and_softmax_in_fp32(ref, monkeypatch, demoted):
    """bf16 matmuls, fp32 LayerNorm statistics (rsqrt) and attention softmax (exp, max) in the
    forward and backward jaxpr (the bridge's GELU may compute in bf16); a variant whose norms
    or softmax compute in bf16 is rejected."""
    import importlib

    from tests.precision import demote_fp32, low_precision_ops, ops_by_dtype

    _, cfg, params = ref
    batch = vp.pack_vision_batch([[_items()[0]]], 32)
    args = (batch["patches"], batch["positions"], batch["segment_ids"])
    m = VisionTower(dataclasses.replace(cfg, dtype="bfloat16"))
    fwd_bwd = jax.value_and_grad(lambda p: jnp.sum(m.apply({"params": p}, *args).astype(jnp.float32) ** 2))
    if not demoted:
        ops = ops_by_dtype(fwd_bwd, params)
        assert ops[("dot_general", "bfloat16")] >= 4 and ops[("rsqrt", "float32")] > 0 and ops[("exp", "float32")] > 0
        assert low_precision_ops(fwd_bwd, params) == []
        return
    demote_fp32(monkeypatch, importlib.import_module("omni_jax.layers." + demoted))
    bad = {name for name, _ in low_precision_ops(fwd_bwd, params)}
    assert bad >= {"norms": {"rsqrt"}, "attention": {"exp"}}[demoted], bad


def test_errors_name_the_problem(ref):
    _, cfg, params = ref
    with pytest.raises(ValueError, match=r"config.model.visual: unknown key\(s\) \['width'\]"):
        NaViTConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="head_dim=6 must be a multiple of 4"):
        NaViTConfig.from_dict({"embed_dim": 24, "num_heads": 4})
    with pytest.raises(ValueError, match="unknown hidden_act 'relu6'"):
        NaViTConfig.from_dict({"hidden_act": "relu6"})
    m = VisionTower(cfg)
    with pytest.raises(ValueError, match="1000 features per patch, expected 1176"):
        m.apply({"params": params}, jnp.zeros((1, 8, 1000)), jnp.zeros((1, 8, 2), jnp.int32), jnp.zeros((1, 8), jnp.int32))
    with pytest.raises(ValueError, match="10 patches per row is not a multiple of the merge window 4"):
        m.apply({"params": params}, jnp.zeros((1, 10, 1176)), jnp.zeros((1, 10, 2), jnp.int32), jnp.zeros((1, 10), jnp.int32))


def test_release_parameter_count():
    enc, bridge = NaViTConfig().num_params()
    assert (enc, bridge) == (sum(np.prod(s) for n, s in _release_rows() if n.startswith("model.visual_model.")),
                             sum(np.prod(s) for n, s in _release_rows() if n.startswith("model.visual_bridge_model.")))


def _release_rows():
    from tests.conftest import read_tsv
    return read_tsv("reference_state_dict.tsv")
