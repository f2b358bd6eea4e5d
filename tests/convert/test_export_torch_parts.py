"""omni_jax/convert/export_torch.py parts: every part of both tiny models written as the Hugging
Face class people load directly (Qwen2ForCausalLM, Qwen2VisionTransformerPretrainedModel,
SiglipVisionModel, WhisperEncoder: v1's and the 1.5 audio tokenizer's), loaded by transformers,
outputs equal to JAX (fp32); the import back bit-exact; bad requests refused with the fix named."""

import json
import os

import jax
import numpy as np
import pytest

from configs import common
from omni_jax.convert import export_torch as et
from omni_jax.convert import omni as oc
from omni_jax.convert import torch_parity as tp
from omni_jax.models.omni import Omni15Config
from omni_jax.models.omni_v1 import OmniV1Config


def _random(abstract, seed):
    rs = np.random.RandomState(seed)
    return jax.tree.map(lambda a: (0.1 * rs.randn(*a.shape)).astype(np.float32), abstract)


@pytest.fixture(scope="module")
def loaded():
    v1 = OmniV1Config.from_config(common.omni_v1_model("tiny"))
    m15 = common.omni15_model("tiny")
    o15 = Omni15Config.from_config(m15)
    abstract15, _ = oc.abstract_variables(m15)
    return {"omni_v1": et.Loaded("omni_v1", None, v1, _random(et.v1_abstract_params(v1), 0), None, 0),
            "omni": et.Loaded("omni", None, o15, _random(abstract15, 1), None, 0)}


@pytest.mark.parametrize("kind,parts", [("omni_v1", ("llm", "siglip", "audio_encoder")),
                                        ("omni", ("llm", "vision", "audio_encoder"))])
def test_parts_load_in_transformers_with_jax_outputs(loaded, kind, parts, tmp_path):
    ld = loaded[kind]
    written = et.export_loaded(ld, str(tmp_path), parts)
    assert [w.part for w in written] == list(parts)
    for w in written:
        params, cfg = et.part_params(ld, w.part)
        assert w.directory == os.path.join(str(tmp_path), w.part)
        assert json.load(open(os.path.join(w.directory, "config.json")))["torch_dtype"] == "float32"
        d = tp.check_part(w.directory, w.part, params, cfg)
        print(f"{et.MODEL_NAMES[kind]} part {w.part} -> {et.PART_CLASSES[w.part]}: max abs diff vs JAX (fp32) {d:.3e}")
        assert d <= 1e-5, w.part
        back = et.load_part(w.directory, w.part, cfg, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)))


def test_bad_requests_name_the_fix(loaded, tmp_path):
    v1, o15 = loaded["omni_v1"], loaded["omni"]
    with pytest.raises(et.ExportError, match=r"Baichuan-Omni v1 has no part \['vision'\] \(vision: a part of "
                                             r"Baichuan-Omni-1.5\); its parts are \['model', 'llm', 'siglip', "
                                             r"'audio_encoder'\]"):
        et.export_loaded(v1, str(tmp_path / "a"), ["vision"])
    with pytest.raises(et.ExportError, match=r"Baichuan-Omni-1.5 has no part \['siglip'\]"):
        et.export_loaded(o15, str(tmp_path / "a"), ["llm", "siglip"])
    with pytest.raises(et.ExportError, match=r"dtype 'float16' is not supported for release \(the Baichuan-Omni-1.5 "
                                             r"release layout\); use one of \['bfloat16', 'float32'\]"):
        et.export_loaded(o15, str(tmp_path / "a"), ["release"], dtype="float16")
    with pytest.raises(et.ExportError, match=r"dtype 'float8_e4m3fn' is not supported for siglip"):
        et.export_loaded(v1, str(tmp_path / "a"), ["siglip"], dtype="float8_e4m3fn")
    assert not os.path.exists(tmp_path / "a")  # nothing written by a refused request
    et.export_loaded(v1, str(tmp_path / "b"), ["llm"], dtype="bfloat16")
    with pytest.raises(et.ExportError, match=r"already holds an export \(llm\); choose a new directory or pass "
                                             r"--overwrite"):
        et.export_loaded(v1, str(tmp_path / "b"), ["siglip"])
    (tmp_path / "b" / "notes.txt").write_text("kept")
    et.export_loaded(v1, str(tmp_path / "b"), ["siglip"], overwrite=True)
    assert sorted(os.listdir(tmp_path / "b")) == ["notes.txt", "siglip"]  # the old export went, other files stay


def test_workdir_of_another_model_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"task": "lm", "model": {}}))
    with pytest.raises(et.ExportError, match=r"is a run of task 'lm', not an omni model .* use --mode=export"):
        et.read_workdir(str(tmp_path))
    with pytest.raises(et.ExportError, match=r"not an omni_jax trainer workdir \(it has no checkpoints/\)"):
        et.read_workdir(str(tmp_path / "checkpoints"))
