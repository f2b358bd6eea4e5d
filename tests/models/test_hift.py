"""omni_jax/models/hift.py: parity with the HiFT generator (torch weight_norm, injected source
noise), 480 samples per mel frame, the precise sine phases, and a short training run that lowers
the multi-resolution STFT loss (omni_jax/tasks/vocoder.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import vocoder_tiny
from omni_jax import sharding as shd
from omni_jax.convert import speech as conv
from omni_jax.convert.mapping import import_params
from omni_jax.data.audio_features import log_mel_24k_np
from omni_jax.models.hift import HiFTConfig, HiFTGenerator, sine_phases
from omni_jax.ops.mel_jax import log_mel_24k
from omni_jax.tasks.vocoder import VocoderTask, multi_resolution_stft_per_row
from tests.speech_reference import TorchHiFT

CFG = HiFTConfig(base_channels=64, f0_channels=32)  # release structure (3 stages, 3 + 3 resblocks), narrow
T = 5


@pytest.fixture(scope="module")
def ref_and_ours():
    th = TorchHiFT(base_channels=64, f0_channels=32, source_dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in th.named_parameters():
            if n.endswith("alpha"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif n.endswith("weight_g"):
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            elif n.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        # a realistic pitch range (~150 Hz) so the voiced branch and the harmonics are exercised
        th.f0_predictor.classifier.weight.mul_(50.0)
        th.f0_predictor.classifier.bias.fill_(150.0)
    model = HiFTGenerator(CFG)
    abstract = shd.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, T, 80)), jax.random.PRNGKey(1)))["params"]
    sd = {k: v.detach().numpy() for k, v in th.state_dict().items()}
    return th, model, import_params(sd, conv.vocoder_rules(CFG), abstract), abstract


def test_waveform_matches_weight_normed_reference_and_hop_is_480(ref_and_ours):
    th, model, params, _ = ref_and_ours
    rs = np.random.RandomState(0)
    mel = rs.randn(2, T, 80).astype(np.float32)
    phase = rs.uniform(-np.pi, np.pi, (2, 9)).astype(np.float32)
    noise = rs.randn(2, T * 480, 9).astype(np.float32)
    run = jax.jit(lambda p, m, ph, nz: model.apply({"params": p}, m, phase=ph, noise=nz, return_f0=True))
    wav, f0 = run(params, mel, phase, noise)
    with torch.no_grad():
        ref, f0_ref = th(torch.tensor(mel.transpose(0, 2, 1)), torch.tensor(phase[:, :, None]),
                         torch.tensor(noise.transpose(0, 2, 1)))
    d = float(np.abs(np.asarray(wav) - ref.numpy()).max())
    print(f"HiFT waveform max abs diff vs torch (weight_norm, float64 sine source): {d:.3e} "
          f"(peak {float(np.abs(ref.numpy()).max()):.3f}); f0 diff {float(np.abs(np.asarray(f0) - f0_ref.numpy()).max()):.3e}")
    assert wav.shape == (2, T * 480) == tuple(ref.shape) and CFG.hop == 480
    assert d <= 1e-5
    assert float(np.asarray(f0).mean()) > 50  # voiced: the harmonic source is on
    assert np.abs(np.asarray(wav)).max() <= 0.99


def test_sine_phases_stay_accurate_where_a_float32_running_sum_drifts():
    f0 = np.array([[210.0, 187.5, 333.3, 90.0] * 100], np.float32)  # 400 frames = 8 s
    got = np.asarray(jax.jit(sine_phases, static_argnums=(1, 2, 3))(jnp.asarray(f0), 480, 24000, 9))
    inc = np.repeat(f0.astype(np.float64), 480, axis=1)[..., None] * np.arange(1, 10) / 24000
    exact = np.cumsum(inc, axis=1) % 1.0
    err = np.abs((got - exact + 0.5) % 1.0 - 0.5).max()
    f32 = np.cumsum(inc.astype(np.float32), axis=1, dtype=np.float32) % 1.0
    err32 = np.abs((f32 - exact + 0.5) % 1.0 - 0.5).max()
    print(f"sine phase error (cycles) over 8 s: ours {err:.2e}, float32 running sum {err32:.2e}")
    assert err < 2e-3 and err32 > 0.1  # ours: only the fp32 rounding of the per-sample increment


def _matcha_mel(wav: np.ndarray) -> np.ndarray:
    """matcha/utils/audio.py `mel_spectrogram` as CosyVoice 2 calls it for HiFT (n_fft 1920, 80
    mels, 24 kHz, hop 480, win 1920, fmin 0, fmax 8000, center=False), re-typed in torch with
    librosa's Slaney filters from transformers' `mel_filter_bank`: (B, L) -> (B, frames, 80)."""
    from transformers.audio_utils import mel_filter_bank

    fb = torch.from_numpy(mel_filter_bank(num_frequency_bins=961, num_mel_filters=80, min_frequency=0.0,
                                          max_frequency=8000.0, sampling_rate=24000, norm="slaney",
                                          mel_scale="slaney")).double()  # (961, 80)
    y = torch.nn.functional.pad(torch.tensor(wav, dtype=torch.float64).unsqueeze(1), (720, 720), mode="reflect")
    spec = torch.stft(y.squeeze(1), 1920, hop_length=480, win_length=1920, window=torch.hann_window(1920, dtype=torch.float64),
                      center=False, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spec = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    mel = torch.matmul(fb.T, spec)
    return torch.log(torch.clamp(mel, min=1e-5)).numpy().transpose(0, 2, 1)


def test_vocoder_mel_matches_the_matcha_reference():
    """ops/mel_jax.py log_mel_24k (training target) and its numpy twin (data pipelines)
    against the torch Matcha-TTS recipe (float64) on noise, a tone in noise and silence (the log
    floor); on a pure loud tone the fp32 STFT's rounding (~1e-7 of the peak) dominates the empty
    bins, so that one is compared in the linear domain, relative to its peak."""
    r = np.random.RandomState(0)
    t = np.arange(480 * 6) / 24000
    tone = np.sin(2 * np.pi * 440 * t)
    wav = np.stack([r.randn(480 * 6) * 0.1, 0.3 * tone + 0.05 * r.randn(480 * 6), np.zeros(480 * 6),
                    0.8 * tone]).astype(np.float32)
    ref = _matcha_mel(wav)
    ours = np.asarray(jax.jit(log_mel_24k)(wav))
    twin = log_mel_24k_np(wav)
    assert ours.shape == twin.shape == ref.shape == (4, 6, 80)
    d, d_np = float(np.abs(ours[:3] - ref[:3]).max()), float(np.abs(twin[:3] - ref[:3]).max())
    rel = [float(np.abs(np.exp(x[3]) - np.exp(ref[3])).max() / np.exp(ref[3]).max()) for x in (ours, twin)]
    print(f"vocoder log-mel max abs diff vs the Matcha torch recipe: jax {d:.3e}, numpy twin {d_np:.3e}; "
          f"pure tone, linear, relative to its peak: jax {rel[0]:.3e}, numpy twin {rel[1]:.3e}")
    assert d <= 1e-5 and d_np <= 1e-5
    assert max(rel) <= 1e-6
    assert np.ptp(ref[2], axis=0).max() == 0.0 and ref[2].max() < ref[3].max() - 5  # silence: the constant floor


def test_brief_training_lowers_the_multi_resolution_stft_loss():
    c = vocoder_tiny.get_config()
    c.data.frames = 8
    task = VocoderTask(c)
    params = shd.unbox(jax.jit(task.init)(jax.random.PRNGKey(0)))
    eval_batch = task.make_data(None, start_step=10_000, process_index=0, process_count=1).peek(10_000)
    data = task.make_data(None, start_step=0, process_index=0, process_count=1)
    tx = optax.chain(optax.clip_by_global_norm(10.0),
                     optax.adam(optax.warmup_cosine_decay_schedule(0.0, 2e-3, 5, 40, 2e-4), b1=0.8, b2=0.99))

    @jax.jit
    def step(p, o, batch, rng):  # also reports the held-out MR-STFT loss of the params it starts from
        (obj, m), g = jax.value_and_grad(lambda p: task.loss(p, batch, rng, task.norms(batch)), has_aux=True)(p)
        s, wav = task.loss_terms(p, eval_batch, jax.random.PRNGKey(0))
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, m, s["stft"] / eval_batch["wav"].shape[0], wav

    opt, held_out = tx.init(params), []
    for s in range(41):
        params, opt, m, mr, wav1 = step(params, opt, next(data), jax.random.PRNGKey(s))
        held_out.append(float(mr))
        assert np.isfinite(float(m["loss"]))
    before, after = held_out[0], held_out[-1]
    print(f"multi-resolution STFT loss on a held-out batch: {before:.3f} -> {after:.3f} after 40 steps")
    assert after < 0.85 * before
    assert wav1.shape == eval_batch["wav"].shape == (8, 8 * 480)
    # the loss itself: zero for identical signals, positive otherwise
    w = jnp.asarray(eval_batch["wav"][:2])
    assert float(multi_resolution_stft_per_row(w, w).max()) < 1e-5


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="source_resblock_kernel_sizes"):
        HiFTConfig.from_dict({"upsample_rates": [8, 8], "upsample_kernel_sizes": [16, 16]})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['hop'\]"):
        HiFTConfig.from_dict({"hop": 256})
    with pytest.raises(ValueError, match="vocoder input has 40 mel bins, config.n_mels is 80"):
        HiFTGenerator(CFG).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 40)), jax.random.PRNGKey(1))
