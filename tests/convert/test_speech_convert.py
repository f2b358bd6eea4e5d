"""omni_jax/convert/speech.py: release names/shapes (7B listing == reference TSV, in order),
the vocoder state dict (weight_g / weight_v folded on import), bit-exact round trips, errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax import sharding as shd
from omni_jax.convert import speech as conv
from omni_jax.convert.mapping import ConversionError, export_params, export_shapes, import_params
from omni_jax.convert.safetensors_io import load_state_dict, save_state_dict
from omni_jax.models.audio_head import AudioEmbed, AudioHead, AudioHeadConfig
from omni_jax.models.flow_matching import FlowMatchingConfig, FlowMatchingDecoder
from omni_jax.models.hift import HiFTConfig, HiFTGenerator
from tests.conftest import FIXTURES, read_tsv
from tests.speech_reference import TorchHiFT, random_params

RELEASE = json.load(open(os.path.join(FIXTURES, "reference_config.json")))
K = jax.random.PRNGKey(0)


def _abstract(hc: AudioHeadConfig, fc: FlowMatchingConfig):
    return shd.unbox({
        "audio_embed": jax.eval_shape(AudioEmbed(hc).init, K, jnp.zeros((1, hc.depth), jnp.int32))["params"],
        "flow_matching": jax.eval_shape(FlowMatchingDecoder(fc).init, K, jnp.zeros((1, 4, fc.prenet_in_dim)), jnp.ones((1, 4)),
                                        jnp.zeros((1, 4, fc.n_mels)), jnp.zeros((1,)))["params"],
        "audio_head": jax.eval_shape(AudioHead(hc).init, K, jnp.zeros((1, hc.hidden_size)),
                                     jnp.zeros((1, hc.depth, hc.hidden_size)))["params"],
    })


def _voc_abstract(cfg):
    return shd.unbox(jax.eval_shape(HiFTGenerator(cfg).init, K, jnp.zeros((1, 4, cfg.n_mels)), K))["params"]


def _bit_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.asarray(x).dtype == np.asarray(y).dtype and
                                      np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8))
                                      for x, y in zip(la, lb))


def test_release_listing_equals_the_reference_state_dict_rows():
    """audio embed, flow-matching decoder and audio head of the 7B release: names, shapes, order."""
    hc, fc = conv.audio_head_config_from_release(RELEASE), conv.flow_matching_config_from_release(RELEASE)
    got = list(export_shapes(_abstract(hc, fc), conv.release_rules(hc, fc)).items())
    ref = [(n, s) for n, s in read_tsv("reference_state_dict.tsv")
           if n.startswith(("model.audio_embed_layers.", "audio_tokenizer.audio_flow_matching_decoder.", "audio_head."))]
    assert len(got) == len(ref) == 8 + 1073 + 47
    assert got == ref
    assert hc.num_heads == 28 and fc.num_mid_blocks == 12 and fc.chunk_size == 100 and fc.inference_cfg_rate == 0.7


def test_vocoder_listing_equals_the_reference_vocoder_state_dict():
    cfg = HiFTConfig()
    got = list(export_shapes(_voc_abstract(cfg), conv.vocoder_rules(cfg, "weight_norm")).items())
    ref = read_tsv("reference_vocoder_state_dict.tsv")
    assert len(got) == len(ref) == 328 and got == ref
    n = sum(int(np.prod(s)) for _, s in got)
    assert 20.7e6 < n < 20.9e6  # "20.8 M"
    folded = export_shapes(_voc_abstract(cfg), conv.vocoder_rules(cfg, "folded"))
    assert folded["ups.0.weight"] == (512, 256, 16) and not any(k.endswith(("weight_g", "weight_v")) for k in folded)
    assert conv.vocoder_config_from_state_dict(dict(ref)) == cfg


def test_tiny_release_round_trip_is_bit_exact(tmp_path):
    hc = AudioHeadConfig(hidden_size=64, codebook_sizes=(40, 30, 20, 10, 10, 10, 10, 10), num_layers=2, head_dim=16)
    fc = FlowMatchingConfig(n_mels=16, prenet_in_dim=24, prenet_d_model=32, prenet_heads=4, prenet_ffn_dim=64,
                            prenet_layers=2, prenet_max_positions=50, channels=(32,), num_heads=2, attention_head_dim=16,
                            n_blocks=2, num_mid_blocks=3)
    rs = np.random.RandomState(0)
    params = jax.tree.map(lambda a: rs.randn(*a.shape).astype(np.float32), _abstract(hc, fc))
    rules = conv.release_rules(hc, fc)
    save_state_dict(str(tmp_path), export_params(params, rules))
    back = import_params(load_state_dict(str(tmp_path)), rules, _abstract(hc, fc))
    assert _bit_equal(params, back)


def test_vocoder_weight_norm_fold_matches_torch_and_round_trips(tmp_path):
    cfg = HiFTConfig(base_channels=32, f0_channels=16, f0_layers=2, resblock_kernel_sizes=(3,), resblock_dilations=((1, 3),))
    th = TorchHiFT(base_channels=32, f0_channels=16, f0_layers=2, resblock_kernel_sizes=(3,),
                   resblock_dilation_sizes=((1, 3),))
    with torch.no_grad():
        for n, p in th.named_parameters():
            if n.endswith("weight_g"):
                p.mul_(1.5)
    sd = {k: v.detach().numpy() for k, v in th.state_dict().items()}
    abstract = _voc_abstract(cfg)
    params = conv.import_vocoder(sd, cfg, abstract)  # flavour detected: weight_norm
    # the fold is torch's weight (v * g / ||v||), to fp32 rounding
    th.ups[1](torch.zeros(1, 16, 3))  # weight_norm recomputes .weight in its forward pre-hook
    w = th.ups[1].weight.detach().numpy().transpose(2, 0, 1)
    assert np.abs(params["ups_1"]["kernel"] - w).max() <= 1e-6 * np.abs(w).max()
    for flavour in conv.VOCODER_FLAVOURS:
        out = export_params(params, conv.vocoder_rules(cfg, flavour))
        save_state_dict(str(tmp_path / flavour), out)
        back = conv.import_vocoder(load_state_dict(str(tmp_path / flavour)), cfg, abstract)
        assert _bit_equal(params, back), flavour
    # the unfolded export loads strictly into the weight-normed torch module
    fresh = TorchHiFT(base_channels=32, f0_channels=16, f0_layers=2, resblock_kernel_sizes=(3,),
                      resblock_dilation_sizes=((1, 3),))
    fresh.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                           for k, v in export_params(params, conv.vocoder_rules(cfg, "weight_norm")).items()}, strict=True)


def test_import_errors_name_tensors_and_fixes():
    cfg = HiFTConfig(base_channels=32, f0_channels=16, f0_layers=2, resblock_kernel_sizes=(3,), resblock_dilations=((1, 3),))
    abstract = _voc_abstract(cfg)
    params = random_params(HiFTGenerator(cfg), jnp.zeros((1, 4, 80)), K)
    sd = export_params(params, conv.vocoder_rules(cfg, "weight_norm"))
    sd["conv_pre.weight_v"] = np.zeros((32, 80, 5), np.float32)
    del sd["f0_predictor.classifier.bias"]
    with pytest.raises(ConversionError) as e:
        conv.import_vocoder(sd, cfg, abstract, source="hift.safetensors")
    msg = str(e.value)
    assert "conv_pre.weight_v: got (32, 80, 5), expected (32, 80, 7)" in msg
    assert "f0_predictor.classifier.bias (expected shape (1,))" in msg and "hift.safetensors" in msg
    with pytest.raises(ValueError, match="unknown vocoder flavour 'wn'"):
        conv.vocoder_rules(cfg, "wn")


def test_flow_matching_task_imports_from_a_full_release_style_checkpoint(tmp_path):
    from configs import flow_matching_tiny
    from omni_jax.tasks import get_task

    c = flow_matching_tiny.get_config("runlocal")
    task = get_task(c)
    abstract = shd.unbox(jax.eval_shape(task.init, K))
    params = jax.tree.map(lambda a: np.random.RandomState(1).randn(*a.shape).astype(np.float32), abstract)
    sd = export_params(params["flow_matching"], conv.prefixed(conv.flow_matching_rules(task.model_cfg),
                                                                  theirs=conv.RELEASE_FM_PREFIX))
    sd["model.norm.weight"] = np.ones(8, np.float32)  # other modules of the omni checkpoint are ignored
    save_state_dict(str(tmp_path), sd)
    assert _bit_equal(params, task.import_params(str(tmp_path), abstract))
