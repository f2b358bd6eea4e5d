"""omni_jax/generate/synthesis.py: codes -> mel -> 24 kHz waveform -> WAV, chunking and the
10 ms cross-fade. The audio decoder (codes -> hidden states before dconv2) belongs to another
module; here a TEST STAND-IN (a tiny random Flax layer, `StandInCodesToHidden`) plays it."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from configs import common
from omni_jax.data.audio_features import decode_wav
from omni_jax.generate.synthesis import Synthesizer, crossfade_concat, split_codes
from omni_jax.models.flow_matching import FlowMatchingConfig, FlowMatchingDecoder
from omni_jax.models.hift import HiFTConfig, HiFTGenerator
from tests.speech_reference import random_params

FM = FlowMatchingConfig.from_dict(common.flow_matching("tiny").to_dict())
VOC = HiFTConfig.from_dict(common.hift("tiny").to_dict())
SIZES = (12, 10, 8, 8, 8, 8, 8, 8)


class StandInCodesToHidden(nn.Module):
    """TEST STAND-IN for RVQ decode + proj_decoder + audio decoder up to dconv2: sums 8 code
    embeddings and upsamples 12.5 Hz -> 50 Hz like dconv1 (k3, stride 4: 4F - 1 frames)."""

    @nn.compact
    def __call__(self, codes):
        e = sum(nn.Embed(s + 1, FM.prenet_in_dim, name=f"e{i}")(codes[..., i]) for i, s in enumerate(SIZES))
        h = nn.Dense(FM.prenet_in_dim)(jnp.tanh(e))
        return jnp.repeat(h, 4, axis=-2)[..., :-1, :]


def _synth(**kw):
    k = jax.random.PRNGKey(0)
    stand_in = StandInCodesToHidden()
    sp = stand_in.init(k, jnp.zeros((2, 8), jnp.int32))
    fm, voc = FlowMatchingDecoder(FM), HiFTGenerator(VOC)
    fp = random_params(fm, jnp.zeros((1, 4, FM.prenet_in_dim)), jnp.ones((1, 4)), jnp.zeros((1, 4, 80)), jnp.zeros((1,)))
    vp = random_params(voc, jnp.zeros((1, 4, 80)), k, scale=0.02)
    to_hidden = lambda c: stand_in.apply(sp, c)  # eager: a few tiny ops per piece
    return Synthesizer(lambda c: to_hidden(jnp.asarray(c)), fm, fp, voc, vp, **kw)


def _codes(n, seed):
    rs = np.random.RandomState(seed)
    return np.stack([rs.randint(0, s, n) for s in SIZES], -1).astype(np.int32)


def test_chunks_to_wav_file_with_crossfade(tmp_path):
    synth = _synth(bucket=16, max_chunk_frames=3)
    chunks = [_codes(4, 0), _codes(2, 1)]  # 4 frames -> pieces of 3 + 1 frames; then 2 frames
    rng = jax.random.PRNGKey(3)
    wav = synth.write_wav(str(tmp_path / "out.wav"), chunks, rng)
    pieces = [3, 1, 2]
    n = sum((4 * f - 1) * 480 for f in pieces) - synth.overlap * (len(pieces) - 1)
    assert synth.overlap == 240 and wav.shape == (n,) and np.isfinite(wav).all() and np.abs(wav).max() <= 0.99
    back = decode_wav(open(tmp_path / "out.wav", "rb").read(), 24000)
    assert back.shape == (n,) and np.abs(back - wav).max() < 1e-3
    again = synth.waveform(chunks, rng)
    assert np.array_equal(again, wav)  # deterministic given the key


def test_crossfade_and_split_helpers():
    a, b = np.ones(500, np.float32), np.zeros(300, np.float32)
    out = crossfade_concat([a, b], 240)
    assert out.shape == (560,) and out[259] == 1.0 and out[260] == 1.0 and out[-1] == 0.0
    assert np.all(np.diff(out[260:500]) <= 0)  # a linear fade from a to b
    assert crossfade_concat([a[:100], b], 240).shape == (400,)  # too short to overlap: plain concat
    assert [len(p) for p in split_codes(np.zeros((7, 8)), 3)] == [3, 3, 1] and split_codes(np.zeros((0, 8)), 3) == []
