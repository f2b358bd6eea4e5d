"""omni_jax/models/hift.py `return_source`: the vocoder's f0 and its neural-source excitation are
plain outputs, equal to the torch reference's F0 predictor and SourceModuleHnNSF (tests/
speech_reference.py, CosyVoice hifigan/generator.py) on the same weights, phases and noise."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from omni_jax import sharding as shd
from omni_jax.convert import speech as conv
from omni_jax.convert.mapping import import_params
from omni_jax.models.hift import HiFTConfig, HiFTGenerator
from tests.speech_reference import TorchHiFT

CFG = HiFTConfig(base_channels=32, f0_channels=16, f0_layers=2, resblock_kernel_sizes=(3,), resblock_dilations=((1, 3),),
                 source_resblock_dilations=((1,), (1,), (1,)))
T = 4


def test_f0_and_source_are_returned_and_match_the_reference():
    th = TorchHiFT(base_channels=32, f0_channels=16, f0_layers=2, resblock_kernel_sizes=(3,),
                   resblock_dilation_sizes=((1, 3),), source_resblock_dilation_sizes=((1,), (1,), (1,)),
                   source_dtype=torch.float64).eval()
    with torch.no_grad():  # a pitch of ~150 Hz: voiced frames and harmonics exercised, plus unvoiced ones
        th.f0_predictor.classifier.weight.mul_(50.0)
        th.f0_predictor.classifier.bias.fill_(150.0)
    model = HiFTGenerator(CFG)
    abstract = shd.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, T, 80)),
                                        jax.random.PRNGKey(1)))["params"]
    params = import_params({k: v.detach().numpy() for k, v in th.state_dict().items()}, conv.vocoder_rules(CFG), abstract)
    rs = np.random.RandomState(0)
    mel = rs.randn(2, T, 80).astype(np.float32)
    phase = rs.uniform(-np.pi, np.pi, (2, 9)).astype(np.float32)
    noise = rs.randn(2, T * 480, 9).astype(np.float32)
    run = jax.jit(lambda p, m, ph, nz: model.apply({"params": p}, m, phase=ph, noise=nz, return_source=True))
    wav, f0, src = (np.asarray(a) for a in run(params, mel, phase, noise))
    with torch.no_grad():
        x = torch.tensor(mel.transpose(0, 2, 1))
        f0_ref = th.f0_predictor(x)
        f0_up = F.interpolate(f0_ref[:, None], scale_factor=480, mode="nearest").transpose(1, 2)
        src_ref = th.m_source(f0_up, torch.tensor(phase[:, :, None]), torch.tensor(noise.transpose(0, 2, 1)))[..., 0]
        wav_ref, _ = th(x, torch.tensor(phase[:, :, None]), torch.tensor(noise.transpose(0, 2, 1)))
    d_f0, d_src = float(np.abs(f0 - f0_ref.numpy()).max()), float(np.abs(src - src_ref.numpy()).max())
    d_wav = float(np.abs(wav - wav_ref.numpy()).max())
    print(f"HiFT f0 max abs diff {d_f0:.3e} (mean f0 {f0.mean():.1f} Hz), source {d_src:.3e}, waveform {d_wav:.3e}")
    assert f0.shape == (2, T) and src.shape == wav.shape == (2, T * 480)
    assert d_f0 <= 1e-4 and d_src <= 5e-6 and d_wav <= 5e-6  # measured 0, 7.7e-7, 4.8e-7
    assert (f0 > 10).any() and np.abs(src).max() > 0.01  # the voiced sine source is on
    plain = jax.jit(lambda p, m, ph, nz: model.apply({"params": p}, m, phase=ph, noise=nz))(params, mel, phase, noise)
    np.testing.assert_array_equal(np.asarray(plain), wav)  # the same waveform as without the extra outputs
