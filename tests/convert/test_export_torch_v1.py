"""omni_jax/convert/export_torch.py (v1) + torch_v1/: the tiny Baichuan-Omni v1 exported as a
transformers remote-code model, loaded with AutoModelForCausalLM(trust_remote_code=True) from the
directory alone; logits equal to OmniV1's (JAX) on text, image, video and audio prompts, greedy
generation identical, the import back bit-exact, errors of the placeholder merge."""

import json
import os

import jax
import numpy as np
import pytest
import torch

from configs.omni_v1 import stages
from omni_jax.convert import export_torch as et
from omni_jax.convert import torch_parity as tp
from omni_jax.convert.safetensors_io import load_state_dict
from omni_jax.convert.torch_v1 import MODEL_FILES
from omni_jax.models.omni_v1 import OmniV1Config


def random_v1_params(cfg, seed=0):
    """Random numpy params of the right shapes (no init compile); norms / biases random too. The token
    embeddings and the head are larger (std 0.5) so greedy decoding does not repeat one token."""
    rs = np.random.RandomState(seed)

    def draw(path, a):
        std = 0.5 if any(k in jax.tree_util.keystr(path) for k in ("embed_tokens", "lm_head")) else 0.1
        return (std * rs.randn(*a.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, et.v1_abstract_params(cfg))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config = stages.base("test")
    cfg = OmniV1Config.from_config(config.model)
    params = random_v1_params(cfg)
    ids = et.token_ids_of(config)
    out = str(tmp_path_factory.mktemp("v1_export"))
    files = et.save_v1(out, params, cfg, ids)
    model = tp.load_v1_torch(out)
    return out, files, cfg, params, ids, model


def test_directory_is_self_contained(exported):
    out, files, cfg, _, ids, model = exported
    assert sorted(os.path.basename(f) for f in files) == sorted(("model.safetensors", "config.json") + MODEL_FILES)
    j = json.load(open(os.path.join(out, "config.json")))
    assert j["auto_map"]["AutoModelForCausalLM"] == "modeling_omni_v1.OmniV1ForCausalLM"
    assert (j["image_token_id"], j["video_token_id"], j["audio_token_id"]) == (ids["image"], ids["video"], ids["audio"])
    for name in MODEL_FILES:  # torch + transformers only: the directory works without omni_jax
        src = open(os.path.join(out, name)).read()
        assert "omni_jax." not in src.replace("omni_jax/", "") and "import jax" not in src
    assert type(model).__name__ == "OmniV1ForCausalLM"
    kinds = {type(m).__name__ for m in model.children()}
    assert {"Qwen2ForCausalLM", "SiglipVisionModel", "WhisperEncoder"} <= kinds


def test_logits_equal_jax_on_text_image_video_audio(exported):
    out, _, cfg, params, ids, model = exported
    diffs = tp.check_v1(out, params, cfg, ids, model)
    for name, d in diffs.items():
        print(f"v1 remote-code export vs OmniV1 (JAX), fp32 logits, {name} prompt: max abs diff {d:.3e}")
    assert set(diffs) == {"text", "image", "video", "audio", "all"}
    assert max(diffs.values()) <= 1e-5


def test_audio_boundary_head_equals_jax(exported):
    """The audio-boundary head (streaming input) is exported too: its torch logits equal OmniV1's."""
    import jax.numpy as jnp

    from omni_jax.models.omni_v1 import OmniV1

    _, _, cfg, params, _, model = exported
    assert set(params) == set(et.V1_PREFIX)  # every component is exported, the head under audio_boundary_head.*
    mel = np.random.RandomState(3).randn(1, cfg.audio_encoder.num_mel_bins, 60).astype(np.float32)
    mel[..., 59:] = 0.0  # beyond the valid frames the features are zero (audio_features.release_chunk_features)
    ours, n = OmniV1(cfg).boundary_logits(params, jnp.asarray(mel), jnp.asarray([59], jnp.int32))
    with torch.no_grad():
        theirs = model.audio_boundary_logits(torch.from_numpy(mel[0, :, :59])).numpy()
    d = float(np.abs(np.asarray(ours)[0, : int(n[0])] - theirs).max())
    print(f"v1 audio-boundary head, torch vs JAX (59 valid mel frames of 60): max abs diff {d:.3e}")
    assert theirs.shape == (int(n[0]), 3) and d <= 1e-5


def test_greedy_generation_is_identical(exported):
    _, _, cfg, params, ids, model = exported
    case = tp.v1_cases(cfg, ids)["all"]
    theirs = tp.v1_torch_greedy(model, case, 8)
    ours = tp.v1_jax_greedy(params, cfg, case, ids, 8, eos=ids["eos"])
    print(f"greedy tokens, transformers: {theirs}; JAX: {ours}")
    assert theirs == ours and len(set(ours)) > 1


def test_import_back_is_bit_exact(exported):
    out, _, cfg, params, _, _ = exported
    cfg2, back = et.load_v1(out)
    assert cfg2 == cfg
    flat, flat2 = jax.tree.leaves_with_path(params), jax.tree.leaves_with_path(back)
    assert [p for p, _ in flat] == [p for p, _ in flat2]
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for (_, a), (_, b) in zip(flat, flat2))


def test_merge_errors_name_the_modality(exported):
    _, _, cfg, _, ids, model = exported
    case = tp.v1_cases(cfg, ids)["image"]
    kw = tp._torch_kwargs(case)
    with pytest.raises(ValueError, match=r"hold \d+ image placeholder\(s\) .* but the image input gives \d+ tokens"):
        model(input_ids=kw["input_ids"], pixel_values=kw["pixel_values"][:1])
    with pytest.raises(ValueError, match=r"image placeholder\(s\) \(id \d+\) but no image input was given"):
        model(input_ids=kw["input_ids"])
    assert torch.isfinite(model(**kw).logits).all()


def test_bad_exports_are_refused(exported, tmp_path):
    out, _, cfg, params, ids, _ = exported
    with pytest.raises(et.ExportError, match=r"already holds an export \(config.json.*pass --overwrite"):
        et.save_v1(out, params, cfg, ids)
    with pytest.raises(et.ExportError, match=r"dtype 'int8' is not supported for model .*'float32', 'bfloat16'"):
        et.save_v1(str(tmp_path / "a"), params, cfg, ids, dtype="int8")
    with pytest.raises(et.ExportError, match=r"not Baichuan-Omni v1 parameters"):
        et.save_v1(str(tmp_path / "b"), {"llm": params["llm"], "visual": {}}, cfg, ids)
    files = et.save_v1(str(tmp_path / "c"), params, cfg, ids, dtype="bfloat16")
    sd = load_state_dict(str(tmp_path / "c"))
    assert files and sd["language_model.lm_head.weight"].dtype.name == "bfloat16"


def test_bfloat16_export_computes_with_the_rounded_weights(exported, tmp_path):
    _, _, cfg, params, ids, _ = exported
    et.save_v1(str(tmp_path), params, cfg, ids, dtype="bfloat16")
    assert json.load(open(tmp_path / "config.json"))["torch_dtype"] == "bfloat16"
    diffs = tp.check_v1(str(tmp_path), tp.rounded(params, "bfloat16"), cfg, ids)  # loaded as float32
    print(f"v1 bf16 export (computed in fp32) vs OmniV1 on the bf16-rounded weights: max abs diff {max(diffs.values()):.3e}")
    assert max(diffs.values()) <= 1e-5
