"""omni_jax/convert/{qwen2,mapping,safetensors_io}.py: import/export, round trips, errors."""

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from omni_jax import sharding as shd
from omni_jax.convert import qwen2 as conv
from omni_jax.convert.mapping import ConversionError, export_params, export_shapes, import_params
from omni_jax.convert.safetensors_io import load_state_dict, save_state_dict, tensor_shapes
from omni_jax.models.qwen2 import Qwen2Config, Qwen2LM
from tests.conftest import read_tsv
from tests.reference_models import state_dict_numpy, tiny_hf_qwen2


def _abstract(cfg):
    z = jnp.zeros((1, 4), jnp.int32)
    return shd.unbox(jax.eval_shape(Qwen2LM(cfg).init, jax.random.PRNGKey(0), z, z, z)["params"])


@pytest.fixture(scope="module")
def tiny():
    hf = tiny_hf_qwen2(seed=1)
    cfg = conv.config_from_hf(hf.config.to_dict())
    params = import_params(state_dict_numpy(hf), conv.rules(cfg, "hf"), _abstract(cfg), ignore=conv.IGNORE)
    return hf, cfg, params


def _bit_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8))
        for x, y in zip(la, lb))


@pytest.mark.parametrize("flavour", ["hf", "release"])
def test_jax_torch_jax_round_trip_is_bit_exact(tiny, tmp_path, flavour):
    _, cfg, params = tiny
    rules = conv.rules(cfg, flavour)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in export_params(params, rules).items()}
    save_state_dict(str(tmp_path), {k: t.numpy() for k, t in tensors.items()}, max_shard_bytes=40_000)
    assert os.path.exists(tmp_path / "model.safetensors.index.json")  # sharded + index
    back = import_params(load_state_dict(str(tmp_path)), rules, _abstract(cfg))
    assert _bit_equal(params, back)


def test_exported_hf_weights_load_strictly_into_transformers_and_match(tiny):
    hf, cfg, params = tiny
    fresh = tiny_hf_qwen2(seed=99)  # different random weights
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in export_params(params, conv.rules(cfg, "hf")).items()}
    fresh.load_state_dict(sd, strict=True)
    ids = torch.randint(1, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, hf(ids).logits)


def test_release_layout_is_q_then_k_then_v(tiny):
    hf, cfg, params = tiny
    sd = state_dict_numpy(hf)
    rel = export_params(params, conv.rules(cfg, "release"))
    w = rel["model.layers.1.self_attn.W_pack.weight"]
    want = np.concatenate([sd[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv"], 0)
    assert np.array_equal(w, want)
    b = rel["model.layers.1.self_attn.W_pack.bias"]
    assert np.array_equal(b, np.concatenate([sd[f"model.layers.1.self_attn.{n}_proj.bias"] for n in "qkv"]))


def test_bf16_export_and_import_is_exact_for_bf16_values(tiny, tmp_path):
    _, cfg, params = tiny
    bf = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    save_state_dict(str(tmp_path), export_params(bf, conv.rules(cfg, "release"), dtype="bfloat16"))
    sd = load_state_dict(str(tmp_path))
    assert sd["lm_head.weight"].dtype == ml_dtypes.bfloat16
    assert _bit_equal(bf, import_params(sd, conv.rules(cfg, "release"), _abstract(cfg)))


def test_7b_backbone_names_and_shapes_equal_the_release_listing():
    """No 7B weights are materialised: shapes come from abstract arrays."""
    got = list(export_shapes(_abstract(Qwen2Config()), conv.rules(Qwen2Config(), "release")).items())
    ref = [(n, s) for n, s in read_tsv("reference_state_dict.tsv")
           if n.startswith(("model.embed_tokens", "model.layers.", "model.norm")) or n == "lm_head.weight"]
    assert len(got) == len(ref) == 3 + 28 * 8
    # the release registers lm_head after every other module; within the backbone the order matches
    assert got[:-1] == ref[:-1] and got[-1] == ref[-1] == ("lm_head.weight", (152064, 3584))


def test_wrong_shape_missing_and_unexpected_are_all_named(tiny):
    _, cfg, params = tiny
    sd = export_params(params, conv.rules(cfg, "release"))
    sd["model.layers.2.mlp.up_proj.weight"] = np.zeros((5, 5), np.float32)
    del sd["model.norm.weight"]
    sd["model.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError) as e:
        import_params(sd, conv.rules(cfg, "release"), _abstract(cfg), source="my.safetensors")
    msg = str(e.value)
    assert "model.layers.2.mlp.up_proj.weight: got (5, 5), expected (96, 64)" in msg
    assert "model.norm.weight (expected shape (64,))" in msg
    assert "model.extra.weight (3,)" in msg and "my.safetensors" in msg


def test_a_config_mismatch_is_reported_per_tensor(tiny):
    _, cfg, params = tiny
    sd = export_params(params, conv.rules(cfg, "release"))
    other = Qwen2Config(**{**cfg.__dict__, "intermediate_size": 128})
    with pytest.raises(ConversionError, match=r"mlp.gate_proj.weight: got \(96, 64\), expected \(128, 64\)"):
        import_params(sd, conv.rules(other, "release"), _abstract(other))


def test_pickle_checkpoints_are_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="never unpickles"):
        load_state_dict(str(tmp_path / "pytorch_model.bin"))
    with pytest.raises(FileNotFoundError, match="pickle files"):
        load_state_dict(str(tmp_path))


def test_tensor_shapes_reads_headers_only(tiny, tmp_path):
    _, cfg, params = tiny
    save_state_dict(str(tmp_path), export_params(params, conv.rules(cfg, "hf")))
    shapes = tensor_shapes(str(tmp_path))
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (16, 64)


def test_hf_config_round_trip(tiny):
    hf, cfg, _ = tiny
    d = conv.hf_config_dict(cfg)
    assert conv.config_from_hf(json.loads(json.dumps(d))) == cfg
