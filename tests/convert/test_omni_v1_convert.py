"""omni_jax/convert/omni_v1.py: Baichuan-Omni v1 assembled from tiny random Hugging Face parts
(Qwen2ForCausalLM, SiglipModel with its text tower, WhisperForConditionalGeneration) saved as
safetensors, each part then giving transformers' outputs; errors name the tensor or the part;
the 7b parts have the released part models' parameter counts (transformers on the meta device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import SiglipConfig, SiglipModel, WhisperConfig, WhisperForConditionalGeneration

from configs import common
from omni_jax import sharding as shd
from omni_jax.convert.mapping import ConversionError
from omni_jax.convert.omni_v1 import import_hf_parts
from omni_jax.models.omni_v1 import OmniV1, OmniV1Config
from omni_jax.models.siglip import Siglip
from tests.reference_models import TINY_QWEN2, tiny_hf_qwen2
from tests.vision_reference import TINY_SIGLIP, _randomise

WHISPER = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=96, num_mel_bins=128,
               max_source_positions=16, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=96,
               vocab_size=100, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
               decoder_start_token_id=3)


def _v1_config():
    m = common.omni_v1_model("tiny")
    q = TINY_QWEN2
    m.llm.update(vocab_size=q["vocab_size"], hidden_size=q["hidden_size"], intermediate_size=q["intermediate_size"],
                 num_layers=q["num_hidden_layers"], num_heads=q["num_attention_heads"],
                 num_kv_heads=q["num_key_value_heads"], head_dim=q["hidden_size"] // q["num_attention_heads"])
    s = TINY_SIGLIP
    m.siglip.update(hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
                    num_layers=s["num_hidden_layers"], num_heads=s["num_attention_heads"], image_size=s["image_size"])
    m.audio_encoder.update(d_model=64, num_layers=2, num_heads=4, ffn_dim=96, max_source_positions=16)
    m.v1_projector.update(vision_width=s["hidden_size"], llm_width=q["hidden_size"])
    m.v1_audio_projector.update(d_model=64, llm_hidden_size=q["hidden_size"])
    return OmniV1Config.from_config(m)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("v1_parts")
    llm = tiny_hf_qwen2(seed=1)
    torch.manual_seed(2)
    sig = _randomise(SiglipModel(SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=50, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(TINY_SIGLIP, hidden_act="gelu_pytorch_tanh"))).eval())
    torch.manual_seed(3)
    wh = _randomise(WhisperForConditionalGeneration(WhisperConfig(**WHISPER)).eval())
    for name, m in (("llm", llm), ("siglip", sig), ("audio_encoder", wh)):
        m.save_pretrained(str(root / name))
    cfg = _v1_config()
    abstract = shd.unbox(jax.eval_shape(lambda r: OmniV1(cfg).init(r, 32), jax.ShapeDtypeStruct((2,), jnp.uint32)))
    return root, cfg, abstract, (llm, sig, wh)


def test_every_part_gives_the_transformers_outputs(parts):
    root, cfg, abstract, (llm, sig, wh) = parts
    params = import_hf_parts(str(root), cfg, abstract)
    assert set(params) == {"llm", "siglip", "audio_encoder"}  # the projectors start fresh
    m = OmniV1(cfg)
    rs = np.random.RandomState(0)
    ids = rs.randint(0, cfg.llm.vocab_size, (2, 12))
    with torch.no_grad():
        want = llm(torch.from_numpy(ids)).logits.numpy()
        px = rs.randn(2, 3, cfg.siglip.image_size, cfg.siglip.image_size).astype(np.float32)
        want_sig = sig.vision_model(torch.from_numpy(px)).last_hidden_state.numpy()
        mel = rs.randn(2, 128, 32).astype(np.float32)
        want_wh = wh.model.encoder(torch.from_numpy(mel)).last_hidden_state.numpy()
    got = m.llm.apply({"params": params["llm"]}, ids, np.broadcast_to(np.arange(12), ids.shape), np.ones_like(ids))
    got_sig = Siglip(cfg.siglip).apply({"params": params["siglip"]}, px.transpose(0, 2, 3, 1))[0]
    got_wh = m.audio_encoder.apply({"params": params["audio_encoder"]}, mel, np.full((2,), 32, np.int32))[0]
    for what, g, w, tol in (("llm logits", got, want, 1e-5), ("siglip", got_sig, want_sig, 1e-5),
                            ("whisper encoder", got_wh, want_wh, 1e-5)):
        d = float(np.abs(np.asarray(g) - w).max())
        print(f"v1 {what} after import_hf_parts vs transformers: max abs diff {d:.3e}")
        assert d <= tol, what


def test_errors_name_the_tensor_and_the_parts(parts, tmp_path):
    root, cfg, abstract, _ = parts
    wrong = OmniV1Config.from_config(dict(common.omni_v1_model("tiny")))  # another LLM width
    wrong_abstract = shd.unbox(jax.eval_shape(lambda r: OmniV1(wrong).init(r, 32), jax.ShapeDtypeStruct((2,), jnp.uint32)))
    with pytest.raises(ConversionError, match=r"model\.embed_tokens\.weight: got \(160, 64\), expected \(384, 128\)"):
        import_hf_parts(str(root), wrong, wrong_abstract)
    with pytest.raises(ConversionError, match=r"none of the v1 part directories \['llm', 'siglip', 'audio_encoder'\]"):
        import_hf_parts(str(tmp_path), cfg, abstract)


def test_7b_parts_have_the_released_part_sizes():
    from transformers import SiglipVisionConfig, SiglipVisionModel, WhisperModel

    cfg = OmniV1Config.from_config(common.omni_v1_model("7b"))
    tree = shd.unbox(jax.eval_shape(OmniV1(cfg).init, jax.ShapeDtypeStruct((2,), jnp.uint32)))
    n = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in tree.items()}
    with torch.device("meta"):  # shapes only: nothing is allocated
        sig = SiglipVisionModel(SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                                   num_attention_heads=16, image_size=384, patch_size=14))
        wh = WhisperModel(WhisperConfig(d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                                        encoder_ffn_dim=5120, num_mel_bins=128, max_source_positions=1500,
                                        decoder_layers=1, decoder_attention_heads=20, vocab_size=51866))
    sig_n = sum(p.numel() for k, p in sig.named_parameters() if ".head." not in f".{k}")
    wh_n = sum(p.numel() for k, p in wh.encoder.named_parameters() if "embed_positions" not in k)  # a fixed table
    assert n["siglip"] == sig_n and n["audio_encoder"] == wh_n
