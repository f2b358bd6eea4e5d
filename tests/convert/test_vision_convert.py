"""omni_jax/convert/vision.py: release listing, bit-exact round trips (release and Qwen2-VL /
SigLIP names), strict loading into transformers, configs, errors."""

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from omni_jax import sharding as shd
from omni_jax.convert import vision as cv
from omni_jax.convert.mapping import ConversionError, export_params, export_shapes, import_params
from omni_jax.convert.safetensors_io import load_state_dict, save_state_dict
from omni_jax.models.navit import NaViTConfig, VisionTower
from omni_jax.models.siglip import Siglip
from tests.conftest import FIXTURES, read_tsv
from tests.vision_reference import state_dict_numpy, tiny_hf_navit, tiny_hf_siglip


def _abstract(cfg):
    z = jnp.zeros
    return shd.unbox(jax.eval_shape(VisionTower(cfg).init, jax.random.PRNGKey(0), z((1, 8, cfg.patch_dim)),
                                    z((1, 8, 2), jnp.int32), z((1, 8), jnp.int32))["params"])


@pytest.fixture(scope="module")
def tiny():
    hf = tiny_hf_navit(seed=3)
    cfg = cv.navit_config_from_hf(hf.config.to_dict())
    params = import_params(state_dict_numpy(hf), cv.navit_rules(cfg, "hf", prefix=""), _abstract(cfg))
    return hf, cfg, params


def _bit_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape
        and np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8))
        for x, y in zip(la, lb))


def test_7b_vision_names_and_shapes_equal_the_release_listing():
    """Abstract arrays only: no 7B-sized weights are materialised."""
    cfg = NaViTConfig()
    got = list(export_shapes(_abstract(cfg), cv.navit_rules(cfg, "release")).items())
    ref = [(n, s) for n, s in read_tsv("reference_state_dict.tsv")
           if n.startswith(("model.visual_model.", "model.visual_bridge_model."))]
    assert len(ref) == 1 + 32 * 12 + 6
    assert got == ref


def test_release_visual_config_gives_the_default_config():
    with open(os.path.join(FIXTURES, "reference_config.json")) as f:
        rel = json.load(f)
    for key in ("visual_config", "video_config"):
        assert cv.navit_config_from_hf(rel[key]) == NaViTConfig()


@pytest.mark.parametrize("flavour,prefix", [("release", ""), ("hf", "visual."), ("hf", "model.visual.")])
def test_round_trip_through_safetensors_is_bit_exact(tiny, tmp_path, flavour, prefix):
    _, cfg, params = tiny
    rules = cv.navit_rules(cfg, flavour, prefix=prefix)
    out = export_params(params, rules)
    first = "model.visual_model.patch_embed.proj.weight" if flavour == "release" else prefix + "patch_embed.proj.weight"
    assert next(iter(out)) == first
    save_state_dict(str(tmp_path), out, max_shard_bytes=200_000)
    assert _bit_equal(params, import_params(load_state_dict(str(tmp_path)), rules, _abstract(cfg)))


def test_release_bridge_is_the_qwen2_vl_merger(tiny):
    hf, cfg, params = tiny
    sd = state_dict_numpy(hf)
    rel = export_params(params, cv.navit_rules(cfg, "release"))
    for ours, theirs in [("model.visual_bridge_model.ln_q.weight", "merger.ln_q.weight"),
                         ("model.visual_bridge_model.mlp.0.weight", "merger.mlp.0.weight"),
                         ("model.visual_bridge_model.mlp.2.bias", "merger.mlp.2.bias"),
                         ("model.visual_model.blocks.2.attn.qkv.weight", "blocks.2.attn.qkv.weight")]:
        assert np.array_equal(rel[ours], sd[theirs])


def test_export_loads_strictly_into_transformers_and_matches(tiny):
    hf, cfg, params = tiny
    fresh = tiny_hf_navit(seed=99)
    sd = {k: torch.from_numpy(np.ascontiguousarray(v))
          for k, v in export_params(params, cv.navit_rules(cfg, "hf", prefix="")).items()}
    fresh.load_state_dict(sd, strict=True)
    x, grid = torch.randn(24, cfg.patch_dim), torch.tensor([[1, 4, 6]])
    with torch.no_grad():
        assert torch.equal(fresh(x, grid_thw=grid).pooler_output, hf(x, grid_thw=grid).pooler_output)
    assert cv.navit_config_from_hf(cv.navit_hf_config_dict(cfg)) == cfg


def test_bf16_release_export_is_exact_for_bf16_values(tiny, tmp_path):
    _, cfg, params = tiny
    bf = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    save_state_dict(str(tmp_path), export_params(bf, cv.navit_rules(cfg, "release"), dtype="bfloat16"))
    sd = load_state_dict(str(tmp_path))
    assert sd["model.visual_bridge_model.mlp.0.weight"].dtype == ml_dtypes.bfloat16
    assert _bit_equal(bf, import_params(sd, cv.navit_rules(cfg, "release"), _abstract(cfg)))


def test_bad_checkpoints_are_reported_by_name(tiny):
    _, cfg, params = tiny
    sd = export_params(params, cv.navit_rules(cfg, "release"))
    del sd["model.visual_bridge_model.ln_q.bias"]
    sd["model.visual_model.blocks.1.mlp.fc1.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ConversionError) as e:
        import_params(sd, cv.navit_rules(cfg, "release"), _abstract(cfg), source="omni.safetensors")
    msg = str(e.value)
    assert "model.visual_bridge_model.ln_q.bias (expected shape (64,))" in msg
    assert "model.visual_model.blocks.1.mlp.fc1.weight: got (3, 3), expected (256, 64)" in msg
    with pytest.raises(ValueError, match=r"unknown vision checkpoint flavour 'qwen'; use one of \('release', 'hf'\)"):
        cv.navit_rules(cfg, "qwen")


def test_siglip_round_trip_and_strict_load(tmp_path):
    hf = tiny_hf_siglip(seed=5)
    cfg = cv.siglip_config_from_hf(hf.config.to_dict())
    abstract = shd.unbox(jax.eval_shape(Siglip(cfg).init, jax.random.PRNGKey(0),
                                        jnp.zeros((1, cfg.image_size, cfg.image_size, 3)))["params"])
    rules = cv.siglip_rules(cfg, prefix="vision_model.")  # hub SiglipModel checkpoint names
    sd = {"vision_model." + k: v for k, v in state_dict_numpy(hf).items()}
    params = import_params(sd, rules, {"siglip": abstract}, ignore=cv.IGNORE)
    out = export_params(params, rules)
    assert list(out) == [k for k in sd if not k.endswith("position_ids")]
    save_state_dict(str(tmp_path), out)
    assert _bit_equal(params, import_params(load_state_dict(str(tmp_path)), rules, {"siglip": abstract}))
    fresh = tiny_hf_siglip(seed=6)
    fresh.load_state_dict({k[len("vision_model."):]: torch.from_numpy(np.ascontiguousarray(v))
                           for k, v in out.items()}, strict=True)
    assert cv.siglip_config_from_hf(cv.siglip_hf_config_dict(cfg)) == cfg
